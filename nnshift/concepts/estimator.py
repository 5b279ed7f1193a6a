"""`fit` (the functional entry point) and `ConceptEstimator` (a scikit-learn-style wrapper)."""

from __future__ import annotations

import hashlib
import platform
import time
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from nnshift._version import versions
from nnshift.concepts.dictionary import ConceptDictionary, matrix
from nnshift.concepts.methods import get_method
from nnshift.errors import ConceptError
from nnshift.store import Activations

__all__ = ["fit", "ConceptEstimator"]


def _provenance(acts: Activations | Tensor, z: Tensor, k: int, seed: int, seconds: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "n_samples": int(z.shape[0]),
        "dim": int(z.shape[1]),
        "k": k,
        "seed": seed,
        "input_dtype": str(z.dtype).removeprefix("torch."),
        "device": str(z.device),
        "fit_seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {**versions(libraries=False), "torch": torch.__version__, "python": platform.python_version()},
    }
    if isinstance(acts, Activations):
        info["activations"] = dict(acts.info)
        info["sample_ids_sha1"] = hashlib.sha1("\n".join(acts.ids).encode()).hexdigest()
    return info


def fit(
    acts: Activations | Float[Tensor, "m d"],
    k: int = 20,
    method: str = "kmeans",
    seed: int = 0,
    **params: Any,
) -> ConceptDictionary:
    """Learn ``k`` concepts from ``acts`` (`Activations` or an ``[M, D]`` tensor) with a registered method.

    The maths runs in float32 on the activations' device. ``params`` are the method's own
    (e.g. ``activation=`` for kmeans, ``sparsity=`` for semi_nmf); see docs/concepts.md.
    """
    m = get_method(method)
    z = matrix(acts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConceptError(f"k must be a positive integer, got {k!r}", "pass e.g. k=20")
    if k > z.shape[0]:
        raise ConceptError(
            f"cannot learn k={k} concepts from {z.shape[0]} samples",
            f"use k <= {z.shape[0]}, or capture more samples",
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConceptError(f"seed must be an integer, got {seed!r}", "pass e.g. seed=0")
    cfg = m.config(dict(params))
    z32 = z.detach().to(torch.float32)
    t0 = time.perf_counter()
    res = m.fit(z32, k, seed, cfg)
    seconds = time.perf_counter() - t0
    res.diagnostics.setdefault("seconds", seconds)
    return ConceptDictionary(
        concepts=res.concepts.contiguous(),
        method=method,
        params=res.params,
        diagnostics=res.diagnostics,
        info=_provenance(acts, z, k, seed, seconds),
        state=res.state,
        codes=res.codes,
    )


def _as_tensor(x: Any) -> tuple[Activations | Tensor, bool]:
    if isinstance(x, (Activations, Tensor)):
        return x, False
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), True
    raise ConceptError(
        f"expected Activations, a torch tensor or a numpy array, got {type(x).__name__}",
        "pass an [M, D] matrix of activations",
    )


class ConceptEstimator:
    """scikit-learn-style concepts: ``ConceptEstimator(k=20, method="semi_nmf").fit_transform(Z)``.

    Numpy inputs give numpy outputs, tensors give tensors. After `fit`: ``dictionary_`` (the
    `ConceptDictionary`) and ``components_`` (its concepts).
    """

    def __init__(self, k: int = 20, method: str = "kmeans", seed: int = 0, **params: Any) -> None:
        self.k = k
        self.method = method
        self.seed = seed
        self.params = dict(params)
        self.dictionary_: ConceptDictionary | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments (method parameters flattened in)."""
        return {"k": self.k, "method": self.method, "seed": self.seed, **self.params}

    def set_params(self, **params: Any) -> ConceptEstimator:
        """Set constructor arguments; returns self."""
        for key in ("k", "method", "seed"):
            if key in params:
                setattr(self, key, params.pop(key))
        self.params.update(params)
        return self

    def fit(self, x: Any, y: Any = None) -> ConceptEstimator:
        """Learn the concepts; returns self."""
        z, _ = _as_tensor(x)
        self.dictionary_ = fit(z, k=self.k, method=self.method, seed=self.seed, **self.params)
        return self

    def _dico(self) -> ConceptDictionary:
        if self.dictionary_ is None:
            raise ConceptError("this ConceptEstimator is not fitted yet", "call fit(X) first")
        return self.dictionary_

    @property
    def components_(self) -> Float[Tensor, "k d"]:
        """The concepts ``U`` (``[K, D]``)."""
        return self._dico().concepts

    def transform(self, x: Any) -> Any:
        """Activations ``[M, K]`` of ``x``."""
        z, was_np = _as_tensor(x)
        v = self._dico().transform(z)
        return v.cpu().numpy() if was_np else v

    def fit_transform(self, x: Any, y: Any = None) -> Any:
        """`fit` then the fitted codes of ``x``."""
        self.fit(x)
        _, was_np = _as_tensor(x)
        codes = self._dico().codes
        v = codes if codes is not None else self._dico().transform(_as_tensor(x)[0])
        return v.cpu().numpy() if was_np else v

    def inverse_transform(self, v: Any) -> Any:
        """Rows rebuilt from activations (``V U`` plus the method's mean/offset)."""
        d = self._dico()
        was_np = isinstance(v, np.ndarray)
        vt = torch.as_tensor(v, dtype=torch.float32, device=d.concepts.device)
        out = get_method(d.method).reconstruct(d.concepts, vt, d.config, d.state)
        return out.cpu().numpy() if was_np else out

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"ConceptEstimator(k={self.k}, method={self.method!r}, seed={self.seed}{extra})"
