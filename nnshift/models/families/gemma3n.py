"""Gemma 3n (Gemma3nForConditionalGeneration): MobileNet-v5 vision tower (timm) + audio + the Gemma 3n LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["GEMMA3N"]

GEMMA3N = register_adapter(
    ModelAdapter(
        family="gemma3n",
        architectures=("Gemma3nForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<image_soft_token>",
        end_of_turn_tokens=("<end_of_turn>",),
        nested_images=True,
        notes="google/gemma-3n-*; its vision tower is a timm model: needs the timm package; untested here (no timm)",
    )
)
