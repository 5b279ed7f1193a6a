"""Molmo2 (Molmo2ForConditionalGeneration): a ViT + attention-pooling connector + a Qwen3-style LM."""

from __future__ import annotations

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["MOLMO2"]

MOLMO2 = builtin(
    "molmo2",
    "Molmo2ForConditionalGeneration",
    image_token_id_attrs=ID_ONLY,
    end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
    notes=(
        "allenai/Molmo2-*; the image-token id comes from config.image_token_id (the patch tokens the model fills"
        " with image features); its image processor needs torchvision, so it is checked on a meta model only here"
    ),
)
