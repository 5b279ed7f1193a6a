"""Gemma 3 image-text models (Gemma3ForConditionalGeneration): SigLIP + pooled soft image tokens + Gemma 3 LM."""

from __future__ import annotations

from nnshift.models.families._common import builtin

__all__ = ["GEMMA3"]

GEMMA3 = builtin(
    "gemma3",
    "Gemma3ForConditionalGeneration",
    image_token="<image_soft_token>",
    end_of_turn_tokens=("<end_of_turn>",),
    nested_images=True,
    notes="google/gemma-3-*-it; logit_lens applies final_logit_softcapping when the config sets it",
)
