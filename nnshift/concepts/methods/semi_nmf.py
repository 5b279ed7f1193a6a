"""Semi-NMF ``Z ≈ V U`` (``V >= 0``, ``U`` free) and CoX-LMM's sparse variant. Formulas: docs/concepts.md."""

from __future__ import annotations

import time
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

__all__ = ["SemiNMFConfig", "SparseSemiNMFConfig", "SemiNMFMethod", "SparseSemiNMFMethod"]

_Fit = tuple[Tensor, Tensor, list[float], int, bool]


@dataclass(frozen=True)
class SemiNMFConfig(MethodConfig):
    """Semi-NMF parameters: λ (``sparsity``, or ``relative_sparsity`` × median row norm), init, stopping, solver."""

    sparsity: float = 0.0
    relative_sparsity: float | None = None
    init: str | Tensor = "auto"
    max_iter: int = 500
    tol: float = 1e-6
    inner_sweeps: int = 2
    extrapolate: bool = True

    def __post_init__(self) -> None:
        B.check_number("sparsity", self.sparsity, allow_zero=True)
        if self.relative_sparsity is not None:
            B.check_number("relative_sparsity", self.relative_sparsity, allow_zero=True)
        B.check_init("Semi-NMF", self.init, ("auto", "svd", "kmeans", "random"), "[M, K] (plain) or [K, D] (sparse)")
        B.check_int("max_iter", self.max_iter, 1)
        B.check_int("inner_sweeps", self.inner_sweeps, 1)
        B.check_number("tol", self.tol, allow_zero=True)
        if not isinstance(self.extrapolate, bool):
            raise ConceptError(f"extrapolate must be True or False, got {self.extrapolate!r}", "pass extrapolate=True")


@dataclass(frozen=True)
class SparseSemiNMFConfig(SemiNMFConfig):
    """`SemiNMFConfig` with the reference's ``sparsity = 1`` by default."""

    sparsity: float = 1.0


class SemiNMFMethod(ConceptMethod[SemiNMFConfig]):
    """Semi-NMF ``Z ≈ V U`` with ``V >= 0`` and ``U`` free; with ``sparsity > 0`` the sparse variant.

    * ``sparsity == 0``: Ding et al.'s alternating updates: ``U = (VᵀV)⁻¹VᵀZ`` then the
      multiplicative update of ``V``; rows of ``U`` are scaled to unit norm at the end.
    * ``sparsity = λ > 0``: CoX-LMM's objective ``0.5‖Z - VU‖² + λ‖V‖₁``, ``V >= 0``, ``‖u_k‖ <= 1``,
      by alternating block coordinate descent (atoms projected on the unit ball; non-negative lasso
      codes). ``relative_sparsity = r`` sets ``λ = r · median_m ‖z_m‖`` at fit time.

    The last step is always an exact (sparse) non-negative least-squares solve for ``V``, the same
    one `transform` runs, so the fitted codes are the codes of the training rows.
    """

    name = "semi_nmf"
    config_class = SemiNMFConfig

    def fit(self, z: Rows, k: int, seed: int, params: SemiNMFConfig | Mapping[str, Any]) -> FitResult:
        """Dispatch to the plain (multiplicative) or sparse (coordinate descent) algorithm."""
        cfg = self.config(params)
        if cfg.relative_sparsity is not None:
            cfg = cfg.replace(sparsity=float(cfg.relative_sparsity) * float(z.norm(dim=1).median()))
        gen = S.generator(seed, z.device)
        t0 = time.perf_counter()
        if cfg.sparsity > 0:
            u, v, hist, n_iter, conv = self._fit_sparse(z, k, gen, cfg)
        else:
            u, v, hist, n_iter, conv = self._fit_plain(z, k, gen, cfg)
        lam = float(cfg.sparsity)
        # the exact code step for the final concepts: the fitted codes are what transform returns
        v, _ = S.nonneg_lasso_cd(z @ u.t(), u @ u.t(), v, lam, max_sweeps=1000, tol=1e-6)
        hist.append(S.objective(S.sqnorm(z), z @ u.t(), u @ u.t(), v, lam))
        diag = {
            "loss": hist,
            "objective": hist[-1],
            "n_iter": n_iter,
            "converged": conv,
            "reconstruction_error": B.rel_error(z, v @ u),
            "code_density": float((v > 0).float().mean()),
            "seconds": time.perf_counter() - t0,
        }
        return FitResult(concepts=u, codes=v, params=cfg.to_params(), diagnostics=diag)

    def _init_codes(self, z: Rows, k: int, gen: torch.Generator, init: Any) -> Codes:
        """Positive initial codes for the multiplicative algorithm."""
        m = z.shape[0]
        if init in ("auto", "kmeans"):  # Ding et al.: cluster indicators + 0.2
            x = z - z.mean(dim=0)
            _, labels, *_ = S.lloyd(x, S.kmeans_plusplus(x, k, gen), 100, 1e-4)
            return torch.nn.functional.one_hot(labels, k).to(torch.float32) + 0.2
        if init == "random":
            return torch.rand(m, k, generator=gen, device=z.device) + 0.01
        if init == "svd":
            raise ConceptError(
                "init='svd' is for the sparse Semi-NMF (sparsity > 0)", "use 'auto', 'kmeans' or 'random'"
            )
        v = B.init_tensor("init", init, (m, k), z)
        if (v < 0).any():
            raise ConceptError("init codes must be non-negative", "pass V0 >= 0 (e.g. one-hot + 0.2)")
        return v

    def _fit_plain(self, z: Rows, k: int, gen: torch.Generator, cfg: SemiNMFConfig) -> _Fit:
        v = self._init_codes(z, k, gen, cfg.init)
        zz = S.sqnorm(z)
        eye = torch.eye(k, device=z.device)
        hist: list[float] = []
        conv = False
        it = 0
        u = torch.zeros(k, z.shape[1], device=z.device)
        for it in range(1, cfg.max_iter + 1):
            a = v.t() @ v
            ridge = 1e-7 * float(a.diagonal().mean().clamp_min(1e-12))
            u = torch.linalg.solve(a + ridge * eye, v.t() @ z)  # exact least squares for U
            b = z @ u.t()
            g = u @ u.t()
            num = b.clamp(min=0) + v @ (-g).clamp(min=0)
            den = (-b).clamp(min=0) + v @ g.clamp(min=0)
            v = v * torch.sqrt(num / den.clamp_min(1e-20))
            hist.append(S.objective(zz, b, g, v, 0.0))
            if it > 1 and hist[-2] - hist[-1] <= cfg.tol * abs(hist[-2]):
                conv = True
                break
        norms = u.norm(dim=1).clamp_min(1e-12)
        return u / norms[:, None], v * norms[None, :], hist, it, conv

    def _init_atoms(self, z: Rows, k: int, gen: torch.Generator, init: Any) -> Float[Tensor, "k d"]:
        """Unit-norm initial atoms for the sparse algorithm."""
        if init in ("auto", "svd"):
            p_left, _, qt = S.randomized_svd(z, k, gen)
            # sign rule of scikit-learn's svd_flip: each left singular vector's largest entry is positive
            sign = torch.sign(p_left.gather(0, p_left.abs().argmax(dim=0, keepdim=True)).squeeze(0))
            sign[sign == 0] = 1.0
            u = qt * sign[:, None]
            if u.shape[0] < k:  # rank(Z) < k: fill with random data rows
                extra = z[torch.randint(z.shape[0], (k - u.shape[0],), generator=gen, device=z.device)]
                u = torch.cat([u, extra / extra.norm(dim=1, keepdim=True).clamp_min(1e-12)])
            return u
        if init == "kmeans":
            x = z - z.mean(dim=0)
            c, *_ = S.lloyd(x, S.kmeans_plusplus(x, k, gen), 100, 1e-4)
            c = c + z.mean(dim=0)
            return c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if init == "random":
            rows = z[torch.randperm(z.shape[0], generator=gen, device=z.device)[:k]]
            return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return S.project_rows_unit_ball(B.init_tensor("init", init, (k, z.shape[1]), z))

    def _fit_sparse(self, z: Rows, k: int, gen: torch.Generator, cfg: SemiNMFConfig) -> _Fit:
        u0 = self._init_atoms(z, k, gen, cfg.init)
        return S.sparse_semi_nmf(
            z,
            u0,
            float(cfg.sparsity),
            gen,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            inner_sweeps=cfg.inner_sweeps,
            extrapolate=cfg.extrapolate,
        )

    def transform(self, concepts: Concepts, z: Rows, params: SemiNMFConfig | Mapping[str, Any], state: State) -> Codes:
        """Non-negative (sparse, ``λ = sparsity``) least squares codes."""
        return S.nonneg_lasso(z, concepts, float(self.config(params).sparsity))

    def check_concepts(self, concepts: Concepts, params: SemiNMFConfig | Mapping[str, Any]) -> None:
        """``relative_sparsity`` needs data: refuse it for given concepts."""
        if self.config(params).relative_sparsity is not None:
            raise ConceptError(
                "relative_sparsity needs the training data and cannot be used with given concepts",
                "pass the absolute sparsity=λ (e.g. the fitted dictionary's params['sparsity'])",
            )


class SparseSemiNMFMethod(SemiNMFMethod):
    """CoX-LMM's sparse Semi-NMF: `SemiNMFMethod` with ``sparsity = 1`` by default (the reference's λ)."""

    name = "sparse_semi_nmf"
    config_class = SparseSemiNMFConfig
