"""Qwen3-VL and Qwen3-VL-MoE: a ViT with 2x2 merging and deepstack features + a Qwen3 (or Qwen3-MoE) LM with M-RoPE."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["QWEN3_VL"]

QWEN3_VL = register_adapter(
    ModelAdapter(
        family="qwen3_vl",
        architectures=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<|image_pad|>",
        end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
        notes=(
            "Qwen/Qwen3-VL-*; deepstack: the text model adds vision features at the image positions right after the"
            " first decoder blocks, outside the block, so the residual read there (block output, as in"
            " output_hidden_states) does not include them yet; the next block's input does"
        ),
    )
)
