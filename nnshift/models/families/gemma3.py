"""Gemma 3 image-text models (Gemma3ForConditionalGeneration): SigLIP + pooled soft image tokens + Gemma 3 LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["GEMMA3"]

GEMMA3 = register_adapter(
    ModelAdapter(
        family="gemma3",
        architectures=("Gemma3ForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id", "image_token_index"),
        image_token="<image_soft_token>",
        end_of_turn_tokens=("<end_of_turn>",),
        nested_images=True,
        notes="google/gemma-3-*-it; logit_lens applies final_logit_softcapping when the config sets it",
    )
)
