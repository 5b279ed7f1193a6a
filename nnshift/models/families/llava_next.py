"""LLaVA-NeXT (LlavaNextForConditionalGeneration): any-resolution tiles through CLIP + a Llama/Mistral/Vicuna LM."""

from __future__ import annotations

from nnshift.models.families._common import builtin

__all__ = ["LLAVA_NEXT"]

LLAVA_NEXT = builtin(
    "llava_next",
    "LlavaNextForConditionalGeneration",
    image_token="<image>",
    end_of_turn_tokens=("<|im_end|>", "<|eot_id|>"),
    shares_prompt_prefix=True,
    notes="llava-hf/llava-v1.6-*; the number of image tokens depends on the image size (tiling)",
)
