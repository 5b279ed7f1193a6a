"""Mistral 3 / Pixtral (Mistral3ForConditionalGeneration): a Pixtral vision encoder + patch merger + a Mistral LM."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["MISTRAL3"]

MISTRAL3 = register_adapter(
    ModelAdapter(
        family="mistral3",
        architectures=("Mistral3ForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_index", "image_token_id"),
        image_token="[IMG]",
        notes="mistralai/Mistral-Small-3.1-*; Pixtral-12B as LlavaForConditionalGeneration with a Pixtral tower is the llava family; image rows end with [IMG_BREAK], the image with [IMG_END]",
    )
)
