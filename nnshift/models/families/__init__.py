"""The built-in adapters, one module per architecture family; importing this package registers them."""

from __future__ import annotations

from nnshift.models.families import (
    aya_vision,
    gemma3,
    gemma3n,
    gemma4,
    glm4v,
    idefics,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    mistral3,
    mllama,
    molmo2,
    paligemma,
    qwen2_vl,
    qwen3_vl,
    text,
)

__all__ = [
    "aya_vision",
    "gemma3",
    "gemma3n",
    "gemma4",
    "glm4v",
    "idefics",
    "internvl",
    "llava",
    "llava_next",
    "llava_onevision",
    "mistral3",
    "mllama",
    "molmo2",
    "paligemma",
    "qwen2_vl",
    "qwen3_vl",
    "text",
]
