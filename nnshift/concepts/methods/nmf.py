"""NMF ``Z - offset ≈ V U`` with ``U, V >= 0`` (HALS coordinate descent). Formulas: docs/concepts.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.concepts import _solvers as S
from nnshift.concepts.methods import base as B
from nnshift.concepts.methods.base import Codes, ConceptMethod, Concepts, FitResult, MethodConfig, Rows, State
from nnshift.errors import ConceptError

__all__ = ["NMFConfig", "NMFMethod"]


@dataclass(frozen=True)
class NMFConfig(MethodConfig):
    """NMF parameters: ``shift`` (``"none"`` or ``"min"``: subtract each feature's minimum), stopping."""

    shift: str = "none"
    max_iter: int = 500
    tol: float = 1e-5

    def __post_init__(self) -> None:
        if self.shift not in ("none", "min"):
            raise ConceptError(f"unknown NMF shift {self.shift!r}", "use shift='none' or shift='min'")
        B.check_int("max_iter", self.max_iter, 1)
        B.check_number("tol", self.tol, allow_zero=True)


def _offset(z: Rows, shift: str) -> Float[Tensor, " d"]:
    """Per-feature offset that makes ``z - offset >= 0`` (zeros with ``shift="none"``, checked)."""
    offset = z.min(dim=0).values.clamp(max=0.0)
    if shift == "none":
        if (offset < 0).any():
            raise ConceptError(
                f"NMF needs non-negative activations; the minimum is {float(z.min()):.4g}",
                "pass shift='min' to subtract each feature's minimum first, or use semi_nmf",
            )
        offset = torch.zeros_like(offset)
    return offset


class NMFMethod(ConceptMethod[NMFConfig]):
    """NMF ``Z - offset ≈ V U`` with ``U, V >= 0`` (HALS coordinate descent).

    Needs non-negative inputs, or ``shift="min"``: ``offset_j = min(0, min_m z_mj)`` per feature, so
    that ``Z - offset >= 0``; `transform` subtracts the same offset. Rows of ``U`` have unit norm.
    """

    name = "nmf"
    config_class = NMFConfig
    state_keys = ("offset",)
    origin = "offset"

    def fit(self, z: Rows, k: int, seed: int, params: NMFConfig | Mapping[str, Any]) -> FitResult:
        """Alternating HALS sweeps on ``V`` then ``U``; the last ``V`` is the exact NNLS solution."""
        cfg = self.config(params)
        offset = _offset(z, cfg.shift)
        x = z - offset
        gen = S.generator(seed, z.device)
        m, d = x.shape
        scale = (float(x.mean()) / k) ** 0.5 if float(x.mean()) > 0 else 1.0
        v = torch.rand(m, k, generator=gen, device=z.device) * scale
        u = torch.rand(k, d, generator=gen, device=z.device) * scale
        xx = S.sqnorm(x)
        hist: list[float] = []
        conv = False
        it = 0
        for it in range(1, cfg.max_iter + 1):
            v, _ = S.nonneg_lasso_cd(x @ u.t(), u @ u.t(), v, 0.0, max_sweeps=1)
            ut, _ = S.nonneg_lasso_cd(x.t() @ v, v.t() @ v, u.t(), 0.0, max_sweeps=1)
            u = ut.t().contiguous()
            hist.append(S.objective(xx, x @ u.t(), u @ u.t(), v, 0.0))
            if it > 1 and hist[-2] - hist[-1] <= cfg.tol * abs(hist[-2]):
                conv = True
                break
        norms = u.norm(dim=1).clamp_min(1e-12)
        u = u / norms[:, None]
        v = S.nonneg_lasso(x, u, 0.0)
        hist.append(S.objective(xx, x @ u.t(), u @ u.t(), v, 0.0))
        diag = {"loss": hist, "n_iter": it, "converged": conv, "reconstruction_error": B.rel_error(z, v @ u + offset)}
        return FitResult(concepts=u, codes=v, params=cfg.to_params(), diagnostics=diag, state={"offset": offset})

    def transform(self, concepts: Concepts, z: Rows, params: NMFConfig | Mapping[str, Any], state: State) -> Codes:
        """Non-negative least squares codes of ``z - offset`` (`reconstruct`: ``V U + offset``)."""
        return S.nonneg_lasso(self.centred(z, state), concepts, 0.0)
