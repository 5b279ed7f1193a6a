"""LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): SigLIP any-resolution tiles + a Qwen2 LM."""

from __future__ import annotations

from nnshift.models.families._common import INDEX_FIRST, builtin

__all__ = ["LLAVA_ONEVISION"]

LLAVA_ONEVISION = builtin(
    "llava_onevision",
    "LlavaOnevisionForConditionalGeneration",
    image_token_id_attrs=INDEX_FIRST,
    image_token="<image>",
    end_of_turn_tokens=("<|im_end|>",),
    shares_prompt_prefix=True,
    notes="llava-hf/llava-onevision-qwen2-*-hf; the number of image tokens depends on the image size (tiles + newline tokens)",
)
