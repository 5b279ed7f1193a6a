"""The built-in adapters, one module per architecture family; importing this package registers them."""

from __future__ import annotations

from nnshift.models.families import gemma3, idefics, llava, llava_next, paligemma, qwen2_vl, text

__all__ = ["gemma3", "idefics", "llava", "llava_next", "paligemma", "qwen2_vl", "text"]
