"""The paper's shift metrics: shift vectors, shifted concepts, consistency, magnitude, matching, recovery, MAS overlap,
correlations, concept dynamics and the α sweep (formulas in docs/shift.md).

Shared measurements (cosines, assignment, most-activating samples, T-Overlap) come from `nnshift.metrics`.
Everything is computed in torch (float32 or wider) on the device of the inputs, without per-sample Python loops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.errors import ConceptError, EmptyInputError, HiddenSizeMismatchError, NonFiniteError
from nnshift.metrics import EPS, concept_matrix, cosine_matrix, cosine_rows, keyword_overlap, text_overlap, work_dtype
from nnshift.shift.checks import (
    ActsA,
    ActsB,
    Grounder,
    check_alpha,
    check_assignment,
    check_dictionaries,
    check_vectors,
    pair_matrices,
)

__all__ = [
    "AlphaSweep",
    "DynamicsThresholds",
    "ShiftStats",
    "alpha_sweep",
    "classify_dynamics",
    "consistency",
    "correlation",
    "magnitude",
    "mas_overlap",
    "match_concepts",
    "mean_sample_shift",
    "recovery",
    "shift_stats",
    "shift_vectors",
    "shifted_concepts",
]


@dataclass
class ShiftStats:
    """Per-concept sums over ``A_k`` computed in one pass."""

    counts: Int[Tensor, " k"]
    vectors: Float[Tensor, "k d"]
    consistency: Float[Tensor, " k"]
    pairwise: Float[Tensor, " k"]
    mean_norm: Float[Tensor, " k"]


def shift_stats(delta: Float[Tensor, "m d"], assignment: Int[Tensor, " m"], k: int) -> ShiftStats:
    """Counts, mean shifts Δ_k, consistencies and mean ‖δ_m‖ per concept, vectorised with index_add / bincount."""
    d = delta.shape[1]
    counts = torch.bincount(assignment, minlength=k)
    c = counts.to(delta.dtype)
    sums = delta.new_zeros(k, d).index_add_(0, assignment, delta)
    vectors = sums / rearrange(c.clamp(min=1.0), "k -> k 1")  # an empty concept keeps a zero vector
    norms = delta.norm(dim=1)
    unit = delta / rearrange(norms.clamp(min=EPS), "m -> m 1")  # a zero δ_m stays a zero vector (cosine 0)
    unit_sums = delta.new_zeros(k, d).index_add_(0, assignment, unit)  # s_k = Σ_{m∈A_k} δ̂_m
    sq_sums = delta.new_zeros(k).index_add_(0, assignment, (unit * unit).sum(1))  # Σ ‖δ̂_m‖²
    norm_sums = delta.new_zeros(k).index_add_(0, assignment, norms)
    nan = torch.full_like(c, math.nan)
    # mean_m cos(δ_m, Δ_k) = Δ̂_k · s_k / |A_k|
    cons = torch.where(counts > 0, (F.normalize(vectors, dim=1, eps=EPS) * unit_sums).sum(1) / c, nan)
    # mean over pairs m < m' of cos(δ_m, δ_m') = (‖s_k‖² − Σ‖δ̂_m‖²) / (|A_k| (|A_k| − 1))
    pairwise = torch.where(counts > 1, ((unit_sums * unit_sums).sum(1) - sq_sums) / (c * (c - 1)).clamp(min=1.0), nan)
    mean_norm = torch.where(counts > 0, norm_sums / c.clamp(min=1.0), nan)
    return ShiftStats(counts, vectors, cons.clamp(-1, 1), pairwise.clamp(-1, 1), mean_norm)


def _stats(acts_a: ActsA, acts_b: ActsB, assignment: Tensor, k: int) -> ShiftStats:
    a, b, _ = pair_matrices(acts_a, acts_b)
    assignment = check_assignment(assignment.to(a.device), a.shape[0], k)
    return shift_stats(b - a, assignment, k)


def shift_vectors(
    acts_a: ActsA, acts_b: ActsB, assignment: Int[Tensor, " n"], k: int
) -> tuple[Float[Tensor, "k d"], Int[Tensor, " k"]]:
    """``Δ_k = mean_{m∈A_k} (b_m − a_m)`` and ``|A_k|``; an empty concept gets a zero vector."""
    s = _stats(acts_a, acts_b, assignment, k)
    return s.vectors, s.counts


def shifted_concepts(
    concepts: Float[Tensor, "k d"], vectors: Float[Tensor, "kv dv"], alpha: float | int = 1.0
) -> Float[Tensor, "k d"]:
    """``u^s_k = u^a_k + α Δ_k``."""
    alpha = check_alpha(alpha)
    u = concept_matrix(concepts, "concepts")
    check_vectors(vectors, u)
    return u + alpha * vectors.to(u)


def consistency(
    acts_a: ActsA, acts_b: ActsB, assignment: Int[Tensor, " n"], k: int, pairwise: bool = False
) -> Float[Tensor, " k"]:
    """Mean ``cos(δ_m, Δ_k)`` over ``A_k`` (NaN if empty); ``pairwise=True``: mean cosine between pairs of δ_m."""
    s = _stats(acts_a, acts_b, assignment, k)
    return s.pairwise if pairwise else s.consistency


def magnitude(vectors: Float[Tensor, "k d"]) -> Float[Tensor, " k"]:
    """``‖Δ_k‖``."""
    return vectors.to(work_dtype(vectors)).norm(dim=-1)


def mean_sample_shift(acts_a: ActsA, acts_b: ActsB, assignment: Int[Tensor, " n"], k: int) -> Float[Tensor, " k"]:
    """Mean ``‖δ_m‖`` over ``A_k`` (NaN if empty)."""
    return _stats(acts_a, acts_b, assignment, k).mean_norm


def match_concepts(
    concepts_a: Float[Tensor, "k da"],
    concepts_b: Float[Tensor, "l db"],
    method: str = "hungarian",
) -> Int[Tensor, " k"]:
    """Original → fine-tuned matching: bijective minimising ``Σ (1 − S_ij)`` (Hungarian) or greedy ``argmax_j S_ij``."""
    if method not in ("hungarian", "greedy"):
        raise ConceptError(f"unknown matching method {method!r}", "use 'hungarian' or 'greedy'")
    s = cosine_matrix(concepts_a, concepts_b)
    if method == "greedy":
        return s.argmax(dim=1)
    if s.shape[0] != s.shape[1]:
        raise ConceptError(
            f"a bijective matching needs as many concepts on both sides, got {s.shape[0]} and {s.shape[1]}",
            "fit both dictionaries with the same k, or use method='greedy'",
        )
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment((1.0 - s).double().cpu().numpy())
    out = torch.empty(s.shape[0], dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out.to(s.device)


def recovery(
    concepts: Float[Tensor, "k da"], concepts_b: Float[Tensor, "l db"], matching: Int[Tensor, " km"]
) -> Float[Tensor, " k"]:
    """``cos(u_k, u^b_{m(k)})`` for original (``u^a``) or shifted (``u^s``) concepts."""
    if concepts.shape[1] != concepts_b.shape[1]:
        raise HiddenSizeMismatchError(
            f"concepts of hidden size {concepts.shape[1]} and {concepts_b.shape[1]}",
            "use dictionaries fitted at the same layer of models with the same hidden size",
        )
    if matching.shape[0] != concepts.shape[0]:
        raise ConceptError(f"a matching of {matching.shape[0]} for {concepts.shape[0]} concepts", "use match_concepts")
    u = concepts.to(work_dtype(concepts))
    return cosine_rows(u, concepts_b.to(u)[matching.to(u.device).long()])


def mas_overlap(
    mas: Int[Tensor, "k n"], mas_ref: Int[Tensor, "l n"], matching: Int[Tensor, " k"]
) -> Float[Tensor, " k"]:
    """``100 · |MAS(k) ∩ MAS_ref(m(k))| / n`` per concept (sample row indices)."""
    ref = mas_ref.to(mas.device)[matching.to(mas.device).long()]
    hits = (mas[:, :, None] == ref[:, None, :]).any(dim=2).sum(dim=1)
    return 100.0 * hits.to(torch.float32) / mas.shape[1]


def correlation(x: Float[Tensor, " k"] | np.ndarray, y: Float[Tensor, " k"] | np.ndarray) -> dict[str, float]:
    """Pearson ``r`` and two-sided ``p`` over the finite pairs (NaN with fewer than 3 or a constant input)."""
    xa = np.asarray(torch.as_tensor(x).detach().cpu().double())
    ya = np.asarray(torch.as_tensor(y).detach().cpu().double())
    ok = np.isfinite(xa) & np.isfinite(ya)
    n = int(ok.sum())
    if n < 3 or np.ptp(xa[ok]) == 0 or np.ptp(ya[ok]) == 0:
        return {"r": math.nan, "p": math.nan, "n": n}
    from scipy.stats import pearsonr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pearsonr(xa[ok], ya[ok])
    return {"r": float(res[0]), "p": float(res[1]), "n": n}


# ----------------------------------------------------------------------------------------------------------------------
# concept dynamics


@dataclass(frozen=True)
class DynamicsThresholds:
    """Thresholds of the concept-dynamics rule (docs/shift.md): cosines in [-1, 1], T-Overlap in percent."""

    tau_refined: float = 0.8
    t_refined: float = 40.0
    tau_vanish: float = 0.5
    tau_new: float = 0.5

    def __post_init__(self) -> None:
        if self.tau_vanish > self.tau_refined:
            raise ConceptError(
                f"tau_vanish = {self.tau_vanish} > tau_refined = {self.tau_refined}",
                "a vanished concept must be farther than a refined one: choose tau_vanish <= tau_refined",
            )


def classify_dynamics(
    similarity: Float[Tensor, "k l"],
    matching: Int[Tensor, " k"],
    counts: Int[Tensor, " k"],
    t_overlap: Float[Tensor, " k"] | None = None,
    thresholds: DynamicsThresholds | None = None,
) -> tuple[list[str], Int[Tensor, " n_new"]]:
    """Label each original concept refined / changed / vanished; return them and the fine-tuned concepts that are new.

    vanished: ``|A_k| = 0`` or ``max_j S_kj < tau_vanish``; refined: ``S_{k,m(k)} >= tau_refined`` and (when
    groundings exist) ``T-Overlap(u^a_k, u^b_{m(k)}) >= t_refined`` (NaN fails); changed: otherwise.
    new: fine-tuned ``j`` that is no original concept's greedy nearest and with ``max_i S_ij < tau_new``.
    """
    th = thresholds or DynamicsThresholds()
    s = similarity.detach().cpu().double()
    match = matching.detach().cpu().long()
    k = s.shape[0]
    matched = s[torch.arange(k), match]
    nearest = s.max(dim=1).values
    refined = matched >= th.tau_refined
    if t_overlap is not None:
        t = t_overlap.detach().cpu().double()
        refined &= torch.nan_to_num(t, nan=-math.inf) >= th.t_refined
    vanished = (counts.detach().cpu() == 0) | (nearest < th.tau_vanish)
    labels = [
        "vanished" if v else "refined" if r else "changed"
        for v, r in zip(vanished.tolist(), refined.tolist(), strict=True)
    ]
    is_nearest = torch.zeros(s.shape[1], dtype=torch.bool)
    is_nearest[s.argmax(dim=1)] = True
    new = torch.nonzero(~is_nearest & (s.max(dim=0).values < th.tau_new)).flatten()
    return labels, new


# ----------------------------------------------------------------------------------------------------------------------
# α sweep


@dataclass
class AlphaSweep:
    """Recovery of the fine-tuned concepts by ``u^a + α Δ`` as a function of α (α = 0 is the original model)."""

    alphas: Float[Tensor, " a"]
    recovery: Float[Tensor, "a k"]
    t_overlap: Float[Tensor, "a k"] | None = None
    keyword_overlap: Float[Tensor, "a k"] | None = None
    keywords: list[str] = field(default_factory=list)

    @property
    def mean_recovery(self) -> Float[Tensor, " a"]:
        """Mean cosine recovery over concepts, per α."""
        return self.recovery.nanmean(dim=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (lists), e.g. for a DataFrame or JSON."""
        out: dict[str, Any] = {
            "alphas": self.alphas.tolist(),
            "recovery": self.recovery.tolist(),
            "keywords": self.keywords,
        }
        out["mean_recovery"] = self.mean_recovery.tolist()
        for name in ("t_overlap", "keyword_overlap"):
            t = getattr(self, name)
            out[name] = None if t is None else t.tolist()
        return out


def _check_alphas(alphas: Sequence[float | int] | Tensor) -> Float[Tensor, " a"]:
    """The α values as a float64 vector: non-empty and finite."""
    al = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    if al.numel() == 0:
        raise EmptyInputError("no alpha given", "pass e.g. alphas=[0, 0.5, 1, 1.5, 2]")
    if not torch.isfinite(al).all():
        raise NonFiniteError("alphas contain NaN or Inf", "pass finite scales")
    return al


def _sweep_words(
    ground: Grounder,
    shifted: Float[Tensor, "a k d"],
    u_b: Float[Tensor, "kb d"],
    match: Int[Tensor, " km"],
    keywords: Sequence[str] | None,
) -> tuple[Float[Tensor, "a k"], Float[Tensor, "a k"] | None]:
    """T-Overlap with the matched fine-tuned concept (and with ``keywords``) per α; one grounding call for all α."""
    n_alpha, k = shifted.shape[0], shifted.shape[1]
    words = ground(rearrange(shifted, "a k d -> (a k) d"))
    words_b = ground(u_b)
    per_alpha = [words[i * k : (i + 1) * k] for i in range(n_alpha)]
    t_ov = torch.stack([text_overlap(w, words_b, match.cpu()) for w in per_alpha])
    kw_ov = torch.stack([keyword_overlap(w, keywords) for w in per_alpha]) if keywords else None
    return t_ov, kw_ov


def alpha_sweep(
    concepts_a: Float[Tensor, "k d"],
    vectors: Float[Tensor, "kv dv"],
    concepts_b: Float[Tensor, "kb db"],
    matching: Int[Tensor, " km"],
    alphas: Sequence[float | int] | Tensor,
    *,
    ground: Grounder | None = None,
    keywords: Sequence[str] | None = None,
) -> AlphaSweep:
    """Cosine recovery (and T-Overlap with the match / with ``keywords`` when ``ground`` is given) for each α."""
    al = _check_alphas(alphas)
    u_a = concept_matrix(concepts_a, "concepts_a")
    u_b = concept_matrix(concepts_b, "concepts_b", device=u_a.device, dtype=u_a.dtype)
    check_dictionaries(u_a, u_b, u_a.shape[1], ("concepts_a", "concepts_b"))
    check_vectors(vectors, u_a)
    match = matching.to(u_a.device).long()
    al_d = al.to(device=u_a.device, dtype=u_a.dtype)
    shifted = rearrange(u_a, "k d -> 1 k d") + rearrange(al_d, "a -> a 1 1") * rearrange(
        vectors.to(u_a), "k d -> 1 k d"
    )
    rec = cosine_rows(shifted, rearrange(u_b[match], "k d -> 1 k d").expand_as(shifted))
    t_ov = kw_ov = None
    if ground is not None:
        t_ov, kw_ov = _sweep_words(ground, shifted, u_b, match, keywords)
    return AlphaSweep(
        alphas=al.float(),
        recovery=rec.float().cpu(),
        t_overlap=None if t_ov is None else t_ov.float(),
        keyword_overlap=None if kw_ov is None else kw_ov.float(),
        keywords=list(keywords or []),
    )
