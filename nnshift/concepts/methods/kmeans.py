"""K-means: concepts are centroids (k-means++ init, Lloyd iterations). Formulas: docs/concepts.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from nnshift.concepts import _solvers as S
from nnshift.concepts.methods import base as B
from nnshift.concepts.methods.base import Codes, ConceptMethod, Concepts, FitResult, MethodConfig, Rows, State
from nnshift.errors import ConceptError

__all__ = ["KMeansConfig", "KMeansMethod", "KMEANS_ACTIVATIONS"]

KMEANS_ACTIVATIONS: tuple[str, ...] = ("inverse_distance", "neg_distance", "cosine", "one_hot")


@dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    """K-means parameters: activation of new rows, init (``"k-means++"``, ``"random"`` or ``[K, D]``), runs, stopping."""

    activation: str = "inverse_distance"
    init: str | Tensor = "k-means++"
    n_init: int = 1
    max_iter: int = 300
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if self.activation not in KMEANS_ACTIVATIONS:
            raise ConceptError(
                f"unknown k-means activation {self.activation!r}", f"use one of {list(KMEANS_ACTIVATIONS)}"
            )
        B.check_init("k-means", self.init, ("k-means++", "random"), "[K, D]")
        B.check_int("n_init", self.n_init, 1)
        B.check_int("max_iter", self.max_iter, 1)
        B.check_number("tol", self.tol, allow_zero=True)


class KMeansMethod(ConceptMethod[KMeansConfig]):
    """K-means: concepts are centroids (k-means++ init, Lloyd iterations).

    Activations (``activation`` parameter): ``"inverse_distance"`` ``1/(1+‖z-u_k‖)`` (the paper's,
    default), ``"neg_distance"`` ``-‖z-u_k‖``, ``"cosine"`` ``cos(z, u_k)``, ``"one_hot"`` the nearest
    centroid's indicator. In every case the largest activation is the most similar centroid.
    """

    name = "kmeans"
    config_class = KMeansConfig
    activations: ClassVar[tuple[str, ...]] = KMEANS_ACTIVATIONS

    def _start(self, x: Float[Tensor, "m d"], k: int, gen: torch.Generator, init: Any, mean: Tensor) -> Tensor:
        """Initial (centred) centres of one run."""
        if isinstance(init, str) and init == "k-means++":
            return S.kmeans_plusplus(x, k, gen)
        if isinstance(init, str) and init == "random":
            return x[torch.randperm(x.shape[0], generator=gen, device=x.device)[:k]].clone()
        return B.init_tensor("init", init, (k, x.shape[1]), x) - mean

    def fit(self, z: Rows, k: int, seed: int, params: KMeansConfig | Mapping[str, Any]) -> FitResult:
        """Best of ``n_init`` seeded runs by inertia."""
        cfg = self.config(params)
        mean = z.mean(dim=0)
        x = z - mean  # centring improves float32 distances; centroids are shifted back
        best: tuple[float, Tensor, Tensor, list[float], int, bool] | None = None
        for run in range(cfg.n_init):
            c0 = self._start(x, k, S.generator(seed + run, z.device), cfg.init, mean)
            centers, labels, hist, n_iter, conv = S.lloyd(x, c0, cfg.max_iter, cfg.tol)
            inertia = S.sqnorm(x - centers[labels])
            if best is None or inertia < best[0]:
                best = (inertia, centers, labels, hist, n_iter, conv)
        assert best is not None
        inertia, centers, labels, hist, n_iter, conv = best
        concepts = centers + mean
        codes = self.transform(concepts, z, cfg, {})
        diag = {
            "loss": [*hist, inertia],
            "inertia": inertia,
            "n_iter": n_iter,
            "converged": conv,
            "reconstruction_error": B.rel_error(z, concepts[labels]),
            "cluster_sizes": torch.bincount(labels, minlength=k).tolist(),
        }
        return FitResult(concepts=concepts, codes=codes, params=cfg.to_params(), diagnostics=diag)

    def transform(self, concepts: Concepts, z: Rows, params: KMeansConfig | Mapping[str, Any], state: State) -> Codes:
        """Similarities to the centroids, as chosen by ``activation``."""
        act = self.config(params).activation
        if act == "cosine":
            zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
            un = concepts / concepts.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return einsum(zn, un, "m d, k d -> m k")
        mean = z.mean(dim=0)
        dist = S.sq_distances(z - mean, concepts - mean).sqrt_()
        if act == "inverse_distance":
            return 1.0 / (1.0 + dist)
        if act == "neg_distance":
            return -dist
        return torch.nn.functional.one_hot(dist.argmin(dim=1), concepts.shape[0]).to(torch.float32)

    def reconstruct(
        self, concepts: Concepts, codes: Codes, params: KMeansConfig | Mapping[str, Any], state: State
    ) -> Rows:
        """Each row replaced by its most similar centroid."""
        return concepts[codes.argmax(dim=1)]

    def scores(self, codes: Codes, params: KMeansConfig | Mapping[str, Any]) -> Codes:
        """The activations themselves: all k-means activations are similarities."""
        return codes
