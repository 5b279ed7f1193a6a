"""One definition each of the measurements that concepts, shift and steering share.

* input checks: `matrix` (an ``[M, D]`` activation matrix), `concept_matrix` (the ``[K, D]`` concepts of a
  dictionary or a tensor), `check_top_n`;
* `cosine_matrix` and `cosine_rows` (a zero vector has cosine 0 with everything);
* samples and concepts: `concept_scores` (how strongly each sample expresses each concept), `assign` /
  `assign_samples` (the concept of each sample), `top_rows` / `most_activating` (the most activating samples);
* text groundings: `t_overlap` (T-Overlap of two word lists), `text_overlap` and `keyword_overlap` (one
  T-Overlap per concept) and `dictionary_overlap` (CoX-LMM's Overlap(U) of one dictionary).

**T-Overlap rule.** ``T-Overlap(A, B) = 100 · |A ∩ B| / |A|`` over the word *sets* ``A`` and ``B``; it is **0 when
A is empty** (an empty grounding shares no word), so `t_overlap` never returns NaN. The per-concept vectors
`text_overlap` / `keyword_overlap` apply that rule to every concept whose own grounding is non-empty; a concept
with an empty grounding gets the value ``empty`` (NaN by default: "not measured", so that means, correlations and
the dynamics rule skip it instead of counting a 0; pass ``empty=0.0`` for T-Overlap's own value).

This module sits just above `nnshift.store`: it imports no other nnshift module than `errors`, `store` and
`arguments`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.arguments import renamed_keywords
from nnshift.errors import ConceptError, EmptyInputError, HiddenSizeMismatchError, NnshiftError, NonFiniteError
from nnshift.store import Activations, as_matrix

__all__ = [
    "ConceptDictionaryLike",
    "ConceptShape",
    "assign",
    "assign_samples",
    "check_top_n",
    "concept_matrix",
    "concept_scores",
    "cosine_matrix",
    "cosine_rows",
    "dictionary_overlap",
    "keyword_overlap",
    "matrix",
    "most_activating",
    "t_overlap",
    "text_overlap",
    "top_rows",
    "work_dtype",
]

EPS = 1e-12


@runtime_checkable
class ConceptDictionaryLike(Protocol):
    """What the measurements need from a concept dictionary (``nnshift.concepts.ConceptDictionary``)."""

    concepts: Tensor
    method: str

    @property
    def k(self) -> int:
        """Number of concepts K."""
        ...

    @property
    def dim(self) -> int:
        """Hidden size D."""
        ...

    def transform(self, acts: Tensor) -> Tensor:
        """Activations ``[M, K]`` of ``[M, D]`` rows on the concepts."""
        ...


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def work_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 when the input already is (never accumulate in half precision)."""
    return torch.promote_types(t.dtype, torch.float32)


def matrix(x: Any, name: str = "activations", *, promote: bool = True) -> Float[Tensor, "m d"]:
    """``x`` (`Activations` or tensor) as a checked ``[M, D]`` tensor: 2-D, non-empty, finite; float32 or wider.

    A tensor that is not 2-D raises `ConceptError`, an empty one `EmptyInputError`, NaN / Inf `NonFiniteError`.
    ``promote=False`` keeps the input's dtype.
    """
    t = x.tensor if isinstance(x, Activations) else x
    if not isinstance(t, Tensor) or t.ndim != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ConceptError(
            f"{name} must be an [M, D] tensor or Activations, got {shape}",
            "stack one vector per row (x[None] for a single vector)",
        )
    t = as_matrix(t, name)
    return t.to(work_dtype(t)) if promote else t


@renamed_keywords(dico="dictionary")
def concept_matrix(
    dictionary: Any,
    name: str = "dictionary",
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    error: type[NnshiftError] = ConceptError,
) -> Float[Tensor, "k d"]:
    """The ``[K, D]`` concepts of a dictionary (its ``.concepts``) or of a tensor: checked non-empty and finite.

    Returned in ``dtype`` (default: float32 or wider) on ``device`` (default: where they are). Anything that is not
    such a matrix raises ``error`` (`ConceptError` by default; steering passes `SteeringError`).
    """
    u = dictionary if isinstance(dictionary, Tensor) else getattr(dictionary, "concepts", None)
    if not isinstance(u, Tensor) or u.ndim != 2:
        raise error(
            f"{name} must be a concept dictionary (an object with a [K, D] .concepts tensor) or a [K, D] tensor, "
            f"got {type(dictionary).__name__}",
            "build it with ns.concepts.fit(acts, k=..., method=...) or ConceptDictionary.from_concepts(U)",
        )
    if u.shape[0] == 0:
        raise EmptyInputError(f"{name} has no concept (K = 0)", "fit the dictionary with k >= 1")
    if not torch.isfinite(u).all():
        raise NonFiniteError(f"{name} has NaN or Inf concepts", "refit the dictionary on finite activations")
    return u.to(device=device if device is not None else u.device, dtype=dtype or work_dtype(u))


def check_top_n(n: Any, m: int) -> int:
    """A number of top samples: a positive integer, capped at the ``m`` samples there are."""
    try:
        count = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ConceptError(f"n must be a positive integer, got {n!r}", "pass e.g. n=5 (most-activating samples)")
    return min(count, m)


# ----------------------------------------------------------------------------------------------------------------------
# cosines


def cosine_matrix(x: Float[Tensor, "k dx"], y: Float[Tensor, "l dy"]) -> Float[Tensor, "k l"]:
    """``S_ij = cos(x_i, y_j)`` on ``x``'s device, float32 or wider; a zero vector has cosine 0 with everything."""
    if x.shape[-1] != y.shape[-1]:
        raise HiddenSizeMismatchError(
            f"cannot compare concepts of hidden size {x.shape[-1]} with concepts of hidden size {y.shape[-1]}",
            "use dictionaries fitted at the same layer of models with the same hidden size",
        )
    dtype = torch.promote_types(work_dtype(x), work_dtype(y))
    xn = F.normalize(x.to(dtype), dim=-1, eps=EPS)
    yn = F.normalize(y.to(device=x.device, dtype=dtype), dim=-1, eps=EPS)
    return einsum(xn, yn, "k d, l d -> k l").clamp(-1.0, 1.0)


def cosine_rows(x: Float[Tensor, "*b d"], y: Float[Tensor, "*b d"]) -> Float[Tensor, "*b"]:
    """Row-wise cosine ``cos(x_k, y_k)`` in ``x``'s dtype (0 when either is the zero vector)."""
    xn = F.normalize(x, dim=-1, eps=EPS)
    yn = F.normalize(y.to(x), dim=-1, eps=EPS)
    return (xn * yn).sum(-1).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# samples and concepts


@renamed_keywords(dico="dictionary")
def concept_scores(
    dictionary: ConceptDictionaryLike, x: Float[Tensor, "m d"], name: str = "dictionary"
) -> Float[Tensor, "m k"]:
    """How strongly each row expresses each concept: ``dictionary.scores(x)`` if it exists, else ``|transform(x)|``.

    For sign-free methods this is ``|v|``; for k-means every activation variant is a similarity, so its argmax is
    the nearest centroid (``|v|`` would pick the farthest one for ``activation="neg_distance"``).
    """
    scores = getattr(dictionary, "scores", None)
    v = torch.as_tensor(scores(x) if callable(scores) else dictionary.transform(x).abs())
    if v.ndim != 2 or v.shape[0] != x.shape[0]:
        raise ConceptError(
            f"{name}.transform returned shape {tuple(v.shape)} for {x.shape[0]} samples",
            "transform must return an [M, K] activation matrix",
        )
    v = v.to(device=x.device, dtype=work_dtype(v) if v.is_floating_point() else torch.float32)
    if not torch.isfinite(v).all():
        raise NonFiniteError(f"{name}.transform returned NaN or Inf activations", "check the dictionary's concepts")
    return v


def assign(scores: Float[Tensor, "m k"]) -> Int[Tensor, " m"]:
    """The concept of each sample (``m ∈ A_k``): ``argmax_k`` of its scores (`concept_scores`)."""
    return scores.argmax(dim=1)


def top_rows(scores: Float[Tensor, "m k"], n: int) -> Int[Tensor, "k n"]:
    """Per concept (column), the rows of the ``n`` largest scores, best first (``n`` is capped at M)."""
    n = check_top_n(n, scores.shape[0])
    return rearrange(scores.topk(n, dim=0).indices, "n k -> k n").contiguous()


def _checked_scores(dictionary: ConceptDictionaryLike, x: Float[Tensor, "m d"]) -> Float[Tensor, "m k"]:
    """`concept_scores` of checked activations, after checking that the dictionary has their hidden size."""
    u = concept_matrix(dictionary, "dictionary", device=x.device)
    if u.shape[1] != x.shape[1]:
        raise HiddenSizeMismatchError(
            f"the dictionary has hidden size {u.shape[1]} but the activations have {x.shape[1]}",
            "fit each dictionary on activations captured at the same layer as the ones you analyse",
        )
    return concept_scores(dictionary, x, "dictionary")


@renamed_keywords(dico="dictionary")
def assign_samples(dictionary: ConceptDictionaryLike, acts: Activations | Float[Tensor, "m d"]) -> Int[Tensor, " m"]:
    """``A_k`` membership: ``argmax_k`` of `concept_scores` (``|v_k(x_m)|``; for k-means the nearest centroid)."""
    return assign(_checked_scores(dictionary, matrix(acts, "acts")))


@renamed_keywords(dico="dictionary")
def most_activating(
    dictionary: ConceptDictionaryLike, acts: Activations | Float[Tensor, "m d"], n: int
) -> Int[Tensor, "k n"]:
    """Row indices of the ``n`` samples with the largest score (``|v_k(x)|``, k-means: similarity) per concept."""
    x = matrix(acts, "acts")
    n = check_top_n(n, x.shape[0])
    return top_rows(_checked_scores(dictionary, x), n)


# ----------------------------------------------------------------------------------------------------------------------
# text groundings


def t_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """T-Overlap(a, b) = 100 · |A ∩ B| / |A| for the word sets A, B; 0 when A is empty (never NaN)."""
    sa, sb = set(a), set(b)
    if not sa:
        return 0.0
    return 100.0 * len(sa & sb) / len(sa)


def text_overlap(
    words: Sequence[Sequence[str]],
    words_ref: Sequence[Sequence[str]],
    matching: Int[Tensor, " k"] | None = None,
    *,
    empty: float = math.nan,
) -> Float[Tensor, " k"]:
    """``T-Overlap(T(u_k), T(u^b_{m(k)}))`` per concept (identity matching when None); ``empty`` if ``T(u_k) = ∅``."""
    idx = list(range(len(words))) if matching is None else [int(j) for j in matching.tolist()]
    if len(idx) != len(words):
        raise ConceptError(f"{len(words)} word lists for a matching of {len(idx)}", "pass one word list per concept")
    if idx and (min(idx) < 0 or max(idx) >= len(words_ref)):
        raise ConceptError(
            f"the matching points outside the {len(words_ref)} reference word lists",
            "pass one reference word list per fine-tuned concept",
        )
    values = [t_overlap(w, words_ref[j]) if len(w) else empty for w, j in zip(words, idx, strict=True)]
    return torch.tensor(values, dtype=torch.float32)


def keyword_overlap(
    words: Sequence[Sequence[str]], keywords: Sequence[str], *, empty: float = math.nan
) -> Float[Tensor, " k"]:
    """``T-Overlap(T(u_k), keywords)`` per concept, case-insensitive; ``empty`` (NaN) for an empty grounding."""
    kw = [w.strip().lower() for w in keywords]
    lowered = [[x.strip().lower() for x in w] for w in words]
    return text_overlap(lowered, [kw], torch.zeros(len(lowered), dtype=torch.long), empty=empty)


def dictionary_overlap(groundings: Sequence[Sequence[str]], percent: bool = False) -> float:
    """CoX-LMM's Overlap(U) = (1/K) Σ_k (1/(K−1)) Σ_{l≠k} |T_l ∩ T_k| / |T_k| (lower = more disentangled).

    The mean T-Overlap between the groundings of two different concepts of one dictionary, as a fraction
    (``percent=True``: in percent). An empty grounding contributes 0 (T-Overlap's rule).
    """
    k = len(groundings)
    if k < 2:
        raise ConceptError(f"overlap needs at least 2 concepts, got {k}", "pass the groundings of every concept")
    total = 0.0
    for i in range(k):
        total += sum(t_overlap(groundings[i], groundings[j]) for j in range(k) if j != i) / (k - 1)
    value = total / k
    return value if percent else value / 100.0


class ConceptShape:
    """Mixin for objects holding a ``concepts`` matrix ``[K, D]``: its ``k`` and ``dim``."""

    concepts: Float[Tensor, "k d"]

    @property
    def k(self) -> int:
        """Number of concepts K."""
        return int(self.concepts.shape[0])

    @property
    def dim(self) -> int:
        """Hidden size D."""
        return int(self.concepts.shape[1])
