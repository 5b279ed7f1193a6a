"""InternVL 3 / 3.5 (InternVLForConditionalGeneration): InternViT + pixel-shuffle MLP + a Qwen2/Qwen3/Llama LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["INTERNVL"]

INTERNVL = register_adapter(
    ModelAdapter(
        family="internvl",
        architectures=("InternVLForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<IMG_CONTEXT>",
        end_of_turn_tokens=("<|im_end|>",),
        notes="OpenGVLab/InternVL3-*-hf, InternVL3_5-*-HF; image tokens are <IMG_CONTEXT> between <img> and </img>",
    )
)
