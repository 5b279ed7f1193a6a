"""Activations: an [M, D] tensor with its sample ids, answers, per-sample metadata and provenance."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from nnshift.errors import CorruptStoreError, EmptyInputError, NonFiniteError, PairingError

__all__ = ["Activations", "pair", "atomic_write_bytes", "as_matrix"]

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        by_id = {s.id: s for s in self.samples} if self.samples is not None else None
        return Activations(
            tensor=self.tensor[idx],
            ids=[self.ids[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            meta=[self.meta[i] for i in idx],
            info=dict(self.info),
            samples=[by_id[self.ids[i]] for i in idx] if by_id is not None else None,
        )

    def save(self, path: str | Path) -> Path:
        """Save as ``path/activations.safetensors`` + ``path/activations.json`` (atomic)."""
        from safetensors.torch import save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / "activations.safetensors", save({"tensor": self.tensor.contiguous()}))
        doc = {
            "format_version": FORMAT_VERSION,
            "ids": self.ids,
            "answers": self.answers,
            "meta": self.meta,
            "info": self.info,
            "skipped": self.skipped,
        }
        atomic_write_bytes(path / "activations.json", json.dumps(doc, default=str).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        """Load what `save` wrote."""
        path = Path(path)
        try:
            doc = json.loads((path / "activations.json").read_text())
            tensor = load_file(str(path / "activations.safetensors"))["tensor"]
        except FileNotFoundError as exc:
            raise CorruptStoreError(
                f"no saved activations in {str(path)!r}: {exc.filename} is missing",
                "pass the folder that Activations.save or ns.capture(out=...) wrote",
            ) from exc
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise CorruptStoreError(f"cannot read activations in {str(path)!r}: {exc}", "re-run the capture") from exc
        return cls(
            tensor=tensor,
            ids=doc["ids"],
            answers=doc["answers"],
            meta=doc["meta"],
            info=doc["info"],
            skipped=doc.get("skipped", []),
        )


def as_matrix(acts: Activations | Tensor, name: str = "activations") -> Float[Tensor, "m d"]:
    """The ``[M, D]`` tensor of an `Activations` or a plain tensor, checked: 2-D, non-empty, finite."""
    t = acts.tensor if isinstance(acts, Activations) else acts
    if not isinstance(t, Tensor) or t.ndim != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be an [M, D] tensor or Activations, got {shape}")
    if t.shape[0] == 0:
        raise EmptyInputError(f"{name} is empty (0 samples)", "check that the capture kept at least one sample")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise NonFiniteError(
            f"{name} contain NaN or Inf in {bad} of {t.shape[0]} rows",
            "drop those rows, or capture in float32 instead of float16",
        )
    return t


def pair(acts_a: Activations, acts_b: Activations) -> tuple[Activations, Activations]:
    """Keep the samples present in both activation sets, in the order of ``acts_a``."""
    pos_b = {i: n for n, i in enumerate(acts_b.ids)}
    common = [(n, pos_b[i]) for n, i in enumerate(acts_a.ids) if i in pos_b]
    if not common:
        raise PairingError(
            "the two activation sets share no sample id",
            "capture both models on the same samples (e.g. ns.capture(ft, acts_a.samples, ...))",
        )
    return acts_a.select([a for a, _ in common]), acts_b.select([b for _, b in common])
