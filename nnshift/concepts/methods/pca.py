"""PCA: concepts are the top-K principal directions (unit norm). Formulas: docs/concepts.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from einops import einsum

from nnshift.concepts import _solvers as S
from nnshift.concepts.methods import base as B
from nnshift.concepts.methods.base import Codes, ConceptMethod, Concepts, FitResult, MethodConfig, Rows, State
from nnshift.errors import ConceptError

__all__ = ["PCAConfig", "PCAMethod"]


@dataclass(frozen=True)
class PCAConfig(MethodConfig):
    """PCA parameters: power iterations of the randomized SVD."""

    n_iter: int = 6

    def __post_init__(self) -> None:
        B.check_int("n_iter", self.n_iter, 0)


class PCAMethod(ConceptMethod[PCAConfig]):
    """PCA: concepts are the top-K principal directions (unit norm); activations ``(z - mean) Uᵀ``."""

    name = "pca"
    config_class = PCAConfig
    state_keys = ("mean",)
    origin = "mean"

    def fit(self, z: Rows, k: int, seed: int, params: PCAConfig | Mapping[str, Any]) -> FitResult:
        """Centre, then (randomized when large) SVD."""
        cfg = self.config(params)
        if k > min(z.shape):
            raise ConceptError(
                f"PCA gives at most min(M, D) = {min(z.shape)} components, asked for k={k}",
                "lower k, or use another method",
            )
        mean = z.mean(dim=0)
        x = z - mean
        _, s, qt = S.randomized_svd(x, k, S.generator(seed, z.device), n_iter=cfg.n_iter)
        codes = x @ qt.t()
        var = s.double().pow(2) / max(z.shape[0] - 1, 1)
        total = S.sqnorm(x) / max(z.shape[0] - 1, 1)
        diag = {
            "explained_variance": var.tolist(),
            "explained_variance_ratio": (var / total).tolist() if total > 0 else [0.0] * k,
            "reconstruction_error": B.rel_error(z, codes @ qt + mean),
            "loss": [],
        }
        return FitResult(concepts=qt, codes=codes, params=cfg.to_params(), diagnostics=diag, state={"mean": mean})

    def transform(self, concepts: Concepts, z: Rows, params: PCAConfig | Mapping[str, Any], state: State) -> Codes:
        """Projection of the centred rows ``(z - mean) Uᵀ`` (no mean for given concepts); `reconstruct` adds it back."""
        return einsum(self.centred(z, state), concepts, "m d, k d -> m k")
