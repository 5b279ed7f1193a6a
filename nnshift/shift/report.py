"""`ShiftReport`: everything `analyze` computes, its summary, α sweep, and save / load (safetensors + JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.errors import CorruptStoreError, DataFormatError
from nnshift.shift.checks import Grounder
from nnshift.shift.metrics import AlphaSweep, DynamicsThresholds, alpha_sweep
from nnshift.store import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "ShiftReport", "json_safe", "json_unsafe", "vlm_grounder"]

FORMAT_VERSION = 1

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


def vlm_grounder(vlm: Any, top: int) -> Grounder:
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
        vlm: Any = None,
        ground: Grounder | None = None,
        top_words: int = 15,
    ) -> AlphaSweep:
        """Recovery (and overlap with ``keywords``) of ``u^a + α Δ`` for each α, keeping this report's matching."""
        g = ground or (vlm_grounder(vlm, top_words) if vlm is not None else self._ground)
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
            "kind": _KIND,
            "alpha": self.alpha,
            "ids": self.ids,
            "dynamics": self.dynamics,
            "thresholds": asdict(self.thresholds),
            "correlations": json_safe(self.correlations),
            "info": self.info,
        } | {n: getattr(self, n) for n in _WORDS}
        atomic_write_bytes(path / "shift.safetensors", save(tensors))
        atomic_write_bytes(path / "shift.json", json.dumps(doc, default=str, allow_nan=False).encode())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ShiftReport:
        """Load what `save` wrote (tensors onto ``device``)."""
        doc, tensors = _read(Path(path), device)
        saved: dict[str, Any] = {n: tensors.get(n) for n in _TENSORS} | {n: doc.get(n) for n in _WORDS}
        return cls(
            alpha=float(doc["alpha"]),
            correlations=json_unsafe(doc["correlations"]),
            dynamics=list(doc["dynamics"]),
            thresholds=DynamicsThresholds(**doc["thresholds"]),
            ids=list(doc["ids"]),
            info=doc.get("info", {}),
            **saved,
        )


def _read(path: Path, device: str | torch.device) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON document and the tensors of a saved report, checked: kind, format version, every required tensor."""
    from safetensors.torch import load_file

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
    if doc.get("kind") != _KIND or not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataFormatError(
            f"{str(path)!r} holds format_version {version!r} of kind {doc.get('kind')!r}; "
            f"this nnshift reads {_KIND} up to version {FORMAT_VERSION}",
            "upgrade nnshift, or re-run ns.shift.analyze",
        )
    missing = [n for n in _TENSORS if n not in tensors and not n.startswith("t_overlap")]
    if missing:
        raise CorruptStoreError(f"the shift report in {str(path)!r} lacks tensors {missing}", "save it again")
    return doc, tensors
