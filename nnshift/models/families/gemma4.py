"""Gemma 4 image-text models (Gemma4ForConditionalGeneration): a vision encoder + soft image tokens + the Gemma 4 LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["GEMMA4"]

GEMMA4 = register_adapter(
    ModelAdapter(
        family="gemma4",
        architectures=("Gemma4ForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<|image|>",
        end_of_turn_tokens=("<turn|>", "<end_of_turn>"),
        nested_images=True,
        notes="google/gemma-4-*; logit_lens applies final_logit_softcapping when the config sets it",
    )
)
