"""Checks of a steering edit's strength: ``alpha`` finite, and ``alpha * s`` finite in the dtype it is added in."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nnshift.errors import ArgumentError, NonFiniteError

__all__ = ["check_alpha", "check_edit_finite"]


def check_alpha(alpha: Any) -> None:
    """``alpha`` is a finite real number (not a bool), or a tensor / sequence of finite numbers."""
    hint = "pass a finite number, e.g. alpha=1.0 (or one finite value per sample)"
    if isinstance(alpha, (bool, str, bytes)):
        raise ArgumentError(f"alpha must be a number, got {alpha!r}", hint)
    if isinstance(alpha, (int, float)):
        if not math.isfinite(alpha):
            raise NonFiniteError(f"alpha is {alpha}", hint)
        return
    if isinstance(alpha, (list, tuple)):
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alpha):
            raise ArgumentError(f"alpha must be a number or a list of numbers, got {alpha!r:.60}", hint)
        alpha = torch.tensor(alpha, dtype=torch.float64)
    if not isinstance(alpha, Tensor):
        raise ArgumentError(f"alpha must be a number or a [B] tensor, got {type(alpha).__name__}", hint)
    if alpha.dtype == torch.bool or alpha.is_complex():
        raise ArgumentError(f"alpha must hold real numbers, got a {alpha.dtype} tensor", hint)
    if alpha.is_floating_point() and not bool(torch.isfinite(alpha).all()):
        raise NonFiniteError("alpha has NaN/Inf values", hint)


def _max_abs(x: float | Tensor) -> float:
    """The largest absolute value of a scale, in float64."""
    if isinstance(x, Tensor):
        return float(x.detach().double().abs().max()) if x.numel() else 0.0
    return abs(float(x))


def check_edit_finite(patch: Any, dtype: torch.dtype = torch.float32) -> None:
    """Every layer's summed edit ``sum alpha * s`` stays finite in ``dtype`` (the model's dtype, float32 at least).

    ``patch``: a `Patch` or `PatchSet` (anything with ``.patches``, each with ``.scale``, ``.vector``, ``.layer``).
    An edit larger than the dtype's range becomes Inf inside the model and yields empty answers.
    """
    limits = [torch.finfo(torch.float32).max]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        limits.append(torch.finfo(dtype).max)
    limit = min(limits)
    per_layer: dict[Any, float] = {}
    for p in getattr(patch, "patches", ()):
        size = _max_abs(p.scale) * float(p.vector.vector.detach().double().abs().max())
        per_layer[p.layer] = per_layer.get(p.layer, 0.0) + size
    for layer, size in per_layer.items():
        if not math.isfinite(size) or size > limit:
            raise NonFiniteError(
                f"the steering edit at layer {layer} reaches {size:.3g}, beyond the largest {dtype} value "
                f"({limit:.3g}): the model's states would become Inf",
                "use a smaller alpha (steering usually needs |alpha| * |s| of the order of the states' norm)",
            )
