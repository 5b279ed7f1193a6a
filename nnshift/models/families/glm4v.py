"""GLM-4.1V / GLM-4.5V (Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration): a ViT + a GLM-4 LM with M-RoPE."""

from __future__ import annotations

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["GLM4V"]

GLM4V = builtin(
    "glm4v",
    "Glm4vForConditionalGeneration",
    "Glm4vMoeForConditionalGeneration",
    "Glm46VForConditionalGeneration",
    image_token_id_attrs=ID_ONLY,
    image_token="<|image|>",
    end_of_turn_tokens=("<|user|>", "<|endoftext|>"),
    notes="zai-org/GLM-4.1V-9B-*, GLM-4.5V; image tokens are <|image|> between <|begin_of_image|> and <|end_of_image|>",
)
