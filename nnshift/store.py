"""Activations: an [M, D] tensor with its sample ids, answers, per-sample metadata and provenance."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nnshift.artifacts import atomic_write_bytes, write_artifact
from nnshift.errors import (
    ArgumentError,
    ArtifactError,
    EmptyInputError,
    NonFiniteError,
    PairingError,
    ProvenanceError,
)
from nnshift.shards import ActivationStore, repair_store, verify_store

__all__ = [
    "ActivationStore",
    "Activations",
    "as_matrix",
    "PAIR_FIELDS",
    "atomic_write_bytes",
    "check_same_provenance",
    "load_activations",
    "pair",
    "repair_store",
    "row_id",
    "same_model",
    "sample_id_of",
    "verify_store",
]

#: version of the `Activations.save` format (1: no checksums, still read)
FORMAT_VERSION = 2


def row_id(sample_id: str, part: str | int | None = None) -> str:
    """The id of a row: the sample id, or ``"<sample id>#<part>"`` for one of several rows of a sample."""
    return sample_id if part is None else f"{sample_id}#{part}"


def sample_id_of(row: str, sample_ids: Container[str] | None = None) -> str:
    """The id of the sample a row came from (inverse of `row_id`); a row id in ``sample_ids`` is its own sample."""
    if sample_ids is not None and row in sample_ids:
        return row
    head, sep, _ = row.rpartition("#")
    return head if sep else row


def prompt_rows(
    mask: Bool[Tensor, "b s"], attention_mask: Int[Tensor, "b s"], samples: Sequence[Any], reduce: str | None
) -> list[tuple[str, Any, dict[str, Any], slice]]:
    """(row id, sample, meta, slice of the flat selected states) per row of a prompt selection.

    The flat states are ``h[mask]`` (batch order, then position order). A sample with one selected position, or
    with ``reduce="mean"``, gives one row (its id); otherwise one row per position, ``row_id(id, position)`` with
    positions counted from the first non-padding token. Samples with no selected position give no row.
    """
    counts = mask.sum(dim=1).tolist()
    offsets = [0, *torch.tensor(counts).cumsum(0).tolist()]
    pad = (attention_mask.cpu() == 0).sum(dim=1).tolist()
    rows: list[tuple[str, Any, dict[str, Any], slice]] = []
    for b, sample in enumerate(samples):
        lo, hi = offsets[b], offsets[b + 1]
        if hi == lo:
            continue
        if reduce == "mean" or hi - lo == 1:
            rows.append((sample.id, sample, {**sample.meta, "n_positions": hi - lo}, slice(lo, hi)))
            continue
        positions = (mask[b].nonzero().flatten() - pad[b]).tolist()
        for j, p in enumerate(positions):
            rows.append((row_id(sample.id, p), sample, {**sample.meta, "position": p}, slice(lo + j, lo + j + 1)))
    return rows


@dataclass
class Activations:
    """Hidden states at selected positions: one row per kept sample.

    ``tensor`` is ``[M, D]``; ``ids[m]``, ``answers[m]`` and ``meta[m]`` describe row ``m``;
    ``info`` holds the provenance (model id, layer, selector, dtype, library versions);
    ``samples`` keeps the input samples when the activations were captured in this session;
    ``skipped`` lists the ids of samples for which the selector found no position.
    """

    tensor: Float[Tensor, "m d"]
    ids: list[str]
    answers: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[Any] | None = None
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tensor.ndim != 2:
            raise ValueError(f"Activations.tensor must be [M, D], got shape {tuple(self.tensor.shape)}")
        m = self.tensor.shape[0]
        if len(self.ids) != m:
            raise ValueError(f"{len(self.ids)} ids for {m} rows")
        if not self.answers:
            self.answers = [""] * m
        if not self.meta:
            self.meta = [{} for _ in range(m)]
        if len(self.answers) != m or len(self.meta) != m:
            raise ValueError("answers and meta must have one entry per row")

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return (
            f"Activations(M={len(self)}, D={self.dim}, layer={self.info.get('layer')}, "
            f"model={self.info.get('model')!r}, skipped={len(self.skipped)})"
        )

    @property
    def dim(self) -> int:
        """Hidden size D."""
        return self.tensor.shape[1]

    def select(self, index: Sequence[int] | Tensor) -> Activations:
        """The rows at ``index`` (positions, not ids), in that order."""
        idx = [int(i) for i in index]
        samples = None
        if self.samples is not None:
            by_id = {s.id: s for s in self.samples}
            samples = [by_id[sample_id_of(self.ids[i], by_id)] for i in idx]
        return Activations(
            tensor=self.tensor[idx],
            ids=[self.ids[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            meta=[self.meta[i] for i in idx],
            info=dict(self.info),
            samples=samples,
            skipped=list(self.skipped),
        )

    def save(self, path: str | Path) -> Path:
        """Save as ``path/activations.safetensors`` + ``path/activations.json`` (checksummed, atomic)."""
        doc = {"ids": self.ids, "answers": self.answers, "meta": self.meta, "info": self.info, "skipped": self.skipped}
        return write_artifact(path, "activations", FORMAT_VERSION, {"tensor": self.tensor}, doc)

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        """Load what `save` wrote (checksums, version, shapes and finiteness verified)."""
        path = Path(path)
        if not (path / "activations.json").exists():
            raise ArtifactError(
                f"no saved activations in {str(path)!r}: {path / 'activations.json'} is missing",
                "pass the folder that Activations.save or ns.capture(out=...) wrote",
            )
        tensors, doc = _read_activations(path)
        where = f"activations in {str(path)!r}"
        fields = {"ids": list, "answers": list, "meta": list, "info": dict, "skipped": list}
        for name, kind in fields.items():
            if not isinstance(doc.get(name, kind()), kind):
                raise ArtifactError(f"{where}: {name!r} is not a {kind.__name__}", "re-create the file")
        try:
            return cls(
                tensor=tensors["tensor"],
                ids=[str(i) for i in doc["ids"]],
                answers=doc.get("answers", []),
                meta=doc.get("meta", []),
                info=doc.get("info", {}),
                skipped=doc.get("skipped", []),
            )
        except (KeyError, TypeError, ValueError) as exc:  # TypeError: jaxtyping's check of a retyped field
            raise ArtifactError(f"{where} are inconsistent: {exc}", "re-create the file") from exc


def _read_activations(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and document of an `Activations.save` folder, current or legacy (format_version 1) format."""
    from nnshift.saved import check_finite, load_saved  # manifests need their self-checksum; legacy: finiteness

    tensors, doc, _ = load_saved(path, "activations", FORMAT_VERSION, "activations", "re-run the capture")
    for name, t in tensors.items():
        check_finite(t, name, f"activations in {str(path)!r}")
    return tensors, doc


def as_matrix(acts: Activations | Tensor, name: str = "activations") -> Float[Tensor, "m d"]:
    """The ``[M, D]`` tensor of an `Activations` or a plain tensor, checked: 2-D, non-empty, finite."""
    t = acts.tensor if isinstance(acts, Activations) else acts
    if not isinstance(t, Tensor) or t.ndim != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ArgumentError(
            f"{name} must be an [M, D] tensor or Activations, got {shape}", "pass ns.capture's result or a 2-D tensor"
        )
    if t.shape[0] == 0:
        raise EmptyInputError(f"{name} is empty (0 samples)", "check that the capture kept at least one sample")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise NonFiniteError(
            f"{name} contain NaN or Inf in {bad} of {t.shape[0]} rows",
            "drop those rows, or capture in float32 instead of float16",
        )
    return t


#: provenance fields that must agree between two activation sets compared or combined row by row
PAIR_FIELDS: tuple[str, ...] = ("layer", "selector", "reduce", "hidden_size")
_FIELD_NAMES = {
    "layer": "layers",
    "selector": "position selectors",
    "reduce": "reductions",
    "hidden_size": "hidden sizes",
}


def _info_of(x: Any) -> Mapping[str, Any]:
    """The provenance of ``x``: `Activations.info`, a mapping as is, nothing for a plain tensor."""
    if isinstance(x, Activations):
        return x.info if isinstance(x.info, Mapping) else {}
    return x if isinstance(x, Mapping) else {}


def _canon(value: Any) -> str:
    """A comparable form of a provenance value (tuples and lists, key order and JSON round trips agree)."""
    import json

    return json.dumps(value, sort_keys=True, default=str)


_MISSING = object()


def _differs(field_name: str, va: Any, vb: Any) -> bool:
    """Whether two known provenance values disagree (a negative layer is relative: not comparable to a positive).

    A field missing on one side is unknown; so is None, except for ``reduce`` (None: one row per position).
    """
    if va is _MISSING or vb is _MISSING or (field_name != "reduce" and (va is None or vb is None)):
        return False
    if field_name == "layer" and isinstance(va, int) and isinstance(vb, int) and (va < 0) != (vb < 0):
        return False
    return _canon(va) != _canon(vb)


def same_model(info_a: Mapping[str, Any], info_b: Mapping[str, Any]) -> bool:
    """Both captures come from one model: same weights fingerprint and same adapter (LoRA weights) fingerprint."""
    wa, wb = info_a.get("weights"), info_b.get("weights")
    if wa is None or wb is None or "lora_weights" not in info_a or "lora_weights" not in info_b:
        return False
    return wa == wb and info_a.get("lora_weights") == info_b.get("lora_weights")


def check_same_provenance(
    a: Any,
    b: Any,
    what: tuple[str, str] = ("acts_a", "acts_b"),
    *,
    fields: Sequence[str] = PAIR_FIELDS,
    same_model_ok: bool = True,
) -> None:
    """Refuse two activation sets whose provenance differs in ``fields``, or one model twice unless ``same_model_ok``.

    ``a`` / ``b``: `Activations`, provenance mappings, or plain tensors (no provenance: nothing is checked).
    A field missing on either side is not compared. Raises `ProvenanceError` naming both values.
    """
    from nnshift.arguments import check_flag

    check_flag(same_model_ok, "same_model_ok")
    info_a, info_b = _info_of(a), _info_of(b)
    for name in fields:
        va, vb = info_a.get(name, _MISSING), info_b.get(name, _MISSING)
        if _differs(name, va, vb):
            raise ProvenanceError(
                f"{what[0]} and {what[1]} come from different {_FIELD_NAMES.get(name, name)}: "
                f"{what[0]} has {name}={_canon(va)}, {what[1]} has {name}={_canon(vb)}",
                f"capture both sets with the same {name} (ns.capture(..., layer=..., at=...) with one setting)",
            )
    if not same_model_ok and same_model(info_a, info_b):
        raise ProvenanceError(
            f"{what[0]} and {what[1]} come from the same model (weights {str(info_a.get('weights'))[:12]}, "
            f"adapter {info_a.get('lora') or 'none'}): comparing a model with itself shows no shift",
            "capture acts_b with the fine-tuned model (e.g. ns.load(path, lora=ADAPTER)); "
            "pass same_model_ok=True if you compare a model with itself on purpose",
        )


def pair(acts_a: Activations, acts_b: Activations, *, same_model_ok: bool = False) -> tuple[Activations, Activations]:
    """Keep the samples present in both activation sets, in the order of ``acts_a``.

    Both sets must come from one layer and position selector (`check_same_provenance`) and, unless
    ``same_model_ok=True``, from two different models (weights or adapter).
    """
    for name, x in (("acts_a", acts_a), ("acts_b", acts_b)):
        if not isinstance(x, Activations):
            raise ArgumentError(
                f"ns.pair needs Activations, got {type(x).__name__} for {name}",
                "pass what ns.capture returned (plain tensors have no sample ids to pair)",
            )
    check_same_provenance(acts_a, acts_b, same_model_ok=same_model_ok)
    pos_b = {i: n for n, i in enumerate(acts_b.ids)}
    common = [(n, pos_b[i]) for n, i in enumerate(acts_a.ids) if i in pos_b]
    if not common:
        raise PairingError(
            "the two activation sets share no sample id",
            "capture both models on the same samples (e.g. ns.capture(ft, acts_a.samples, ...))",
        )
    return acts_a.select([a for a, _ in common]), acts_b.select([b for _, b in common])


def load_activations(path: str | Path, layer: int | None = None, *, allow_partial: bool = False) -> Activations:
    """Load `Activations` saved by `Activations.save` or streamed by ``ns.capture(out=...)`` (partial: refused)."""
    path = Path(path)
    if (path / ActivationStore.MANIFEST).exists():
        return ActivationStore.open(path).activations(layer, allow_partial=allow_partial)
    return Activations.load(path)
