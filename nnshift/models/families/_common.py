"""What the built-in family adapters share: the usual layout of an image-text model's language model."""

from __future__ import annotations

from typing import Any

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["ID_ONLY", "INDEX_FIRST", "builtin"]

#: the config attribute that holds the image token id: ``image_token_id`` only, or ``image_token_index`` first
ID_ONLY: tuple[str, ...] = ("image_token_id",)
INDEX_FIRST: tuple[str, ...] = ("image_token_index", "image_token_id")


def builtin(family: str, *architectures: str, lm: str = "model.language_model", **fields: Any) -> ModelAdapter:
    """Register a built-in adapter whose LM blocks are ``{lm}.layers`` and final norm ``{lm}.norm`` (head lm_head)."""
    return register_adapter(
        ModelAdapter(
            family=family, architectures=architectures, layers=f"{lm}.layers", final_norm=f"{lm}.norm", **fields
        )
    )
