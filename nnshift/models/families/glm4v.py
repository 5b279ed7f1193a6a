"""GLM-4.1V / GLM-4.5V (Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration): a ViT + a GLM-4 LM with M-RoPE."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["GLM4V"]

GLM4V = register_adapter(
    ModelAdapter(
        family="glm4v",
        architectures=(
            "Glm4vForConditionalGeneration",
            "Glm4vMoeForConditionalGeneration",
            "Glm46VForConditionalGeneration",
        ),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<|image|>",
        end_of_turn_tokens=("<|user|>", "<|endoftext|>"),
        notes="zai-org/GLM-4.1V-9B-*, GLM-4.5V; image tokens are <|image|> between <|begin_of_image|> and <|end_of_image|>",
    )
)
