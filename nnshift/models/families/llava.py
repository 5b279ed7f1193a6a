"""LLaVA-1.5 (LlavaForConditionalGeneration): CLIP vision tower + projector + a Llama-family language model."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["LLAVA"]

LLAVA = register_adapter(
    ModelAdapter(
        family="llava",
        architectures=("LlavaForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token="<image>",
        notes="LLaVA-1.5 (llava-hf/llava-1.5-*-hf); the vision tower's CLIP encoder layers are never used as layers.",
    )
)
