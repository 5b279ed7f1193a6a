"""Gemma 4 image-text models (Gemma4ForConditionalGeneration): a vision encoder + soft image tokens + the Gemma 4 LM."""

from __future__ import annotations

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["GEMMA4"]

GEMMA4 = builtin(
    "gemma4",
    "Gemma4ForConditionalGeneration",
    image_token_id_attrs=ID_ONLY,
    image_token="<|image|>",
    end_of_turn_tokens=("<turn|>", "<end_of_turn>"),
    nested_images=True,
    notes="google/gemma-4-*; logit_lens applies final_logit_softcapping when the config sets it",
)
