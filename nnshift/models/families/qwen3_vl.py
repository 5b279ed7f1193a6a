"""Qwen3-VL and Qwen3-VL-MoE: a ViT with 2x2 merging and deepstack features + a Qwen3 (or Qwen3-MoE) LM with M-RoPE."""

from __future__ import annotations

from nnshift.models.families._common import builtin
from nnshift.models.families.qwen2_vl import QWEN_TOKENS

__all__ = ["QWEN3_VL"]

QWEN3_VL = builtin(
    "qwen3_vl",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration",
    **QWEN_TOKENS,
    notes=(
        "Qwen/Qwen3-VL-*; deepstack: the text model adds vision features at the image positions right after the"
        " first decoder blocks, outside the block, so the residual read there (block output, as in"
        " output_hidden_states) does not include them yet; the next block's input does"
    ),
)
