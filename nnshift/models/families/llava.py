"""LLaVA-1.5 (LlavaForConditionalGeneration): CLIP vision tower + projector + a Llama-family language model."""

from __future__ import annotations

from nnshift.models.families._common import builtin

__all__ = ["LLAVA"]

LLAVA = builtin(
    "llava",
    "LlavaForConditionalGeneration",
    image_token="<image>",
    shares_prompt_prefix=True,
    notes="LLaVA-1.5 (llava-hf/llava-1.5-*-hf); the vision tower's CLIP encoder layers are never used as layers.",
)
