"""Gemma 3n (Gemma3nForConditionalGeneration): MobileNet-v5 vision tower (timm) + audio + the Gemma 3n LM."""

from __future__ import annotations

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["GEMMA3N"]

GEMMA3N = builtin(
    "gemma3n",
    "Gemma3nForConditionalGeneration",
    image_token_id_attrs=ID_ONLY,
    image_token="<image_soft_token>",
    end_of_turn_tokens=("<end_of_turn>",),
    nested_images=True,
    notes="google/gemma-3n-*; its vision tower is a timm model: needs the timm package; untested here (no timm)",
)
