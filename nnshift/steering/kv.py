"""KV-cache helpers of the sweep's shared path: a cheap fork, and row selection.

Both rely on HF's dynamic cache layers replacing their key/value tensors on every change (``torch.cat``,
indexing), never writing into them; a cache with other layers is deep-copied / handled by HF's own methods.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor
from transformers.cache_utils import DynamicLayer

__all__ = ["fork_cache", "select_rows"]


def fork_cache(cache: Any) -> Any:
    """A copy of a dynamic KV cache that shares its tensors: what is done to one (append, select rows) leaves the other.

    HF's dynamic cache layers replace their key/value tensors on every change, never write into them; a cache
    with another kind of layer is copied in full.
    """
    if not all(isinstance(layer, DynamicLayer) for layer in cache.layers):
        return copy.deepcopy(cache)
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


def select_rows(cache: Any, rows: Tensor) -> None:
    """Keep ``rows`` of a KV cache (in that order, repeats allowed): `index_select` on HF's plain dynamic layers
    (faster on CPU than the advanced indexing of ``batch_select_indices``), ``batch_select_indices`` otherwise."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, Tensor) or keys.numel() == 0:
            continue  # nothing cached in this layer
        at = rows.to(keys.device)
        values = getattr(layer, "values", None)
        if type(layer) is DynamicLayer and isinstance(values, Tensor):
            layer.keys, layer.values = keys.index_select(0, at), values.index_select(0, at)
        else:
            layer.batch_select_indices(at)
