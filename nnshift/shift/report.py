"""`ShiftReport`: everything `analyze` computes, its summary, α sweep, and save / load (safetensors + JSON)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.artifacts import write_artifact
from nnshift.errors import ArtifactError
from nnshift.models.protocol import LensLike
from nnshift.saved import check_finite, load_saved, typed_field
from nnshift.shift.checks import Grounder
from nnshift.shift.metrics import AlphaSweep, DynamicsThresholds, alpha_sweep

__all__ = ["FORMAT_VERSION", "ShiftReport", "json_safe", "json_unsafe", "vlm_grounder"]

#: 2: a checksummed artifact (nnshift.artifacts); 1: plain shift.json + shift.safetensors, still read
FORMAT_VERSION = 2

#: the tensor fields saved in ``shift.safetensors`` (the two T-Overlap ones are optional)
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
#: the word-list fields saved in ``shift.json``
_WORDS = ("words_original", "words_shifted", "words_finetuned")
_KIND = "nnshift.ShiftReport"
_DYNAMICS = ("refined", "changed", "vanished")


def json_safe(x: Any) -> Any:
    """NaN / Inf floats → None (strict JSON)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_unsafe(x: Any) -> Any:
    """None → NaN, inverse of `json_safe` for the correlation dicts."""
    if isinstance(x, dict):
        return {k: json_unsafe(v) for k, v in x.items()}
    return math.nan if x is None else x


def vlm_grounder(vlm: LensLike, top: int) -> Grounder:
    """Text grounding through a model's final norm and unembedding (nnshift.concepts.grounding.ground_text)."""
    from nnshift.concepts.grounding import ground_text

    def ground(u: Float[Tensor, "k d"]) -> list[list[str]]:
        """The ``top`` words of each concept."""
        return [list(w) for w in ground_text(u, vlm, top=top)]

    return ground


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
        labels = {d: self.dynamics.count(d) for d in _DYNAMICS}
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

    def per_concept(self) -> list[dict[str, Any]]:
        """One row per original concept: its match, both recovery cosines, consistency, magnitude and dynamics."""
        return [
            {
                "concept": c,
                "match": int(self.matching[c]),
                "cos original": float(self.recovery_original[c]),
                "cos shifted": float(self.recovery_shifted[c]),
                "consistency": float(self.consistency[c]),
                "magnitude": float(self.magnitude[c]),
                "dynamics": self.dynamics[c],
            }
            for c in range(self.k)
        ]

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean recoveries, share of concepts recovered, correlations, dynamics counts."""
        out: dict[str, Any] = {
            "k": self.k,
            "samples": len(self.ids),
            "alpha": self.alpha,
            "empty": self.empty.tolist(),
            "recovery_original": float(self.recovery_original.mean()),
            "recovery_shifted": float(self.recovery_shifted.mean()),
            "recovered_fraction": float((self.recovery_gain > 0).float().mean()),
            "mas_overlap_original": float(self.mas_overlap_original.mean()),
            "mas_overlap_shifted": float(self.mas_overlap_shifted.mean()),
            "consistency": float(self.consistency.nanmean()),
            "magnitude": float(self.magnitude.mean()),
            "correlations": self.correlations,
            "dynamics": {d: self.dynamics.count(d) for d in _DYNAMICS} | {"new": self.new.numel()},
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
        vlm: LensLike | None = None,
        ground: Grounder | None = None,
        top_words: int = 15,
    ) -> AlphaSweep:
        """Recovery (and overlap with ``keywords``) of ``u^a + α Δ`` for each α, keeping this report's matching."""
        g = ground or (vlm_grounder(vlm, top_words) if vlm is not None else self._ground)
        return alpha_sweep(
            self.concepts_a, self.shift_vectors, self.concepts_b, self.matching, alphas, ground=g, keywords=keywords
        )

    def save(self, path: str | Path) -> Path:
        """Save as ``path/shift.safetensors`` (tensors) + ``path/shift.json`` (checksummed manifest), atomically."""
        tensors = {n: getattr(self, n) for n in _TENSORS if getattr(self, n) is not None}
        doc = {
            "kind": _KIND,
            "alpha": self.alpha,
            "ids": self.ids,
            "dynamics": self.dynamics,
            "thresholds": asdict(self.thresholds),
            "correlations": json_safe(self.correlations),
            "info": self.info,
        } | {n: getattr(self, n) for n in _WORDS}
        return write_artifact(path, "shift", FORMAT_VERSION, tensors, doc)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ShiftReport:
        """Load what `save` wrote (tensors onto ``device``): checksums, version, shapes, matching, finiteness."""
        doc, tensors = _read(Path(path))
        where = f"the shift report in {str(path)!r}"
        th = typed_field(doc, "thresholds", dict, where)
        try:
            thresholds = DynamicsThresholds(**{n: typed_field(th, n, (int, float), where) for n in th})
        except TypeError as exc:
            raise ArtifactError(f"{where}: bad 'thresholds': {exc}", _REMAKE) from exc
        saved: dict[str, Any] = {n: tensors.get(n) for n in _TENSORS} | {n: doc.get(n) for n in _WORDS}
        report = cls(
            alpha=float(doc["alpha"]),
            correlations=json_unsafe(doc["correlations"]),
            dynamics=list(doc["dynamics"]),
            thresholds=thresholds,
            ids=[str(i) for i in doc["ids"]],
            info=typed_field(doc, "info", dict, where, {}),
            **saved,
        )
        if str(device) != "cpu":
            for n in _TENSORS:
                if getattr(report, n) is not None:
                    setattr(report, n, getattr(report, n).to(device))
        return report


_REMAKE = "the file is damaged or was edited by hand: re-run ns.shift.analyze and save the report again"
_INT: tuple[str, ...] = ("assignment", "counts", "empty", "matching", "greedy_matching", "mas_original", "mas_shifted")
_INT += ("mas_finetuned", "new")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON document and the tensors of a saved report, checked: version, fields, shapes, derived data."""
    tensors, doc, _ = load_saved(
        path, "shift", FORMAT_VERSION, "shift report", "pass the folder that ShiftReport.save wrote", finite=False
    )
    where = f"the shift report in {str(path)!r}"
    if doc.get("kind") != _KIND:
        raise ArtifactError(f"{where} is of kind {doc.get('kind')!r}, not {_KIND!r}", "pass a shift report folder")
    alpha = typed_field(doc, "alpha", (int, float), where)
    ids = typed_field(doc, "ids", list, where)
    dynamics = typed_field(doc, "dynamics", list, where)
    correlations = typed_field(doc, "correlations", dict, where)
    if not math.isfinite(alpha) or not all(isinstance(c, dict) for c in correlations.values()):
        raise ArtifactError(f"{where}: 'alpha' is not finite or 'correlations' is not a dict of dicts", _REMAKE)
    missing = [n for n in _TENSORS if n not in tensors and not n.startswith("t_overlap")]
    unknown = sorted(set(tensors) - set(_TENSORS))
    if missing or unknown:
        raise ArtifactError(f"{where} lacks tensors {missing} or holds unknown ones {unknown}", _REMAKE)
    _check_shapes(tensors, len(ids), where)
    k = tensors["concepts_a"].shape[0]
    if len(dynamics) != k or any(d not in _DYNAMICS for d in dynamics):
        raise ArtifactError(f"{where}: 'dynamics' must hold one of {_DYNAMICS} per concept (K = {k})", _REMAKE)
    for n in _WORDS:
        w = typed_field(doc, n, (list, type(None)), where, None)
        if w is not None and (len(w) != k or not all(isinstance(x, list) for x in w)):
            raise ArtifactError(f"{where}: {n!r} must hold one word list per concept (K = {k})", _REMAKE)
    _check_derived(tensors, len(ids), where)
    return doc, tensors


def _check_shapes(tensors: dict[str, Tensor], m: int, where: str) -> None:
    """Every tensor's shape against K, D (from ``concepts_a``), M (the ids) and n (the MAS size); dtypes by kind."""
    ua = tensors["concepts_a"]
    if ua.ndim != 2 or 0 in ua.shape:
        raise ArtifactError(f"{where}: 'concepts_a' has shape {tuple(ua.shape)}, not [K, D]", _REMAKE)
    (k, d), n = ua.shape, tensors["mas_original"].shape[-1]
    want: dict[str, tuple[int, ...]] = {x: (k,) for x in _TENSORS if x not in ("empty", "new")}
    want |= {"concepts_a": (k, d), "concepts_b": (k, d), "shift_vectors": (k, d), "shifted": (k, d)}
    want |= {"similarity": (k, k), "assignment": (m,), "mas_original": (k, n), "mas_shifted": (k, n)}
    want |= {"mas_finetuned": (k, n)}
    for name, t in tensors.items():
        shape = want.get(name, (t.shape[0],) if t.ndim == 1 else None)  # empty / new: any 1-D length
        if tuple(t.shape) != shape:
            raise ArtifactError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} (K={k}, D={d}, M={m})", _REMAKE
            )
        if t.is_floating_point() == (name in _INT):
            kind = "an integer" if name in _INT else "a floating"
            raise ArtifactError(f"{where}: tensor {name!r} is {t.dtype}, not {kind} type", _REMAKE)


def _check_derived(tensors: dict[str, Tensor], m: int, where: str) -> None:
    """Derived data: the matching a permutation, indices in range, counts and empty from the assignment, finite."""
    k = tensors["concepts_a"].shape[0]
    if not torch.equal(tensors["matching"].sort().values.cpu(), torch.arange(k)):
        raise ArtifactError(
            f"{where}: 'matching' {tensors['matching'].tolist()} is not a permutation of 0..{k - 1}", _REMAKE
        )
    bounds = {"assignment": k, "greedy_matching": k, "new": k, "mas_original": m, "mas_shifted": m, "mas_finetuned": m}
    for name, top in bounds.items():
        t = tensors[name]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= top):
            raise ArtifactError(f"{where}: tensor {name!r} holds indices outside 0..{top - 1}", _REMAKE)
    counts = torch.bincount(tensors["assignment"].long().cpu(), minlength=k)
    if not torch.equal(tensors["counts"].long().cpu(), counts) or not torch.equal(
        tensors["empty"].long().cpu(), torch.nonzero(counts == 0).flatten()
    ):
        raise ArtifactError(f"{where}: 'counts' or 'empty' do not follow from 'assignment'", _REMAKE)
    nan_ok = {"consistency": counts == 0, "mean_sample_shift": counts == 0, "pairwise_consistency": counts <= 1}
    for name, t in tensors.items():  # NaN only where it means "not measured"
        mask = nan_ok.get(name, name.startswith("t_overlap"))
        check_finite(t, name, where, mask.to(t.device) if isinstance(mask, Tensor) else mask)
