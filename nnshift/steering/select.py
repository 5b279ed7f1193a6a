"""Choosing steering vectors: by measured impact on the answers, or by proximity of concepts to answers or words.

By impact (the paper's appendix): apply each candidate, count each answer's change relative to the unsteered
run (always relative: the reference code used absolute counts when ``keep_first_word`` was off), keep the top
``N = 5`` answers by change, split their changes in two clusters with 1-D k-means (k = 2, solved exactly), and
score the vector by ``min(primary) - max(secondary)``; the primary cluster (the one holding the largest change)
names the answers the vector steers to.

By proximity: rank concept pairs ``(i, j)`` by ``cos(u_i, source) + cos(u_j, target)``, where source and target
are representations (a ``[D]`` vector, or the mean of activations) or words (their unembedding direction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.answers import normalize_answer
from nnshift.arguments import renamed_keywords
from nnshift.data import Sample
from nnshift.errors import EmptyInputError, HiddenSizeMismatchError, SteeringError, TokenOfInterestError
from nnshift.models.protocol import VLMLike
from nnshift.options import Remote, RunOptions, run_options
from nnshift.positions import SelectorLike
from nnshift.steering.patches import Patch, PatchSet
from nnshift.steering.vectors import SteeringVector, _concepts_of, fine
from nnshift.store import Activations, as_matrix

__all__ = [
    "ImpactScore",
    "ProximityScore",
    "answer_changes",
    "by_impact",
    "by_proximity",
    "cluster_changes",
    "kmeans_1d",
    "rank_impact",
    "word_direction",
]

_IMPACT_DEFAULTS = RunOptions(max_new_tokens=5)

# ---------------------------------------------------------------------------- by impact


def answer_changes(baseline: Sequence[str], steered: Sequence[str], normalize: bool = True) -> dict[str, int]:
    """Per answer, its count in the steered run minus its count in the unsteered run, largest change first."""
    if len(baseline) != len(steered):
        raise SteeringError(
            f"{len(baseline)} unsteered answers for {len(steered)} steered ones", "answer the same samples twice"
        )
    f = normalize_answer if normalize else (lambda a: a.strip())
    before, after = Counter(f(a) for a in baseline), Counter(f(a) for a in steered)
    changes = {a: after.get(a, 0) - before.get(a, 0) for a in set(before) | set(after)}
    return dict(sorted(changes.items(), key=lambda kv: (-kv[1], kv[0])))


def kmeans_1d(values: Sequence[float] | Sequence[int]) -> list[int]:
    """Exact 2-means of 1-D values: label 1 for the cluster holding the maximum, 0 for the other.

    In one dimension the optimal clusters are contiguous in sorted order, so every split point is tried and
    the one with the least within-cluster sum of squares is kept (on a tie, the smaller primary cluster: the
    answers that stand out). All-equal values form one cluster (every label 1).
    """
    n = len(values)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: values[i])
    v = [float(values[i]) for i in order]
    if v[0] == v[-1]:
        return [1] * n
    best, cut = float("inf"), 1
    for t in range(1, n):
        left, right = v[:t], v[t:]
        ml, mr = sum(left) / len(left), sum(right) / len(right)
        sse = sum((x - ml) ** 2 for x in left) + sum((x - mr) ** 2 for x in right)
        if sse <= best + 1e-12:
            best, cut = sse, t
    labels = [0] * n
    for rank, i in enumerate(order):
        labels[i] = 1 if rank >= cut else 0
    return labels


def cluster_changes(
    changes: Mapping[str, float] | Mapping[str, int], top: int = 5
) -> tuple[float, list[str], list[str]]:
    """(score, primary answers, secondary answers) of the ``top`` answers by change; see the module docstring.

    The score is ``min(primary) - max(secondary)``, and 0 when there is no secondary cluster (no gap to measure).
    """
    if top < 1:
        raise SteeringError(f"top must be >= 1, got {top}", "use top=5 as in the paper")
    items = sorted(changes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if not items:
        return 0.0, [], []
    labels = kmeans_1d([c for _, c in items])
    primary = [a for (a, _), lab in zip(items, labels, strict=True) if lab == 1]
    secondary = [a for (a, _), lab in zip(items, labels, strict=True) if lab == 0]
    if not secondary:
        return 0.0, primary, secondary
    score = min(changes[a] for a in primary) - max(changes[a] for a in secondary)
    return float(score), primary, secondary


@dataclass
class ImpactScore:
    """One candidate's measured impact: its score, target answers (primary cluster) and the evidence."""

    key: Hashable
    score: float
    targets: list[str]
    secondary: list[str]
    changes: dict[str, int]
    patch: Patch | PatchSet = field(repr=False)
    answers: list[str] = field(default_factory=list, repr=False)
    #: the vector's pre-run diagnostics (`nnshift.steering.diagnostics`), when its maker recorded them
    diagnostics: dict[str, Any] | None = None

    @property
    def vector(self) -> SteeringVector | None:
        """The steering vector (for a single patch)."""
        return self.patch.vector if isinstance(self.patch, Patch) else None

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """A JSON-able dict (the ``top`` largest changes)."""
        key = list(self.key) if isinstance(self.key, tuple) else self.key
        return {
            "key": key,
            "score": self.score,
            "targets": self.targets,
            "secondary": self.secondary,
            "changes": dict(list(self.changes.items())[:top]),
            "patch": self.patch.spec(),
            "diagnostics": self.diagnostics,
        }


def by_impact(
    vlm: VLMLike,
    samples: Sequence[Sample],
    candidates: Mapping[Hashable, SteeringVector | Patch | PatchSet] | Sequence[SteeringVector | Patch | PatchSet],
    *,
    alpha: float = 1.0,
    positions: SelectorLike = "all",
    top: int = 5,
    max_targets: int | None = 1,
    keep: int | None = None,
    distinct: bool = True,
    baseline: Sequence[str] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    remote: Remote | None = None,
    options: RunOptions | None = None,
) -> list[ImpactScore]:
    """Rank candidate vectors by how much they steer the answers of ``samples`` towards a few answers.

    Vectors become ``vec.patch(alpha, positions)``; patches are used as they are. ``baseline``: the unsteered
    answers, if already computed. Candidates whose primary cluster has more than ``max_targets`` answers are
    dropped (None keeps all); the rest are sorted by score, and with ``distinct`` only the best vector per
    target set is kept; ``keep`` truncates the list. Run options: 5 new tokens, batches of 16, a progress bar,
    local by default; ``options=`` (a `RunOptions`) sets them at once and explicit keywords win over it.
    """
    from nnshift.generation import generate, steer
    from nnshift.models.protocol import check_vlm

    check_vlm(vlm, "by_impact()")
    opts = run_options(
        options,
        _IMPACT_DEFAULTS,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        remote=remote,
    )
    items = list(candidates.items()) if isinstance(candidates, Mapping) else list(enumerate(candidates))
    if not items:
        raise EmptyInputError("by_impact() got no candidate vectors", "pass e.g. ns.steering.fine_all(dictionary)")
    patches = {k: (v.patch(alpha, positions) if isinstance(v, SteeringVector) else v) for k, v in items}
    for p in patches.values():
        p.check(vlm.hidden_size, vlm.n_layers)
    if baseline is None:
        baseline = generate(vlm, samples, options=opts)
    scores: list[ImpactScore] = []
    for key, p in patches.items():
        steered = steer(vlm, samples, p, options=opts)
        changes = answer_changes(baseline, steered)
        score, primary, secondary = cluster_changes(changes, top)
        scores.append(ImpactScore(key, score, primary, secondary, changes, p, steered, _diagnostics_of(p)))
    return rank_impact(scores, max_targets=max_targets, keep=keep, distinct=distinct)


def _diagnostics_of(patch: Patch | PatchSet) -> dict[str, Any] | None:
    """The pre-run diagnostics recorded in a single patch's vector (None for a set or a vector without them)."""
    if not isinstance(patch, Patch):
        return None
    diag = patch.vector.info.get("diagnostics")
    return dict(diag) if isinstance(diag, dict) else None


def rank_impact(
    scores: Sequence[ImpactScore], *, max_targets: int | None = 1, keep: int | None = None, distinct: bool = True
) -> list[ImpactScore]:
    """Filter by the number of target answers, sort by score (best first), keep one per target set, truncate."""
    kept = [s for s in scores if max_targets is None or len(s.targets) <= max_targets]
    kept.sort(key=lambda s: -s.score)
    if distinct:
        seen: set[tuple[str, ...]] = set()
        unique = []
        for s in kept:
            t = tuple(sorted(s.targets))
            if t not in seen:
                seen.add(t)
                unique.append(s)
        kept = unique
    return kept if keep is None else kept[:keep]


# ---------------------------------------------------------------------------- by proximity


def word_direction(vlm: Any, word: str) -> Float[Tensor, " d"]:
    """The unembedding row (``W_U[t]``, float32) of the first token of ``word`` as the model writes it in an answer."""
    tok = vlm.tokenizer
    ids: list[int] = []
    for text in (f" {word}", word):
        ids = [i for i in tok.encode(text, add_special_tokens=False) if tok.decode([i]).strip()]
        if ids:
            break
    if not word.strip() or not ids:
        raise TokenOfInterestError(f"cannot tokenise the word {word!r}", "pass a non-empty word of the vocabulary")
    weight = vlm.hf.get_output_embeddings().weight
    return weight[ids[0]].detach().float().cpu()


def _target_vector(x: Any, vlm: Any, dim: int, what: str) -> Float[Tensor, " d"]:
    if isinstance(x, str):
        if vlm is None:
            raise SteeringError(
                f"the {what} is a word ({x!r}) and no model was given",
                "pass vlm= so that the word is read through the unembedding, or pass a vector",
            )
        v = word_direction(vlm, x)
    elif isinstance(x, Activations) or (isinstance(x, Tensor) and x.ndim == 2):
        v = as_matrix(x, what).float().mean(0).cpu()
    elif isinstance(x, SteeringVector):
        v = x.vector.cpu()
    elif isinstance(x, Tensor) and x.ndim == 1:
        v = x.detach().float().cpu()
    else:
        raise SteeringError(
            f"unsupported {what} of type {type(x).__name__}", "pass a word, a [D] vector or activations"
        )
    if v.shape[0] != dim:
        raise HiddenSizeMismatchError(f"the {what} has size {v.shape[0]}, the concepts {dim}", "use the same model")
    return v


@dataclass
class ProximityScore:
    """A concept pair ranked by proximity: ``score = source_similarity + target_similarity`` (cosines)."""

    pair: tuple[int, int]
    score: float
    source_similarity: float
    target_similarity: float
    vector: SteeringVector = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "pair": list(self.pair),
            "score": self.score,
            "source_similarity": self.source_similarity,
            "target_similarity": self.target_similarity,
        }


@renamed_keywords(dico="dictionary")
def by_proximity(
    dictionary: Any,
    source: str | Tensor | Activations | SteeringVector,
    target: str | Tensor | Activations | SteeringVector,
    *,
    vlm: Any = None,
    keep: int | None = None,
    layer: int | None = None,
) -> list[ProximityScore]:
    """Rank the fine-grained vectors ``u_j - u_i`` of ``dictionary`` by ``cos(u_i, source) + cos(u_j, target)``.

    ``source`` / ``target``: a word (its unembedding direction; needs ``vlm``), a ``[D]`` representation, or
    activations (their mean), e.g. the states of samples answered with the source and the target answer.
    """
    concepts = _concepts_of(dictionary).float().cpu()
    k, dim = concepts.shape
    if k < 2:
        raise SteeringError("proximity ranking needs at least 2 concepts", "fit a dictionary with k >= 2")
    src = _target_vector(source, vlm, dim, "source")
    tgt = _target_vector(target, vlm, dim, "target")
    cos_s = torch.nn.functional.cosine_similarity(concepts, src.unsqueeze(0), dim=1)
    cos_t = torch.nn.functional.cosine_similarity(concepts, tgt.unsqueeze(0), dim=1)
    out = []
    for i in range(k):
        for j in range(k):
            if i != j:
                s_i, t_j = float(cos_s[i]), float(cos_t[j])
                out.append(ProximityScore((i, j), s_i + t_j, s_i, t_j, fine(dictionary, i, j, layer=layer)))
    out.sort(key=lambda p: (-p.score, p.pair))
    return out if keep is None else out[:keep]
