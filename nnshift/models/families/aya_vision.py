"""Aya Vision (AyaVisionForConditionalGeneration): SigLIP tiles + pixel-shuffle projector + a Cohere 2 LM."""

from __future__ import annotations

from nnshift.models.families._common import INDEX_FIRST, builtin

__all__ = ["AYA_VISION"]

AYA_VISION = builtin(
    "aya_vision",
    "AyaVisionForConditionalGeneration",
    image_token_id_attrs=INDEX_FIRST,
    image_token="<|IMG_PATCH|>",
    end_of_turn_tokens=("<|END_OF_TURN_TOKEN|>",),
    shares_prompt_prefix=True,
    notes="CohereLabs/aya-vision-*; image tokens are the processor's img_patch_token between <|START_OF_IMG|> and <|END_OF_IMG|>",
)
