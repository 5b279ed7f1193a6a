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

from nnshift.errors import CorruptStoreError, EmptyInputError, NonFiniteError, PairingError, StoreError

__all__ = ["ActivationStore", "Activations", "as_matrix", "atomic_write_bytes", "load_activations", "pair"]

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


# ---------------------------------------------------------------------------------------------
# Sharded on-disk store: capture streams shards here; an interrupted capture resumes.
# ---------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class ActivationStore:
    """A folder of safetensors shards + ``manifest.json``, written atomically, resumable.

    ``key`` identifies what is captured (model, layers, selector, dtype, hidden size); reopening a
    folder with another key raises `StoreMismatchError`, so a resumed capture never mixes models.
    Each shard holds one tensor per layer (``layer_<l>``) and lists its ids, answers and metadata
    in the manifest, with the file's SHA-256.
    """

    MANIFEST = "manifest.json"

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        from nnshift.errors import StoreMismatchError

        self.path = Path(path)
        self.key = json.loads(json.dumps(key, default=str))
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / self.MANIFEST
        if manifest.exists():
            self.doc = self._read_manifest()
            if self.doc.get("key") != self.key:
                diff = {
                    k: (self.doc.get("key", {}).get(k), self.key.get(k))
                    for k in set(self.key) | set(self.doc.get("key", {}))
                    if self.doc.get("key", {}).get(k) != self.key.get(k)
                }
                raise StoreMismatchError(
                    f"{str(self.path)!r} holds a capture of another setting: {diff} (stored, requested)",
                    "use a new out= folder, or delete this one to start over",
                )
        else:
            self.doc = {"format_version": FORMAT_VERSION, "key": self.key, "shards": [], "skipped": [], "done": False}
            self._write_manifest()

    def _read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / self.MANIFEST).read_text())
        except (json.JSONDecodeError, OSError) as exc:
            raise CorruptStoreError(
                f"manifest of {str(self.path)!r} cannot be read: {exc}", "delete the folder and capture again"
            ) from exc

    def _write_manifest(self) -> None:
        atomic_write_bytes(self.path / self.MANIFEST, json.dumps(self.doc, default=str).encode())

    @property
    def done_ids(self) -> set[str]:
        """Sample ids already stored (as rows) or already known to have no selected position."""
        ids = {s for sh in self.doc["shards"] for s in sh["sample_ids"]}
        return ids | set(self.doc["skipped"])

    @property
    def done(self) -> bool:
        """Whether the capture finished."""
        return bool(self.doc.get("done"))

    def append(
        self,
        tensors: dict[str, Tensor],
        ids: list[str],
        sample_ids: list[str],
        answers: list[str],
        meta: list[dict[str, Any]],
        skipped: list[str],
    ) -> None:
        """Write one shard (atomically) and record it, with the newly skipped sample ids, in the manifest."""
        from safetensors.torch import save

        if ids:
            name = f"shard-{len(self.doc['shards']):05d}.safetensors"
            data = save({k: v.contiguous() for k, v in tensors.items()})
            atomic_write_bytes(self.path / name, data)
            self.doc["shards"].append(
                {
                    "file": name,
                    "n": len(ids),
                    "sha256": _sha256(data),
                    "ids": ids,
                    "sample_ids": sorted(set(sample_ids)),
                    "answers": answers,
                    "meta": meta,
                }
            )
        self.doc["skipped"] = [*self.doc["skipped"], *skipped]
        self._write_manifest()

    def finish(self) -> None:
        """Mark the capture complete."""
        self.doc["done"] = True
        self._write_manifest()

    def read(self) -> tuple[dict[str, Tensor], list[str], list[str], list[dict[str, Any]]]:
        """All rows: per-layer tensors, ids, answers, meta (checksums verified)."""
        parts: dict[str, list[Tensor]] = {}
        ids: list[str] = []
        answers: list[str] = []
        meta: list[dict[str, Any]] = []
        for sh in self.doc["shards"]:
            f = self.path / sh["file"]
            try:
                data = f.read_bytes()
            except OSError as exc:
                raise CorruptStoreError(f"shard {str(f)!r} is missing", "delete the folder and capture again") from exc
            if _sha256(data) != sh["sha256"]:
                raise CorruptStoreError(
                    f"shard {str(f)!r} fails its checksum",
                    "delete this shard's entry (or the folder) and run the capture again to re-create it",
                )
            from safetensors.torch import load

            for k, v in load(data).items():
                parts.setdefault(k, []).append(v)
            ids += sh["ids"]
            answers += sh["answers"]
            meta += sh["meta"]
        return {k: torch.cat(v) for k, v in parts.items()}, ids, answers, meta

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open an existing store (whatever its key)."""
        path = Path(path)
        if not (path / cls.MANIFEST).exists():
            raise CorruptStoreError(
                f"{str(path)!r} is not an activation store (no {cls.MANIFEST})",
                "pass the out= folder of ns.capture",
            )
        self = cls.__new__(cls)
        self.path = path
        self.doc = self._read_manifest()
        self.key = self.doc.get("key", {})
        return self

    def activations(self, layer: int | None = None) -> Activations:
        """The stored rows of one layer (the only one when ``layer`` is None) as `Activations`."""
        tensors, ids, answers, meta = self.read()
        layers = self.key.get("layers", [])
        if layer is None:
            if len(layers) != 1:
                raise StoreError(f"{str(self.path)!r} holds layers {layers}", "pass layer=")
            layer = layers[0]
        name = f"layer_{layer}"
        if name not in tensors:
            dim = int(self.key.get("hidden_size", 0))
            if ids or layer not in layers:
                raise StoreError(f"{str(self.path)!r} has no layer {layer} (it holds {layers})", "pass one of those")
            tensors[name] = torch.zeros(0, dim)
        info = {**self.key, "layer": layer}
        return Activations(tensors[name], ids, answers, meta, info=info, skipped=list(self.doc["skipped"]))


def load_activations(path: str | Path, layer: int | None = None) -> Activations:
    """Load `Activations` saved by `Activations.save` or streamed by ``ns.capture(out=...)``."""
    path = Path(path)
    if (path / ActivationStore.MANIFEST).exists():
        return ActivationStore.open(path).activations(layer)
    return Activations.load(path)
