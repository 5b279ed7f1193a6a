"""PaliGemma (PaliGemmaForConditionalGeneration): image tokens, then BOS + prompt + newline; no chat template."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["PALIGEMMA"]

PALIGEMMA = register_adapter(
    ModelAdapter(
        family="paligemma",
        architectures=("PaliGemmaForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id", "image_token_index"),
        image_token="<image>",
        prompt_style="prefix",
        notes="google/paligemma-*; prompts are task prefixes ('caption en', 'answer en ...'), the processor adds the image",
    )
)
