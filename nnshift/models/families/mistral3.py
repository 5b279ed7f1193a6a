"""Mistral 3 / Pixtral (Mistral3ForConditionalGeneration): a Pixtral vision encoder + patch merger + a Mistral LM."""

from __future__ import annotations

from nnshift.models.families._common import INDEX_FIRST, builtin

__all__ = ["MISTRAL3"]

MISTRAL3 = builtin(
    "mistral3",
    "Mistral3ForConditionalGeneration",
    image_token_id_attrs=INDEX_FIRST,
    image_token="[IMG]",
    notes="mistralai/Mistral-Small-3.1-*; Pixtral-12B as LlavaForConditionalGeneration with a Pixtral tower is the llava family; image rows end with [IMG_BREAK], the image with [IMG_END]",
)
