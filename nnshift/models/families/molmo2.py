"""Molmo2 (Molmo2ForConditionalGeneration): a ViT + attention-pooling connector + a Qwen3-style LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["MOLMO2"]

MOLMO2 = register_adapter(
    ModelAdapter(
        family="molmo2",
        architectures=("Molmo2ForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
        notes=(
            "allenai/Molmo2-*; the image-token id comes from config.image_token_id (the patch tokens the model fills"
            " with image features); its image processor needs torchvision, so it is checked on a meta model only here"
        ),
    )
)
