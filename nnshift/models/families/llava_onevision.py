"""LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): SigLIP any-resolution tiles + a Qwen2 LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["LLAVA_ONEVISION"]

LLAVA_ONEVISION = register_adapter(
    ModelAdapter(
        family="llava_onevision",
        architectures=("LlavaOnevisionForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_index", "image_token_id"),
        image_token="<image>",
        end_of_turn_tokens=("<|im_end|>",),
        notes="llava-hf/llava-onevision-qwen2-*-hf; the number of image tokens depends on the image size (tiles + newline tokens)",
    )
)
