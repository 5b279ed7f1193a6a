"""Fine-tuning representation shift: concept shift vectors, shifted concepts, matching, recovery, dynamics.

Notation (see docs/shift.md): ``a_m`` / ``b_m`` are the original / fine-tuned model's representations of sample m,
``U^a`` / ``U^b`` their concept dictionaries (``[K, D]``), ``A_k`` the samples assigned to original concept k,
``δ_m = b_m − a_m``, ``Δ_k = mean_{m∈A_k} δ_m`` and ``u^s_k = u^a_k + α Δ_k``.

Everything is computed in torch (float32 or wider) on the device of ``acts_a``, without per-sample Python loops.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.errors import (
    ConceptError,
    CorruptStoreError,
    DataFormatError,
    EmptyInputError,
    HiddenSizeMismatchError,
    NonFiniteError,
    PairingError,
)
from nnshift.store import Activations, as_matrix, atomic_write_bytes

__all__ = [
    "AlphaSweep",
    "ConceptDictionaryLike",
    "DynamicsThresholds",
    "ShiftReport",
    "alpha_sweep",
    "analyze",
    "assign_samples",
    "classify_dynamics",
    "consistency",
    "correlation",
    "cosine_matrix",
    "keyword_overlap",
    "magnitude",
    "mas_overlap",
    "match_concepts",
    "mean_sample_shift",
    "most_activating",
    "recovery",
    "shift_vectors",
    "shifted_concepts",
    "text_overlap",
]

FORMAT_VERSION = 1
_EPS = 1e-12

ActsLike = Activations | Float[Tensor, "m d"]
# the two sides of a pair get their own axis names, so that a mismatch reaches our PairingError
ActsA = Activations | Float[Tensor, "ma da"]
ActsB = Activations | Float[Tensor, "mb db"]
Grounder = Callable[[Float[Tensor, "k d"]], list[list[str]]]
Dynamics = Literal["refined", "changed", "vanished"]


@runtime_checkable
class ConceptDictionaryLike(Protocol):
    """What the shift analysis needs from a concept dictionary (``nnshift.concepts.ConceptDictionary``)."""

    concepts: Tensor
    method: str

    @property
    def k(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def transform(self, acts: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------------------------------------------------
# validation helpers


def _work_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 when the input already is (never accumulate in half precision)."""
    return torch.promote_types(t.dtype, torch.float32)


def _pair_matrices(acts_a: ActsA, acts_b: ActsB) -> tuple[Float[Tensor, "m d"], Float[Tensor, "m d"], list[str]]:
    """Check that ``acts_a`` and ``acts_b`` are paired, finite, of one hidden size; return them on a's device."""
    a = as_matrix(acts_a, "acts_a (original model)")
    b = as_matrix(acts_b, "acts_b (fine-tuned model)")
    if a.shape[0] != b.shape[0]:
        raise PairingError(
            f"acts_a has {a.shape[0]} samples but acts_b has {b.shape[0]}: the shift needs the same samples in both",
            "pair them first with ns.pair(acts_a, acts_b), which keeps the common sample ids in one order",
        )
    if a.shape[1] != b.shape[1]:
        raise HiddenSizeMismatchError(
            f"acts_a has hidden size {a.shape[1]} but acts_b has {b.shape[1]}",
            "capture both models at the residual stream of language models with the same hidden size",
        )
    ids_a = acts_a.ids if isinstance(acts_a, Activations) else None
    ids_b = acts_b.ids if isinstance(acts_b, Activations) else None
    if ids_a is not None and ids_b is not None and list(ids_a) != list(ids_b):
        diff = next(m for m, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y)
        raise PairingError(
            f"acts_a and acts_b hold different samples or orders (row {diff}: {ids_a[diff]!r} vs {ids_b[diff]!r})",
            "pair them first with ns.pair(acts_a, acts_b), which keeps the common sample ids in one order",
        )
    ids = list(ids_a if ids_a is not None else ids_b if ids_b is not None else map(str, range(a.shape[0])))
    dtype = torch.promote_types(_work_dtype(a), _work_dtype(b))
    return a.to(dtype=dtype), b.to(device=a.device, dtype=dtype), ids


def _matrix(acts: ActsLike, name: str) -> Float[Tensor, "m d"]:
    """A checked activation matrix in float32 (or wider)."""
    t = as_matrix(acts, name)
    return t.to(_work_dtype(t))


def _concepts(
    dico: ConceptDictionaryLike | Tensor,
    name: str,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "k d"]:
    """The ``[K, D]`` concept matrix of a dictionary (or a plain tensor), checked finite and non-empty."""
    u = dico if isinstance(dico, Tensor) else getattr(dico, "concepts", None)
    if not isinstance(u, Tensor) or u.ndim != 2:
        raise ConceptError(
            f"{name} must be a ConceptDictionary (with a [K, D] .concepts tensor) or a [K, D] tensor, "
            f"got {type(dico).__name__}",
            "build it with ns.concepts.fit(acts, k=..., method=...) or ConceptDictionary.from_concepts(U)",
        )
    if u.shape[0] == 0:
        raise EmptyInputError(f"{name} has no concept (K = 0)", "fit the dictionary with k >= 1")
    if not torch.isfinite(u).all():
        raise NonFiniteError(f"{name} has NaN or Inf concepts", "refit the dictionary on finite activations")
    return u.to(device=device if device is not None else u.device, dtype=dtype or _work_dtype(u))


def _check_dictionaries(
    u_a: Float[Tensor, "ka da"], u_b: Float[Tensor, "kb db"], dim: int, what: tuple[str, str] = ("dico_a", "dico_b")
) -> None:
    """Same K in both dictionaries, and their hidden size equals the activations'."""
    if u_a.shape[0] != u_b.shape[0]:
        raise ConceptError(
            f"{what[0]} has K = {u_a.shape[0]} concepts but {what[1]} has K = {u_b.shape[0]}",
            "fit both dictionaries with the same k (the bijective matching needs as many concepts on each side)",
        )
    for name, u in zip(what, (u_a, u_b), strict=True):
        if u.shape[1] != dim:
            raise HiddenSizeMismatchError(
                f"{name} has hidden size {u.shape[1]} but the activations have {dim}",
                "fit each dictionary on activations captured at the same layer as the ones you analyse",
            )


def _check_assignment(assignment: Tensor, m: int, k: int) -> Int[Tensor, " m"]:
    """A valid ``[M]`` integer assignment in ``[0, k)``."""
    if assignment.ndim != 1 or assignment.shape[0] != m:
        raise PairingError(
            f"assignment has shape {tuple(assignment.shape)} but there are {m} samples",
            "compute it with ns.shift.assign_samples(dico_a, acts_a)",
        )
    if assignment.is_floating_point() or assignment.is_complex():
        raise ConceptError("assignment must hold integer concept indices", "use assign_samples(dico_a, acts_a)")
    if m and (int(assignment.min()) < 0 or int(assignment.max()) >= k):
        raise ConceptError(
            f"assignment holds concept indices outside [0, {k})", "pass k = the number of concepts of dico_a"
        )
    return assignment.long()


def _scores(dico: ConceptDictionaryLike, x: Float[Tensor, "m d"], name: str) -> Float[Tensor, "m k"]:
    """How strongly each row expresses each concept: ``dico.scores(x)`` when it exists, else ``|dico.transform(x)|``.

    For sign-free methods this is ``|v|``; for k-means every activation variant is a similarity, so its argmax is
    the nearest centroid (``|v|`` would pick the farthest one for ``activation="neg_distance"``).
    """
    scores = getattr(dico, "scores", None)
    v = torch.as_tensor(scores(x) if callable(scores) else dico.transform(x).abs())
    if v.ndim != 2 or v.shape[0] != x.shape[0]:
        raise ConceptError(
            f"{name}.transform returned shape {tuple(v.shape)} for {x.shape[0]} samples",
            "transform must return an [M, K] activation matrix",
        )
    v = v.to(device=x.device, dtype=_work_dtype(v) if v.is_floating_point() else torch.float32)
    if not torch.isfinite(v).all():
        raise NonFiniteError(f"{name}.transform returned NaN or Inf activations", "check the dictionary's concepts")
    return v


# ----------------------------------------------------------------------------------------------------------------------
# plain functions


def cosine_matrix(x: Float[Tensor, "k dx"], y: Float[Tensor, "l dy"]) -> Float[Tensor, "k l"]:
    """``S_ij = cos(x_i, y_j)``; a zero vector has cosine 0 with everything."""
    if x.shape[-1] != y.shape[-1]:
        raise HiddenSizeMismatchError(
            f"cannot compare concepts of hidden size {x.shape[-1]} with concepts of hidden size {y.shape[-1]}",
            "use dictionaries fitted at the same layer of models with the same hidden size",
        )
    dtype = torch.promote_types(_work_dtype(x), _work_dtype(y))
    xn = F.normalize(x.to(dtype), dim=-1, eps=_EPS)
    yn = F.normalize(y.to(device=x.device, dtype=dtype), dim=-1, eps=_EPS)
    return einsum(xn, yn, "k d, l d -> k l").clamp(-1.0, 1.0)


def _cos_rows(x: Float[Tensor, "*b d"], y: Float[Tensor, "*b d"]) -> Float[Tensor, "*b"]:
    """Row-wise cosine ``cos(x_k, y_k)`` (0 when either is the zero vector)."""
    xn = F.normalize(x, dim=-1, eps=_EPS)
    yn = F.normalize(y.to(x), dim=-1, eps=_EPS)
    return (xn * yn).sum(-1).clamp(-1.0, 1.0)


def assign_samples(dico: ConceptDictionaryLike, acts: ActsLike) -> Int[Tensor, " m"]:
    """``A_k`` membership: ``argmax_i |v_i(x_m)|`` with ``v = dico.transform`` (for k-means: the nearest centroid)."""
    x = _matrix(acts, "acts")
    u = _concepts(dico, "dico", device=x.device)
    _check_dictionaries(u, u, x.shape[1], ("dico", "dico"))
    return _scores(dico, x, "dico").argmax(dim=1)


@dataclass
class _Stats:
    """Per-concept sums over ``A_k`` computed in one pass."""

    counts: Int[Tensor, " k"]
    vectors: Float[Tensor, "k d"]
    consistency: Float[Tensor, " k"]
    pairwise: Float[Tensor, " k"]
    mean_norm: Float[Tensor, " k"]


def _shift_stats(delta: Float[Tensor, "m d"], assignment: Int[Tensor, " m"], k: int) -> _Stats:
    """Counts, mean shifts Δ_k, consistencies and mean ‖δ_m‖ per concept, vectorised with index_add / bincount."""
    d = delta.shape[1]
    counts = torch.bincount(assignment, minlength=k)
    c = counts.to(delta.dtype)
    sums = delta.new_zeros(k, d).index_add_(0, assignment, delta)
    vectors = sums / c.clamp(min=1.0)[:, None]  # an empty concept keeps a zero vector
    norms = delta.norm(dim=1)
    unit = delta / norms.clamp(min=_EPS)[:, None]  # a zero δ_m stays a zero vector (cosine 0)
    unit_sums = delta.new_zeros(k, d).index_add_(0, assignment, unit)  # s_k = Σ_{m∈A_k} δ̂_m
    sq_sums = delta.new_zeros(k).index_add_(0, assignment, (unit * unit).sum(1))  # Σ ‖δ̂_m‖²
    norm_sums = delta.new_zeros(k).index_add_(0, assignment, norms)
    nan = torch.full_like(c, math.nan)
    # mean_m cos(δ_m, Δ_k) = Δ̂_k · s_k / |A_k|
    consistency = torch.where(counts > 0, (F.normalize(vectors, dim=1, eps=_EPS) * unit_sums).sum(1) / c, nan)
    # mean over pairs m < m' of cos(δ_m, δ_m') = (‖s_k‖² − Σ‖δ̂_m‖²) / (|A_k| (|A_k| − 1))
    pairwise = torch.where(counts > 1, ((unit_sums * unit_sums).sum(1) - sq_sums) / (c * (c - 1)).clamp(min=1.0), nan)
    mean_norm = torch.where(counts > 0, norm_sums / c.clamp(min=1.0), nan)
    return _Stats(counts, vectors, consistency.clamp(-1, 1), pairwise.clamp(-1, 1), mean_norm)


def _stats(acts_a: ActsA, acts_b: ActsB, assignment: Tensor, k: int) -> _Stats:
    a, b, _ = _pair_matrices(acts_a, acts_b)
    assignment = _check_assignment(assignment.to(a.device), a.shape[0], k)
    return _shift_stats(b - a, assignment, k)


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
    if not math.isfinite(alpha):
        raise NonFiniteError(f"alpha = {alpha} is not finite", "pass a finite scale, e.g. alpha=1.0")
    u = _concepts(concepts, "concepts")
    if vectors.shape != u.shape:
        raise HiddenSizeMismatchError(
            f"shift vectors of shape {tuple(vectors.shape)} for concepts of shape {tuple(u.shape)}",
            "pass one [D] shift vector per concept (ns.shift.shift_vectors)",
        )
    return u + alpha * vectors.to(u)


def consistency(
    acts_a: ActsA, acts_b: ActsB, assignment: Int[Tensor, " n"], k: int, pairwise: bool = False
) -> Float[Tensor, " k"]:
    """Mean ``cos(δ_m, Δ_k)`` over ``A_k`` (NaN if empty); ``pairwise=True``: mean cosine between pairs of δ_m."""
    s = _stats(acts_a, acts_b, assignment, k)
    return s.pairwise if pairwise else s.consistency


def magnitude(vectors: Float[Tensor, "k d"]) -> Float[Tensor, " k"]:
    """``‖Δ_k‖``."""
    return vectors.to(_work_dtype(vectors)).norm(dim=-1)


def mean_sample_shift(acts_a: ActsA, acts_b: ActsB, assignment: Int[Tensor, " n"], k: int) -> Float[Tensor, " k"]:
    """Mean ``‖δ_m‖`` over ``A_k`` (NaN if empty)."""
    return _stats(acts_a, acts_b, assignment, k).mean_norm


def match_concepts(
    concepts_a: Float[Tensor, "k da"],
    concepts_b: Float[Tensor, "l db"],
    method: str = "hungarian",
) -> Int[Tensor, " k"]:
    """Original → fine-tuned matching: bijective minimising ``Σ (1 − S_ij)`` (Hungarian) or greedy ``argmax_j S_ij``."""
    s = cosine_matrix(concepts_a, concepts_b)
    if method == "greedy":
        return s.argmax(dim=1)
    if method != "hungarian":
        raise ConceptError(f"unknown matching method {method!r}", "use 'hungarian' or 'greedy'")
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
    u = concepts.to(_work_dtype(concepts))
    return _cos_rows(u, concepts_b.to(u)[matching.to(u.device).long()])


def most_activating(dico: ConceptDictionaryLike, acts: ActsLike, n: int) -> Int[Tensor, "k n"]:
    """Row indices of the ``n`` samples with the largest ``|v_k(x)|`` (k-means: similarity) per concept, best first."""
    x = _matrix(acts, "acts")
    n = _check_n(n, x.shape[0])
    return _top_rows(_scores(dico, x, "dico"), n)


def _top_rows(scores: Float[Tensor, "m k"], n: int) -> Int[Tensor, "k n"]:
    """Per column, the rows of the ``n`` largest scores, best first."""
    return rearrange(scores.topk(n, dim=0).indices, "n k -> k n")


def _check_n(n: int, m: int) -> int:
    if n < 1:
        raise EmptyInputError(f"n = {n} most-activating samples requested", "pass n >= 1")
    return min(int(n), m)


def mas_overlap(
    mas: Int[Tensor, "k n"], mas_ref: Int[Tensor, "l n"], matching: Int[Tensor, " k"]
) -> Float[Tensor, " k"]:
    """``100 · |MAS(k) ∩ MAS_ref(m(k))| / n`` per concept (sample row indices)."""
    ref = mas_ref.to(mas.device)[matching.to(mas.device).long()]
    hits = (mas[:, :, None] == ref[:, None, :]).any(dim=2).sum(dim=1)
    return 100.0 * hits.to(torch.float32) / mas.shape[1]


def _t_overlap(a: list[str], b: list[str]) -> float:
    """T-Overlap (nnshift.concepts.grounding.t_overlap, 100 · |A ∩ B| / |A|), but NaN when A is empty."""
    from nnshift.concepts.grounding import t_overlap

    return float(t_overlap(a, b)) if a else math.nan


def text_overlap(
    words: Sequence[Sequence[str]], words_ref: Sequence[Sequence[str]], matching: Int[Tensor, " k"] | None = None
) -> Float[Tensor, " k"]:
    """``T-Overlap(T(u_k), T(u^b_{m(k)}))`` per concept (identity matching when ``matching`` is None)."""
    idx = list(range(len(words))) if matching is None else [int(j) for j in matching.tolist()]
    if len(idx) != len(words):
        raise ConceptError(f"{len(words)} word lists for a matching of {len(idx)}", "pass one word list per concept")
    return torch.tensor([_t_overlap(list(w), list(words_ref[j])) for w, j in zip(words, idx, strict=True)])


def keyword_overlap(words: Sequence[Sequence[str]], keywords: Sequence[str]) -> Float[Tensor, " k"]:
    """``100 · |T(u_k) ∩ keywords| / |T(u_k)|`` per concept, case-insensitive (NaN for an empty grounding)."""
    kw = {w.strip().lower() for w in keywords}
    out = []
    for w in words:
        t = {x.strip().lower() for x in w}
        out.append(100.0 * len(t & kw) / len(t) if t else math.nan)
    return torch.tensor(out, dtype=torch.float32)


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
    groundings exist) ``T-Overlap(u^a_k, u^b_{m(k)}) >= t_refined``; changed: otherwise.
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
    al = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    if al.numel() == 0:
        raise EmptyInputError("no alpha given", "pass e.g. alphas=[0, 0.5, 1, 1.5, 2]")
    if not torch.isfinite(al).all():
        raise NonFiniteError("alphas contain NaN or Inf", "pass finite scales")
    u_a = _concepts(concepts_a, "concepts_a")
    u_b = _concepts(concepts_b, "concepts_b", device=u_a.device, dtype=u_a.dtype)
    _check_dictionaries(u_a, u_b, u_a.shape[1], ("concepts_a", "concepts_b"))
    if vectors.shape != u_a.shape:
        raise HiddenSizeMismatchError(
            f"shift vectors of shape {tuple(vectors.shape)} for concepts of shape {tuple(u_a.shape)}",
            "pass the report's shift_vectors (one [D] vector per original concept)",
        )
    vec = vectors.to(u_a)
    match = matching.to(u_a.device).long()
    al_d = al.to(device=u_a.device, dtype=u_a.dtype)
    shifted = u_a[None] + al_d[:, None, None] * vec[None]  # [A, K, D]
    target = u_b[match]
    rec = _cos_rows(shifted, target[None].expand_as(shifted))
    t_ov = kw_ov = None
    if ground is not None:
        k = u_a.shape[0]
        words = ground(rearrange(shifted, "a k d -> (a k) d"))
        words_b = ground(u_b)
        per_alpha = [words[i * k : (i + 1) * k] for i in range(al.numel())]
        t_ov = torch.stack([text_overlap(w, words_b, match.cpu()) for w in per_alpha])
        if keywords:
            kw_ov = torch.stack([keyword_overlap(w, keywords) for w in per_alpha])
    return AlphaSweep(
        alphas=al.float(),
        recovery=rec.float().cpu(),
        t_overlap=None if t_ov is None else t_ov.float(),
        keyword_overlap=None if kw_ov is None else kw_ov.float(),
        keywords=list(keywords or []),
    )


# ----------------------------------------------------------------------------------------------------------------------
# the report

_TENSORS = (
    "concepts_a",
    "concepts_b",
    "assignment",
    "counts",
    "empty",
    "shift_vectors",
    "shifted",
    "similarity",
    "matching",
    "greedy_matching",
    "recovery_original",
    "recovery_shifted",
    "consistency",
    "pairwise_consistency",
    "magnitude",
    "mean_sample_shift",
    "mas_original",
    "mas_shifted",
    "mas_finetuned",
    "mas_overlap_original",
    "mas_overlap_shifted",
    "t_overlap_original",
    "t_overlap_shifted",
    "new",
)
_WORDS = ("words_original", "words_shifted", "words_finetuned")


@dataclass
class ShiftReport:
    """Everything `analyze` computes; tensors live on the activations' device. See docs/shift.md for each formula."""

    alpha: float
    concepts_a: Float[Tensor, "k d"]
    concepts_b: Float[Tensor, "k d"]
    assignment: Int[Tensor, " m"]
    counts: Int[Tensor, " k"]
    empty: Int[Tensor, " e"]
    shift_vectors: Float[Tensor, "k d"]
    shifted: Float[Tensor, "k d"]
    similarity: Float[Tensor, "k k"]
    matching: Int[Tensor, " k"]
    greedy_matching: Int[Tensor, " k"]
    recovery_original: Float[Tensor, " k"]
    recovery_shifted: Float[Tensor, " k"]
    consistency: Float[Tensor, " k"]
    pairwise_consistency: Float[Tensor, " k"]
    magnitude: Float[Tensor, " k"]
    mean_sample_shift: Float[Tensor, " k"]
    mas_original: Int[Tensor, "k n"]
    mas_shifted: Int[Tensor, "k n"]
    mas_finetuned: Int[Tensor, "k n"]
    mas_overlap_original: Float[Tensor, " k"]
    mas_overlap_shifted: Float[Tensor, " k"]
    correlations: dict[str, dict[str, float]]
    dynamics: list[str]
    new: Int[Tensor, " n_new"]
    thresholds: DynamicsThresholds
    ids: list[str]
    t_overlap_original: Float[Tensor, " k"] | None = None
    t_overlap_shifted: Float[Tensor, " k"] | None = None
    words_original: list[list[str]] | None = None
    words_shifted: list[list[str]] | None = None
    words_finetuned: list[list[str]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _ground: Grounder | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        labels = {d: self.dynamics.count(d) for d in ("refined", "changed", "vanished")}
        return (
            f"ShiftReport(K={self.k}, M={len(self.ids)}, D={self.concepts_a.shape[1]}, alpha={self.alpha}, "
            f"recovery {float(self.recovery_original.mean()):.3f} -> {float(self.recovery_shifted.mean()):.3f}, "
            f"empty={self.empty.numel()}, dynamics={labels}, new={self.new.numel()})"
        )

    @property
    def k(self) -> int:
        """Number of concepts K."""
        return self.concepts_a.shape[0]

    @property
    def recovery_gain(self) -> Float[Tensor, " k"]:
        """``recovery_shifted − recovery_original`` (cosine)."""
        return self.recovery_shifted - self.recovery_original

    @property
    def t_overlap_gain(self) -> Float[Tensor, " k"] | None:
        """``t_overlap_shifted − t_overlap_original`` (None without groundings)."""
        if self.t_overlap_original is None or self.t_overlap_shifted is None:
            return None
        return self.t_overlap_shifted - self.t_overlap_original

    def mas_ids(self, which: Literal["original", "shifted", "finetuned"] = "original") -> list[list[str]]:
        """The most-activating samples as sample ids (``finetuned`` is indexed by fine-tuned concept)."""
        idx = {"original": self.mas_original, "shifted": self.mas_shifted, "finetuned": self.mas_finetuned}[which]
        return [[self.ids[i] for i in row] for row in idx.tolist()]

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean recoveries, share of concepts recovered, correlations, dynamics counts."""
        gain = self.recovery_gain
        out: dict[str, Any] = {
            "k": self.k,
            "samples": len(self.ids),
            "alpha": self.alpha,
            "empty": self.empty.tolist(),
            "recovery_original": float(self.recovery_original.mean()),
            "recovery_shifted": float(self.recovery_shifted.mean()),
            "recovered_fraction": float((gain > 0).float().mean()),
            "mas_overlap_original": float(self.mas_overlap_original.mean()),
            "mas_overlap_shifted": float(self.mas_overlap_shifted.mean()),
            "consistency": float(self.consistency.nanmean()),
            "magnitude": float(self.magnitude.mean()),
            "correlations": self.correlations,
            "dynamics": {d: self.dynamics.count(d) for d in ("refined", "changed", "vanished")}
            | {"new": self.new.numel()},
        }
        if self.t_overlap_original is not None and self.t_overlap_shifted is not None:
            out["t_overlap_original"] = float(self.t_overlap_original.nanmean())
            out["t_overlap_shifted"] = float(self.t_overlap_shifted.nanmean())
        return out

    def alpha_sweep(
        self,
        alphas: Sequence[float | int] | Tensor,
        keywords: Sequence[str] | None = None,
        *,
        vlm: Any = None,
        ground: Grounder | None = None,
        top_words: int = 15,
    ) -> AlphaSweep:
        """Recovery (and overlap with ``keywords``) of ``u^a + α Δ`` for each α, keeping this report's matching."""
        g = ground or (_vlm_grounder(vlm, top_words) if vlm is not None else self._ground)
        return alpha_sweep(
            self.concepts_a, self.shift_vectors, self.concepts_b, self.matching, alphas, ground=g, keywords=keywords
        )

    def save(self, path: str | Path) -> Path:
        """Save as ``path/shift.safetensors`` (tensors) + ``path/shift.json`` (the rest), atomically; no pickle."""
        from safetensors.torch import save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {n: getattr(self, n).detach().cpu().contiguous() for n in _TENSORS if getattr(self, n) is not None}
        doc = {
            "format_version": FORMAT_VERSION,
            "kind": "nnshift.ShiftReport",
            "alpha": self.alpha,
            "ids": self.ids,
            "dynamics": self.dynamics,
            "thresholds": asdict(self.thresholds),
            "correlations": _json_safe(self.correlations),
            "info": self.info,
        } | {n: getattr(self, n) for n in _WORDS}
        atomic_write_bytes(path / "shift.safetensors", save(tensors))
        atomic_write_bytes(path / "shift.json", json.dumps(doc, default=str, allow_nan=False).encode())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ShiftReport:
        """Load what `save` wrote (tensors onto ``device``)."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            doc = json.loads((path / "shift.json").read_text())
            tensors = load_file(str(path / "shift.safetensors"), device=str(device))
        except FileNotFoundError as exc:
            raise CorruptStoreError(
                f"no saved shift report in {str(path)!r}: {exc.filename} is missing",
                "pass the folder that ShiftReport.save wrote",
            ) from exc
        except Exception as exc:  # JSON, OS or safetensors errors
            raise CorruptStoreError(f"cannot read the shift report in {str(path)!r}: {exc}", "save it again") from exc
        version = doc.get("format_version")
        if doc.get("kind") != "nnshift.ShiftReport" or not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataFormatError(
                f"{str(path)!r} holds format_version {version!r} of kind {doc.get('kind')!r}; "
                f"this nnshift reads nnshift.ShiftReport up to version {FORMAT_VERSION}",
                "upgrade nnshift, or re-run ns.shift.analyze",
            )
        missing = [n for n in _TENSORS if n not in tensors and not n.startswith("t_overlap")]
        if missing:
            raise CorruptStoreError(f"the shift report in {str(path)!r} lacks tensors {missing}", "save it again")
        return cls(
            alpha=float(doc["alpha"]),
            correlations=_json_unsafe(doc["correlations"]),
            dynamics=list(doc["dynamics"]),
            thresholds=DynamicsThresholds(**doc["thresholds"]),
            ids=list(doc["ids"]),
            info=doc.get("info", {}),
            **{n: tensors.get(n) for n in _TENSORS},
            **{n: doc.get(n) for n in _WORDS},
        )


def _json_safe(x: Any) -> Any:
    """NaN / Inf floats → None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _json_unsafe(x: Any) -> Any:
    """None → NaN, inverse of `_json_safe` for the correlation dicts."""
    if isinstance(x, dict):
        return {k: _json_unsafe(v) for k, v in x.items()}
    return math.nan if x is None else x


def _vlm_grounder(vlm: Any, top: int) -> Grounder:
    """Text grounding through a model's final norm and unembedding (nnshift.concepts.grounding.ground_text)."""
    from nnshift.concepts.grounding import ground_text

    def ground(u: Float[Tensor, "k d"]) -> list[list[str]]:
        return [list(w) for w in ground_text(u, vlm, top=top)]

    return ground


def _shifted_dictionary(dico_a: ConceptDictionaryLike, shifted: Float[Tensor, "k d"]) -> ConceptDictionaryLike:
    """dico_a with its concepts replaced by the shifted ones: same method, parameters (e.g. sparsity) and state."""
    if dataclasses.is_dataclass(dico_a) and not isinstance(dico_a, type):
        names = {f.name for f in dataclasses.fields(dico_a)}
        if "concepts" in names:
            u = shifted.to(dtype=dico_a.concepts.dtype)
            return dataclasses.replace(dico_a, concepts=u, **({"codes": None} if "codes" in names else {}))
    make = getattr(type(dico_a), "from_concepts", None)
    if make is None:
        raise ConceptError(
            f"{type(dico_a).__name__} has no from_concepts: cannot build the shifted dictionary",
            "pass an nnshift.concepts.ConceptDictionary",
        )
    return make(shifted, method=dico_a.method)


def analyze(
    acts_a: ActsA,
    acts_b: ActsB,
    dico_a: ConceptDictionaryLike,
    dico_b: ConceptDictionaryLike,
    alpha: float | int = 1.0,
    *,
    vlm: Any = None,
    ground: Grounder | None = None,
    top_words: int = 15,
    n_mas: int = 5,
    thresholds: DynamicsThresholds | None = None,
) -> ShiftReport:
    """The shift analysis of an original (a) and a fine-tuned (b) model on paired samples; see docs/shift.md.

    ``vlm`` (or a ``ground`` callable mapping ``[K, D]`` concepts to word lists) enables the text-grounding
    comparisons (T-Overlap); ``n_mas`` is the number of most-activating samples per concept.
    """
    a, b, ids = _pair_matrices(acts_a, acts_b)
    dev, dtype = a.device, a.dtype
    u_a = _concepts(dico_a, "dico_a", dev, dtype)
    u_b = _concepts(dico_b, "dico_b", dev, dtype)
    _check_dictionaries(u_a, u_b, a.shape[1])
    k = u_a.shape[0]
    th = thresholds or DynamicsThresholds()
    if ground is None and vlm is not None:
        ground = _vlm_grounder(vlm, top_words)

    v_a = _scores(dico_a, a, "dico_a")
    if v_a.shape[1] != k:
        raise ConceptError(f"dico_a.transform returned {v_a.shape[1]} activations for K = {k}", "check dico_a")
    assignment = v_a.argmax(dim=1)
    st = _shift_stats(b - a, assignment, k)
    shifted = shifted_concepts(u_a, st.vectors, alpha)

    sim = cosine_matrix(u_a, u_b)
    matching = match_concepts(u_a, u_b, "hungarian")
    greedy = sim.argmax(dim=1)
    rec_o = recovery(u_a, u_b, matching)
    rec_s = recovery(shifted, u_b, matching)

    n = _check_n(n_mas, a.shape[0])
    mas_o = _top_rows(v_a, n)
    mas_b = _top_rows(_scores(dico_b, b, "dico_b"), n)
    mas_s = _top_rows(_scores(_shifted_dictionary(dico_a, shifted), b, "the shifted dictionary"), n)
    mas_ov_o = mas_overlap(mas_o, mas_b, matching)
    mas_ov_s = mas_overlap(mas_s, mas_b, matching)

    words_o = words_s = words_b = None
    t_o = t_s = None
    if ground is not None:
        words_o, words_s, words_b = ground(u_a), ground(shifted), ground(u_b)
        t_o = text_overlap(words_o, words_b, matching.cpu()).to(dev)
        t_s = text_overlap(words_s, words_b, matching.cpu()).to(dev)

    # correlations over the concepts that have samples (an empty concept has no shift to speak of)
    keep = st.counts > 0
    gain, cons, pair, mag = (t[keep] for t in (rec_s - rec_o, st.consistency, st.pairwise, st.vectors.norm(dim=1)))
    correlations = {
        "gain_vs_consistency": correlation(gain, cons),
        "gain_vs_pairwise_consistency": correlation(gain, pair),
        "gain_vs_magnitude": correlation(gain, mag),
        "consistency_vs_magnitude": correlation(cons, mag),
    }
    if t_o is not None and t_s is not None:
        t_gain = (t_s - t_o)[keep]
        correlations["t_gain_vs_consistency"] = correlation(t_gain, cons)
        correlations["t_gain_vs_magnitude"] = correlation(t_gain, mag)
    labels, new = classify_dynamics(sim, matching, st.counts, t_o, th)

    info = {
        "method_a": getattr(dico_a, "method", None),
        "method_b": getattr(dico_b, "method", None),
        "n_mas": n,
        "top_words": top_words if ground is not None else None,
        "model_a": acts_a.info if isinstance(acts_a, Activations) else {},
        "model_b": acts_b.info if isinstance(acts_b, Activations) else {},
    }
    return ShiftReport(
        alpha=float(alpha),
        concepts_a=u_a,
        concepts_b=u_b,
        assignment=assignment,
        counts=st.counts,
        empty=torch.nonzero(st.counts == 0).flatten(),
        shift_vectors=st.vectors,
        shifted=shifted,
        similarity=sim,
        matching=matching,
        greedy_matching=greedy,
        recovery_original=rec_o,
        recovery_shifted=rec_s,
        consistency=st.consistency,
        pairwise_consistency=st.pairwise,
        magnitude=st.vectors.norm(dim=1),
        mean_sample_shift=st.mean_norm,
        mas_original=mas_o,
        mas_shifted=mas_s,
        mas_finetuned=mas_b,
        mas_overlap_original=mas_ov_o,
        mas_overlap_shifted=mas_ov_s,
        correlations=correlations,
        dynamics=labels,
        new=new.to(dev),
        thresholds=th,
        ids=ids,
        t_overlap_original=t_o,
        t_overlap_shifted=t_s,
        words_original=words_o,
        words_shifted=words_s,
        words_finetuned=words_b,
        info=info,
        _ground=ground,
    )
