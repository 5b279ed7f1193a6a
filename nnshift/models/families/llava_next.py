"""LLaVA-NeXT (LlavaNextForConditionalGeneration): any-resolution tiles through CLIP + a Llama/Mistral/Vicuna LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["LLAVA_NEXT"]

LLAVA_NEXT = register_adapter(
    ModelAdapter(
        family="llava_next",
        architectures=("LlavaNextForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token="<image>",
        end_of_turn_tokens=("<|im_end|>", "<|eot_id|>"),
        notes="llava-hf/llava-v1.6-*; the number of image tokens depends on the image size (tiling)",
    )
)
