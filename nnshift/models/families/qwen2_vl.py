"""Qwen2-VL and Qwen2.5-VL: a ViT with 2x2 patch merging + a Qwen2 LM with M-RoPE; ChatML prompts."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["QWEN2_VL"]

QWEN2_VL = register_adapter(
    ModelAdapter(
        family="qwen2_vl",
        architectures=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<|image_pad|>",
        end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
        notes="the vision tower is model.visual (blocks); image tokens are <|image_pad|> between vision start/end",
    )
)
