"""InternVL 3 / 3.5 (InternVLForConditionalGeneration): InternViT + pixel-shuffle MLP + a Qwen2/Qwen3/Llama LM."""

from __future__ import annotations

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["INTERNVL"]

INTERNVL = builtin(
    "internvl",
    "InternVLForConditionalGeneration",
    image_token_id_attrs=ID_ONLY,
    image_token="<IMG_CONTEXT>",
    end_of_turn_tokens=("<|im_end|>",),
    shares_prompt_prefix=True,
    notes="OpenGVLab/InternVL3-*-hf, InternVL3_5-*-HF; image tokens are <IMG_CONTEXT> between <img> and </img>",
)
