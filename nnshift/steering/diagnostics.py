"""Diagnostics of a coarse steering vector, before running it: how consistent and how separating it is.

For source rows ``a_i`` and target rows ``b_j`` (one layer) and the vector ``v`` (default ``mean(b) - mean(a)``):

* consistency: ``cos(b_j - mean(a), v)`` for every target row; its mean (``consistency``) and standard deviation
  (``consistency_std``). Near 1 with a small spread, every target sample lies in the vector's direction from
  the source; a low mean says the vector is an average of disagreeing directions.
* separation along ``v``: the projections ``p = x . v / |v|`` of both sets; ``d_prime = (mean p_b - mean p_a) /
  sqrt((var p_a + var p_b) / 2)`` (population variances; None when both are 0) and ``split_accuracy``: the
  share of all rows on their own side of the midpoint ``(mean p_a + mean p_b) / 2``.

`coarse`, `target_answer` and `answer_type_vector` record these in ``vec.info["diagnostics"]``; sweeps and
`by_impact` show them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.errors import HiddenSizeMismatchError
from nnshift.store import Activations, as_matrix

__all__ = ["DIAGNOSTIC_KEYS", "vector_diagnostics"]

#: the keys of `vector_diagnostics`' dict
DIAGNOSTIC_KEYS = ("n_source", "n_target", "consistency", "consistency_std", "d_prime", "split_accuracy")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _direction(vector: Any, a: Tensor, b: Tensor) -> Float[Tensor, " d"]:
    if vector is None:
        return b.mean(0) - a.mean(0)
    v = getattr(vector, "vector", vector)
    if not isinstance(v, Tensor) or v.ndim != 1 or v.shape[0] != a.shape[1]:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise HiddenSizeMismatchError(
            f"the vector has shape {shape}, the activations hidden size {a.shape[1]}", "pass the vector made from them"
        )
    return v.detach().float().cpu()


def vector_diagnostics(
    source: Activations | Float[Tensor, "m d_source"],
    target: Activations | Float[Tensor, "n d_target"],
    vector: Any = None,
) -> dict[str, float | int | None]:
    """Consistency and separation of a coarse vector from its two activation sets (see the module docstring).

    ``vector``: a `SteeringVector` or ``[D]`` tensor (default: ``mean(target) - mean(source)``). Values that
    cannot be computed (a zero vector, no spread) are None.
    """
    a = as_matrix(source, "source").detach().float().cpu()
    b = as_matrix(target, "target").detach().float().cpu()
    if a.shape[1] != b.shape[1]:
        raise HiddenSizeMismatchError(
            f"source has hidden size {a.shape[1]}, target {b.shape[1]}", "take both sets from the same layer"
        )
    v = _direction(vector, a, b)
    norm = float(v.norm())
    out: dict[str, float | int | None] = {"n_source": int(a.shape[0]), "n_target": int(b.shape[0])}
    if norm == 0.0 or not math.isfinite(norm):
        return out | {k: None for k in DIAGNOSTIC_KEYS[2:]}
    cos = torch.nn.functional.cosine_similarity(b - a.mean(0), v.unsqueeze(0), dim=1)
    u = v / norm
    pa, pb = a @ u, b @ u
    ma, mb = float(pa.mean()), float(pb.mean())
    pooled = math.sqrt((float(pa.var(unbiased=False)) + float(pb.var(unbiased=False))) / 2)
    mid = (ma + mb) / 2
    sign = 1.0 if mb >= ma else -1.0
    right = int((sign * (pa - mid) < 0).sum()) + int((sign * (pb - mid) > 0).sum())
    return out | {
        "consistency": _finite(float(cos.mean())),
        "consistency_std": _finite(float(cos.std(unbiased=False))),
        "d_prime": _finite((mb - ma) / pooled) if pooled > 0 else None,
        "split_accuracy": right / (a.shape[0] + b.shape[0]),
    }
