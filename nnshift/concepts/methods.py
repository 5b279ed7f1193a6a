"""Concept-extraction methods (k-means, Semi-NMF, sparse Semi-NMF, PCA, NMF) and their registry.

A method turns an ``[M, D]`` float32 matrix ``Z`` into concepts ``U`` (``[K, D]``) and knows how to
compute the activations ``V`` (``[M, K]``) of new rows given ``U``. New methods subclass
`ConceptMethod` and are added with `register_method`. Formulas: docs/concepts.md.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.concepts import _solvers as S
from nnshift.errors import ConceptError

__all__ = [
    "ConceptMethod",
    "FitResult",
    "KMeansMethod",
    "SemiNMFMethod",
    "SparseSemiNMFMethod",
    "PCAMethod",
    "NMFMethod",
    "register_method",
    "get_method",
    "available_methods",
]


@dataclass
class FitResult:
    """What a method's `fit` returns: concepts, training codes, resolved params, diagnostics, extra tensors."""

    concepts: Float[Tensor, "k d"]
    codes: Float[Tensor, "m k"] | None
    params: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)


class ConceptMethod(ABC):
    """A dictionary-learning method: ``fit`` learns concepts, ``transform`` gives activations of new rows.

    ``defaults`` lists every accepted parameter with its default value; ``state_keys`` names the
    extra tensors (e.g. PCA's mean) that `transform` needs and that `ConceptDictionary` saves.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    state_keys: ClassVar[tuple[str, ...]] = ()

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``params``; unknown names raise `ConceptError`."""
        unknown = sorted(set(params) - set(self.defaults) - set(self.state_keys))
        if unknown:
            raise ConceptError(
                f"method {self.name!r} has no parameter(s) {unknown}",
                f"valid parameters: {sorted(self.defaults)}",
            )
        out = dict(self.defaults)
        out.update(params)
        return out

    @abstractmethod
    def fit(self, z: Float[Tensor, "m d"], k: int, seed: int, params: dict[str, Any]) -> FitResult:
        """Learn ``k`` concepts from ``z`` (float32, finite, ``k <= M`` already checked)."""

    @abstractmethod
    def transform(
        self,
        concepts: Float[Tensor, "k d"],
        z: Float[Tensor, "m d"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m k"]:
        """Activations of the rows of ``z`` on ``concepts``."""

    def reconstruct(
        self,
        concepts: Float[Tensor, "k d"],
        codes: Float[Tensor, "m k"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m d"]:
        """Rows rebuilt from their activations (default ``V @ U``)."""
        return codes @ concepts

    def scores(self, codes: Float[Tensor, "m k"], params: dict[str, Any]) -> Float[Tensor, "m k"]:
        """How strongly each row expresses each concept, for assignment and top samples (default ``|v|``)."""
        return codes.abs()

    def check_concepts(self, concepts: Float[Tensor, "k d"], params: dict[str, Any]) -> None:  # noqa: B027
        """Validate user-given concepts for `ConceptDictionary.from_concepts` (default: nothing)."""


def _rel_error(z: Float[Tensor, "m d"], zhat: Float[Tensor, "m d"]) -> float:
    """``‖Z - Ẑ‖_F / ‖Z‖_F`` in float64."""
    num = S.sqnorm(z - zhat)
    den = S.sqnorm(z)
    return (num / den) ** 0.5 if den > 0 else 0.0


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConceptError(f"{name} must be an integer >= {low}, got {value!r}", f"pass {name}={max(low, 1)} or more")
    return value


def _check_pos(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConceptError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}",
            f"pass a float for {name}",
        )
    return float(value)


def _init_tensor(name: str, value: Tensor, shape: tuple[int, int], z: Float[Tensor, "m d"]) -> Float[Tensor, "a b"]:
    if tuple(value.shape) != shape:
        raise ConceptError(
            f"{name} tensor has shape {tuple(value.shape)}, expected {shape}",
            "pass an init tensor of the documented shape, or a string init",
        )
    t = value.to(device=z.device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ConceptError(f"{name} tensor contains NaN or Inf", "pass a finite init tensor")
    return t


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params with tensors replaced by a short description (the JSON-safe record)."""
    return {k: (f"<tensor {list(v.shape)}>" if isinstance(v, Tensor) else v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------- k-means


class KMeansMethod(ConceptMethod):
    """K-means: concepts are centroids (k-means++ init, Lloyd iterations).

    Activations (``activation`` parameter): ``"inverse_distance"`` ``1/(1+‖z-u_k‖)`` (the paper's,
    default), ``"neg_distance"`` ``-‖z-u_k‖``, ``"cosine"`` ``cos(z, u_k)``, ``"one_hot"`` the nearest
    centroid's indicator. In every case the largest activation is the most similar centroid.
    """

    name = "kmeans"
    defaults: ClassVar[dict[str, Any]] = {
        "activation": "inverse_distance",
        "init": "k-means++",
        "n_init": 1,
        "max_iter": 300,
        "tol": 1e-4,
    }
    activations: ClassVar[tuple[str, ...]] = ("inverse_distance", "neg_distance", "cosine", "one_hot")

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults + checks (activation name, integers)."""
        p = super().resolve_params(params)
        if p["activation"] not in self.activations:
            raise ConceptError(
                f"unknown k-means activation {p['activation']!r}", f"use one of {list(self.activations)}"
            )
        _check_int("n_init", p["n_init"], 1)
        _check_int("max_iter", p["max_iter"], 1)
        _check_pos("tol", p["tol"], allow_zero=True)
        return p

    def fit(self, z: Float[Tensor, "m d"], k: int, seed: int, params: dict[str, Any]) -> FitResult:
        """Best of ``n_init`` seeded runs by inertia."""
        mean = z.mean(dim=0)
        x = z - mean  # centring improves float32 distances; centroids are shifted back
        init = params["init"]
        best: tuple[float, Tensor, Tensor, list[float], int, bool] | None = None
        for run in range(params["n_init"]):
            gen = S.generator(seed + run, z.device)
            if isinstance(init, Tensor):
                c0 = _init_tensor("init", init, (k, z.shape[1]), z) - mean
            elif init == "k-means++":
                c0 = S.kmeans_plusplus(x, k, gen)
            elif init == "random":
                c0 = x[torch.randperm(x.shape[0], generator=gen, device=z.device)[:k]].clone()
            else:
                raise ConceptError(f"unknown k-means init {init!r}", "use 'k-means++', 'random' or a [K, D] tensor")
            centers, labels, hist, n_iter, conv = S.lloyd(x, c0, params["max_iter"], params["tol"])
            inertia = S.sqnorm(x - centers[labels])
            if best is None or inertia < best[0]:
                best = (inertia, centers, labels, hist, n_iter, conv)
        assert best is not None
        inertia, centers, labels, hist, n_iter, conv = best
        concepts = centers + mean
        codes = self.transform(concepts, z, params, {})
        diag = {
            "loss": [*hist, inertia],
            "inertia": inertia,
            "n_iter": n_iter,
            "converged": conv,
            "reconstruction_error": _rel_error(z, concepts[labels]),
            "cluster_sizes": torch.bincount(labels, minlength=k).tolist(),
        }
        return FitResult(concepts=concepts, codes=codes, params=_json_params(params), diagnostics=diag)

    def transform(
        self,
        concepts: Float[Tensor, "k d"],
        z: Float[Tensor, "m d"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m k"]:
        """Similarities to the centroids, as chosen by ``activation``."""
        act = params.get("activation", "inverse_distance")
        if act == "cosine":
            zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
            un = concepts / concepts.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return zn @ un.t()
        mean = z.mean(dim=0)
        dist = S.sq_distances(z - mean, concepts - mean).sqrt_()
        if act == "inverse_distance":
            return 1.0 / (1.0 + dist)
        if act == "neg_distance":
            return -dist
        if act == "one_hot":
            return torch.nn.functional.one_hot(dist.argmin(dim=1), concepts.shape[0]).to(torch.float32)
        raise ConceptError(f"unknown k-means activation {act!r}", f"use one of {list(self.activations)}")

    def reconstruct(
        self,
        concepts: Float[Tensor, "k d"],
        codes: Float[Tensor, "m k"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m d"]:
        """Each row replaced by its most similar centroid."""
        return concepts[codes.argmax(dim=1)]

    def scores(self, codes: Float[Tensor, "m k"], params: dict[str, Any]) -> Float[Tensor, "m k"]:
        """The activations themselves: all k-means activations are similarities."""
        return codes


# --------------------------------------------------------------------------------------------- Semi-NMF


class SemiNMFMethod(ConceptMethod):
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
    defaults: ClassVar[dict[str, Any]] = {
        "sparsity": 0.0,
        "relative_sparsity": None,
        "init": "auto",
        "max_iter": 500,
        "tol": 1e-6,
        "inner_sweeps": 2,
        "extrapolate": True,
    }

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults + checks."""
        p = super().resolve_params(params)
        _check_pos("sparsity", p["sparsity"], allow_zero=True)
        if p["relative_sparsity"] is not None:
            _check_pos("relative_sparsity", p["relative_sparsity"], allow_zero=True)
        _check_int("max_iter", p["max_iter"], 1)
        _check_int("inner_sweeps", p["inner_sweeps"], 1)
        _check_pos("tol", p["tol"], allow_zero=True)
        return p

    def fit(self, z: Float[Tensor, "m d"], k: int, seed: int, params: dict[str, Any]) -> FitResult:
        """Dispatch to the plain (multiplicative) or sparse (coordinate descent) algorithm."""
        p = dict(params)
        if p["relative_sparsity"] is not None:
            p["sparsity"] = float(p["relative_sparsity"]) * float(z.norm(dim=1).median())
        gen = S.generator(seed, z.device)
        t0 = time.perf_counter()
        if p["sparsity"] > 0:
            u, v, hist, n_iter, conv = self._fit_sparse(z, k, gen, p)
        else:
            u, v, hist, n_iter, conv = self._fit_plain(z, k, gen, p)
        lam = float(p["sparsity"])
        # the exact code step for the final concepts: the fitted codes are what transform returns
        v = self._codes(u, z, lam, v0=v)
        b = z @ u.t()
        hist.append(S.objective(S.sqnorm(z), b, u @ u.t(), v, lam))
        diag = {
            "loss": hist,
            "objective": hist[-1],
            "n_iter": n_iter,
            "converged": conv,
            "reconstruction_error": _rel_error(z, v @ u),
            "code_density": float((v > 0).float().mean()),
            "seconds": time.perf_counter() - t0,
        }
        return FitResult(concepts=u, codes=v, params=_json_params(p), diagnostics=diag)

    @staticmethod
    def _codes(
        u: Float[Tensor, "k d"], z: Float[Tensor, "m d"], lam: float, v0: Tensor | None = None
    ) -> Float[Tensor, "m k"]:
        if v0 is None:
            return S.nonneg_lasso(z, u, lam)
        v, _ = S.nonneg_lasso_cd(z @ u.t(), u @ u.t(), v0, lam, max_sweeps=1000, tol=1e-6)
        return v

    def _init_codes(self, z: Float[Tensor, "m d"], k: int, gen: torch.Generator, init: Any) -> Float[Tensor, "m k"]:
        """Positive initial codes for the multiplicative algorithm."""
        m = z.shape[0]
        if isinstance(init, Tensor):
            v = _init_tensor("init", init, (m, k), z)
            if (v < 0).any():
                raise ConceptError("init codes must be non-negative", "pass V0 >= 0 (e.g. one-hot + 0.2)")
            return v
        if init in ("auto", "kmeans"):  # Ding et al.: cluster indicators + 0.2
            x = z - z.mean(dim=0)
            _, labels, *_ = S.lloyd(x, S.kmeans_plusplus(x, k, gen), 100, 1e-4)
            return torch.nn.functional.one_hot(labels, k).to(torch.float32) + 0.2
        if init == "random":
            return torch.rand(m, k, generator=gen, device=z.device) + 0.01
        raise ConceptError(f"unknown Semi-NMF init {init!r}", "use 'auto', 'kmeans', 'random' or a [M, K] tensor")

    def _fit_plain(
        self, z: Float[Tensor, "m d"], k: int, gen: torch.Generator, p: dict[str, Any]
    ) -> tuple[Tensor, Tensor, list[float], int, bool]:
        v = self._init_codes(z, k, gen, p["init"])
        zz = S.sqnorm(z)
        eye = torch.eye(k, device=z.device)
        hist: list[float] = []
        conv = False
        it = 0
        u = torch.zeros(k, z.shape[1], device=z.device)
        for it in range(1, p["max_iter"] + 1):
            a = v.t() @ v
            ridge = 1e-7 * float(a.diagonal().mean().clamp_min(1e-12))
            u = torch.linalg.solve(a + ridge * eye, v.t() @ z)  # exact least squares for U
            b = z @ u.t()
            g = u @ u.t()
            vg_pos = v @ g.clamp(min=0)
            vg_neg = v @ (-g).clamp(min=0)
            num = b.clamp(min=0) + vg_neg
            den = (-b).clamp(min=0) + vg_pos
            v = v * torch.sqrt(num / den.clamp_min(1e-20))
            hist.append(S.objective(zz, b, g, v, 0.0))
            if it > 1 and hist[-2] - hist[-1] <= p["tol"] * abs(hist[-2]):
                conv = True
                break
        norms = u.norm(dim=1).clamp_min(1e-12)
        return u / norms[:, None], v * norms[None, :], hist, it, conv

    def _init_atoms(self, z: Float[Tensor, "m d"], k: int, gen: torch.Generator, init: Any) -> Float[Tensor, "k d"]:
        """Unit-norm initial atoms for the sparse algorithm."""
        if isinstance(init, Tensor):
            return S.project_rows_unit_ball(_init_tensor("init", init, (k, z.shape[1]), z))
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
        raise ConceptError(
            f"unknown sparse Semi-NMF init {init!r}", "use 'auto', 'svd', 'kmeans', 'random' or a [K, D] tensor"
        )

    def _fit_sparse(
        self, z: Float[Tensor, "m d"], k: int, gen: torch.Generator, p: dict[str, Any]
    ) -> tuple[Tensor, Tensor, list[float], int, bool]:
        u0 = self._init_atoms(z, k, gen, p["init"])
        return S.sparse_semi_nmf(
            z,
            u0,
            float(p["sparsity"]),
            gen,
            max_iter=p["max_iter"],
            tol=p["tol"],
            inner_sweeps=p["inner_sweeps"],
            extrapolate=bool(p["extrapolate"]),
        )

    def transform(
        self,
        concepts: Float[Tensor, "k d"],
        z: Float[Tensor, "m d"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m k"]:
        """Non-negative (sparse, ``λ = sparsity``) least squares codes."""
        return S.nonneg_lasso(z, concepts, float(params.get("sparsity", 0.0)))

    def check_concepts(self, concepts: Float[Tensor, "k d"], params: dict[str, Any]) -> None:
        """``relative_sparsity`` needs data: refuse it for given concepts."""
        if params.get("relative_sparsity") is not None:
            raise ConceptError(
                "relative_sparsity needs the training data and cannot be used with given concepts",
                "pass the absolute sparsity=λ (e.g. the fitted dictionary's params['sparsity'])",
            )


class SparseSemiNMFMethod(SemiNMFMethod):
    """CoX-LMM's sparse Semi-NMF: `SemiNMFMethod` with ``sparsity = 1`` by default (the reference's λ)."""

    name = "sparse_semi_nmf"
    defaults: ClassVar[dict[str, Any]] = {**SemiNMFMethod.defaults, "sparsity": 1.0}


# --------------------------------------------------------------------------------------------- PCA


class PCAMethod(ConceptMethod):
    """PCA: concepts are the top-K principal directions (unit norm); activations ``(z - mean) Uᵀ``."""

    name = "pca"
    defaults: ClassVar[dict[str, Any]] = {"n_iter": 6}
    state_keys = ("mean",)

    def fit(self, z: Float[Tensor, "m d"], k: int, seed: int, params: dict[str, Any]) -> FitResult:
        """Centre, then (randomized when large) SVD."""
        if k > min(z.shape):
            raise ConceptError(
                f"PCA gives at most min(M, D) = {min(z.shape)} components, asked for k={k}",
                "lower k, or use another method",
            )
        mean = z.mean(dim=0)
        x = z - mean
        _, s, qt = S.randomized_svd(x, k, S.generator(seed, z.device), n_iter=_check_int("n_iter", params["n_iter"], 0))
        codes = x @ qt.t()
        var = s.double().pow(2) / max(z.shape[0] - 1, 1)
        total = S.sqnorm(x) / max(z.shape[0] - 1, 1)
        diag = {
            "explained_variance": var.tolist(),
            "explained_variance_ratio": (var / total).tolist() if total > 0 else [0.0] * k,
            "reconstruction_error": _rel_error(z, codes @ qt + mean),
            "loss": [],
        }
        return FitResult(concepts=qt, codes=codes, params=dict(params), diagnostics=diag, state={"mean": mean})

    def transform(
        self,
        concepts: Float[Tensor, "k d"],
        z: Float[Tensor, "m d"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m k"]:
        """Projection of the centred rows (the training mean; 0 for given concepts without ``mean``)."""
        mean = state.get("mean")
        return (z - mean if mean is not None else z) @ concepts.t()

    def reconstruct(
        self,
        concepts: Float[Tensor, "k d"],
        codes: Float[Tensor, "m k"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m d"]:
        """``V U + mean``."""
        mean = state.get("mean")
        out = codes @ concepts
        return out + mean if mean is not None else out


# --------------------------------------------------------------------------------------------- NMF


class NMFMethod(ConceptMethod):
    """NMF ``Z - offset ≈ V U`` with ``U, V >= 0`` (HALS coordinate descent).

    Needs non-negative inputs, or ``shift="min"``: ``offset_j = min(0, min_m z_mj)`` per feature, so
    that ``Z - offset >= 0``; `transform` subtracts the same offset. Rows of ``U`` have unit norm.
    """

    name = "nmf"
    defaults: ClassVar[dict[str, Any]] = {"shift": "none", "max_iter": 500, "tol": 1e-5}
    state_keys = ("offset",)

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults + checks."""
        p = super().resolve_params(params)
        if p["shift"] not in ("none", "min"):
            raise ConceptError(f"unknown NMF shift {p['shift']!r}", "use shift='none' or shift='min'")
        _check_int("max_iter", p["max_iter"], 1)
        _check_pos("tol", p["tol"], allow_zero=True)
        return p

    def fit(self, z: Float[Tensor, "m d"], k: int, seed: int, params: dict[str, Any]) -> FitResult:
        """Alternating HALS sweeps on ``V`` then ``U``; the last ``V`` is the exact NNLS solution."""
        offset = z.min(dim=0).values.clamp(max=0.0)
        if params["shift"] == "none":
            if (offset < 0).any():
                raise ConceptError(
                    f"NMF needs non-negative activations; the minimum is {float(z.min()):.4g}",
                    "pass shift='min' to subtract each feature's minimum first, or use semi_nmf",
                )
            offset = torch.zeros_like(offset)
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
        for it in range(1, params["max_iter"] + 1):
            v, _ = S.nonneg_lasso_cd(x @ u.t(), u @ u.t(), v, 0.0, max_sweeps=1)
            ut, _ = S.nonneg_lasso_cd(x.t() @ v, v.t() @ v, u.t(), 0.0, max_sweeps=1)
            u = ut.t().contiguous()
            hist.append(S.objective(xx, x @ u.t(), u @ u.t(), v, 0.0))
            if it > 1 and hist[-2] - hist[-1] <= params["tol"] * abs(hist[-2]):
                conv = True
                break
        norms = u.norm(dim=1).clamp_min(1e-12)
        u = u / norms[:, None]
        v = S.nonneg_lasso(x, u, 0.0)
        hist.append(S.objective(xx, x @ u.t(), u @ u.t(), v, 0.0))
        diag = {
            "loss": hist,
            "n_iter": it,
            "converged": conv,
            "reconstruction_error": _rel_error(z, v @ u + offset),
        }
        return FitResult(concepts=u, codes=v, params=dict(params), diagnostics=diag, state={"offset": offset})

    def transform(
        self,
        concepts: Float[Tensor, "k d"],
        z: Float[Tensor, "m d"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m k"]:
        """Non-negative least squares codes of ``z - offset``."""
        off = state.get("offset")
        return S.nonneg_lasso(z - off if off is not None else z, concepts, 0.0)

    def reconstruct(
        self,
        concepts: Float[Tensor, "k d"],
        codes: Float[Tensor, "m k"],
        params: dict[str, Any],
        state: dict[str, Tensor],
    ) -> Float[Tensor, "m d"]:
        """``V U + offset``."""
        off = state.get("offset")
        out = codes @ concepts
        return out + off if off is not None else out


# --------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, ConceptMethod] = {}


def register_method(method: ConceptMethod, name: str | None = None, overwrite: bool = False) -> ConceptMethod:
    """Make ``method`` available to `fit` under ``name`` (default ``method.name``)."""
    if not isinstance(method, ConceptMethod):
        raise ConceptError(
            f"register_method expects a ConceptMethod instance, got {type(method).__name__}",
            "subclass nnshift.concepts.ConceptMethod and pass an instance",
        )
    key = name or method.name
    if not key:
        raise ConceptError("a concept method needs a name", "set the class attribute `name` or pass name=")
    if key in _REGISTRY and not overwrite:
        raise ConceptError(f"a concept method named {key!r} is already registered", "pass overwrite=True to replace it")
    _REGISTRY[key] = method
    return method


def get_method(name: str) -> ConceptMethod:
    """The registered method called ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConceptError(
            f"unknown concept method {name!r}",
            f"use one of {available_methods()}, or register yours with nnshift.concepts.register_method",
        ) from None


def available_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


for _m in (KMeansMethod(), SemiNMFMethod(), SparseSemiNMFMethod(), PCAMethod(), NMFMethod()):
    register_method(_m)
