"""Aya Vision (AyaVisionForConditionalGeneration): SigLIP tiles + pixel-shuffle projector + a Cohere 2 LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["AYA_VISION"]

AYA_VISION = register_adapter(
    ModelAdapter(
        family="aya_vision",
        architectures=("AyaVisionForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_index", "image_token_id"),
        image_token="<|IMG_PATCH|>",
        end_of_turn_tokens=("<|END_OF_TURN_TOKEN|>",),
        notes="CohereLabs/aya-vision-*; image tokens are the processor's img_patch_token between <|START_OF_IMG|> and <|END_OF_IMG|>",
    )
)
