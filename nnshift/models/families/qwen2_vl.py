"""Qwen2-VL and Qwen2.5-VL: a ViT with 2x2 patch merging + a Qwen2 LM with M-RoPE; ChatML prompts."""

from __future__ import annotations

from typing import Any

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["QWEN2_VL", "QWEN_TOKENS"]

#: Qwen's vision-language chat tokens (ChatML turns, <|image_pad|> image tokens), shared with Qwen3-VL
QWEN_TOKENS: dict[str, Any] = {
    "image_token_id_attrs": ID_ONLY,
    "image_token": "<|image_pad|>",
    "end_of_turn_tokens": ("<|im_end|>", "<|endoftext|>"),
}

QWEN2_VL = builtin(
    "qwen2_vl",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    **QWEN_TOKENS,
    notes="the vision tower is model.visual (blocks); image tokens are <|image_pad|> between vision start/end",
)
