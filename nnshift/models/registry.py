"""Architecture class name -> ModelAdapter; the built-in families register themselves on import."""

from __future__ import annotations

from collections.abc import Iterable

from nnshift.errors import UnsupportedModelError
from nnshift.models.adapter import ModelAdapter

__all__ = ["register_adapter", "unregister_adapter", "supported_architectures", "adapter_for", "registered_adapters"]

_REGISTRY: dict[str, ModelAdapter] = {}
_BUILTINS_LOADING = False

REGISTER_HINT = (
    "register an adapter for it: `nnshift.models.register_adapter(ModelAdapter(family=..., architectures=(<class name>,),"
    " layers=<path of the decoder-layer ModuleList>, final_norm=..., unembed='lm_head', ...))`; see docs/models.md"
)


def register_adapter(adapter: ModelAdapter, *, overwrite: bool = False) -> ModelAdapter:
    """Register `adapter` for each of its architecture class names; returns it (usable as a one-liner)."""
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"expected a ModelAdapter, got {type(adapter).__name__}")
    _ensure_builtins()  # built-ins first, so that a user's overwrite=True is not undone by their later import
    for arch in adapter.architectures:
        old = _REGISTRY.get(arch)
        if old is not None and old is not adapter and not overwrite:
            raise ValueError(
                f"architecture {arch!r} already has adapter {old.family!r}; pass overwrite=True to replace it"
            )
    for arch in adapter.architectures:
        _REGISTRY[arch] = adapter
    return adapter


def unregister_adapter(adapter: ModelAdapter) -> None:
    """Remove `adapter` from every architecture name it is registered for (no-op where it is not)."""
    for arch in [a for a, registered in _REGISTRY.items() if registered is adapter]:
        del _REGISTRY[arch]


def _ensure_builtins() -> None:
    """Import the built-in families once (they register themselves); re-entrant while they are importing."""
    global _BUILTINS_LOADING
    if _BUILTINS_LOADING:
        return
    _BUILTINS_LOADING = True
    try:
        import nnshift.models.families  # noqa: F401  (registers the built-in adapters)
    except BaseException:
        _BUILTINS_LOADING = False
        raise


def supported_architectures() -> list[str]:
    """The HF architecture class names that have an adapter, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def registered_adapters() -> list[ModelAdapter]:
    """The distinct registered adapters, in registration order."""
    _ensure_builtins()
    seen: dict[int, ModelAdapter] = {}
    for adapter in _REGISTRY.values():
        seen.setdefault(id(adapter), adapter)
    return list(seen.values())


def adapter_for(architectures: Iterable[str], what: str = "this model") -> ModelAdapter:
    """The adapter of the first known architecture name; UnsupportedModelError naming the supported ones."""
    _ensure_builtins()
    names = [a for a in architectures if a]
    for arch in names:
        if arch in _REGISTRY:
            return _REGISTRY[arch]
    raise UnsupportedModelError(
        f"{what}: architecture {', '.join(names) or '<unknown>'} is not supported; "
        f"supported architectures: {', '.join(sorted(_REGISTRY))}",
        REGISTER_HINT,
    )
