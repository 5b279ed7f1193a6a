"""The only place in nnshift that knows architectures: adapters, the registry and `load` -> `VLM`."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.loading import VLM, load
from nnshift.models.protocol import LensLike, VLMLike, check_vlm
from nnshift.models.registry import (
    register_adapter,
    registered_adapters,
    supported_architectures,
    unregister_adapter,
)

__all__ = [
    "VLM",
    "LensLike",
    "VLMLike",
    "check_vlm",
    "ModelAdapter",
    "load",
    "register_adapter",
    "registered_adapters",
    "supported_architectures",
    "unregister_adapter",
]
