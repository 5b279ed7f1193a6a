"""PaliGemma (PaliGemmaForConditionalGeneration): image tokens, then BOS + prompt + newline; no chat template."""

from __future__ import annotations

from nnshift.models.families._common import builtin

__all__ = ["PALIGEMMA"]

PALIGEMMA = builtin(
    "paligemma",
    "PaliGemmaForConditionalGeneration",
    image_token="<image>",
    prompt_style="prefix",
    notes="google/paligemma-*; prompts are task prefixes ('caption en', 'answer en ...'), the processor adds the image",
)
