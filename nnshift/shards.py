"""The capture store: a folder of safetensors shards + a checksummed manifest, one writer, resumable, repairable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nnshift.artifacts import atomic_write_bytes
from nnshift.errors import ArtifactError, CorruptStoreError

if TYPE_CHECKING:
    from nnshift.store import Activations

__all__ = ["STORE_FORMAT", "STORE_VERSION", "ActivationStore", "repair_store", "verify_store"]

# ---------------------------------------------------------------------------------------------
# Sharded on-disk store: capture streams shards here; an interrupted capture resumes.
# ---------------------------------------------------------------------------------------------


STORE_FORMAT = "nnshift.activation_store"
#: version of the capture store's manifest (1: no manifest checksum, shard names from the shard count)
STORE_VERSION = 2
_REPAIR = "run `nnshift store repair DIR` (nnshift.store.repair_store), then the same capture again to recapture them"
_SHARD_FIELDS = {"file": str, "n": int, "sha256": str, "ids": list, "sample_ids": list, "answers": list, "meta": list}


def _read_manifest(path: Path) -> dict[str, Any]:
    """The store manifest of ``path``, checked: JSON object, checksum, format and version, field types."""
    from nnshift.artifacts import check_format, read_json, unseal

    file = path / ActivationStore.MANIFEST
    hint = "the manifest is damaged: delete the folder and capture again"
    missing = CorruptStoreError(
        f"{str(path)!r} is not an activation store (no manifest.json)", "pass the out= folder of ns.capture"
    )
    raw = read_json(file, missing, f"manifest of {str(path)!r} cannot be read", hint)
    try:
        doc = unseal(raw, f"manifest {str(file)!r}")
    except ArtifactError as exc:
        raise ArtifactError(exc.message, hint) from exc
    check_format(doc, STORE_FORMAT, STORE_VERSION, f"manifest {str(file)!r}")
    top = {"key": dict, "shards": list, "skipped": list, "done": bool}
    bad = [k for k, t in top.items() if not isinstance(doc.get(k), t)]
    for n, sh in enumerate(doc.get("shards") or []):
        if not isinstance(sh, dict) or any(not isinstance(sh.get(k), t) for k, t in _SHARD_FIELDS.items()):
            bad.append(f"shards[{n}]")
        elif not re.fullmatch(r"shard-\d+\.safetensors", sh["file"]):  # never a path outside the folder
            bad.append(f"shards[{n}].file {sh['file']!r}")
    if bad:
        raise ArtifactError(f"manifest of {str(path)!r}: missing or malformed {', '.join(bad)}", hint)
    return doc


def _check_shard(
    path: Path, sh: dict[str, Any], layers: list[int], dim: int = 0
) -> tuple[dict[str, Tensor] | None, str | None]:
    """A shard's tensors, or None and the problem: missing, checksum, not safetensors, shapes, row counts, NaN."""
    from safetensors.torch import load

    from nnshift.artifacts import check_tensors, sha256_bytes, tensor_spec

    name = sh["file"]
    try:
        data = (path / name).read_bytes()
    except OSError:
        return None, f"shard {name} is missing"
    if sha256_bytes(data) != sh["sha256"]:
        return None, f"shard {name} fails its checksum"
    try:
        tensors = load(data)
    except Exception:  # safetensors raises its own error types
        return None, f"shard {name} is not a valid safetensors file"
    n = sh["n"]
    want = {f"layer_{x}" for x in layers}
    bad_shape = any(t.ndim != 2 or t.shape[0] != n or (dim and t.shape[1] != dim) for t in tensors.values())
    if set(tensors) != want or bad_shape:
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        return None, f"shard {name} holds {shapes}, not {n} rows of size {dim or '?'} for layers {layers}"
    if not len(sh["ids"]) == len(sh["answers"]) == len(sh["meta"]) == n:
        return None, f"shard {name}: the manifest lists a different number of ids, answers or meta than its {n} rows"
    try:  # format 1 shards list no tensor specs: only finiteness is checked for them
        check_tensors(tensors, sh.get("tensors", tensor_spec(tensors)), f"shard {name}")
    except ArtifactError as exc:
        return None, exc.message
    return tensors, None


def _dim(key: dict[str, Any]) -> int:
    """The hidden size recorded in a key (0 when unknown)."""
    d = key.get("hidden_size")
    return d if isinstance(d, int) and not isinstance(d, bool) else 0


class ActivationStore:
    """A folder of safetensors shards + ``manifest.json``, written atomically by one writer at a time, resumable.

    ``key`` identifies what is captured (model and weights, adapter, dtypes, processor, layers, selector,
    generation settings, dataset); reopening a folder with another key raises `StoreMismatchError` naming
    the fields, so a resumed capture never mixes settings. Each shard holds one tensor per layer
    (``layer_<l>``) and lists its ids, answers, metadata, tensor shapes and SHA-256 in the manifest; shard
    names come from a counter in the manifest and are never reused. The writer holds ``DIR/.lock``.
    """

    MANIFEST = "manifest.json"

    def __init__(self, path: str | Path, key: dict[str, Any], *, expected: int | None = None) -> None:
        import json

        from nnshift.artifacts import DirLock

        self.path = Path(path)
        self.key = json.loads(json.dumps(key, default=str))
        _refuse_foreign(self.path)
        lock = DirLock(self.path).acquire()
        self.lock: DirLock | None = lock
        try:
            if (self.path / self.MANIFEST).exists():
                self.doc = _read_manifest(self.path)
                _compare_keys(self.path, self.doc["key"], self.key)
                self.doc["format"], self.doc["format_version"] = STORE_FORMAT, STORE_VERSION
            else:
                self.doc = {"format": STORE_FORMAT, "format_version": STORE_VERSION, "key": self.key, "shards": []}
                self.doc.update(skipped=[], done=False, next_shard=0)
            if expected is not None:
                self.doc["expected"] = int(expected)
            self._write_manifest()
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        """Release the writer lock."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_manifest(self) -> None:
        import json

        from nnshift.artifacts import seal

        atomic_write_bytes(self.path / self.MANIFEST, json.dumps(seal(self.doc)).encode())

    @property
    def done_ids(self) -> set[str]:
        """Sample ids already stored (as rows) or already known to have no selected position."""
        ids = {s for sh in self.doc["shards"] for s in sh["sample_ids"]}
        return ids | set(self.doc["skipped"])

    @property
    def done(self) -> bool:
        """Whether the capture finished."""
        return bool(self.doc.get("done"))

    def _next_name(self) -> str:
        """A shard name never used in this folder: the manifest's counter, past any shard file on disk."""
        n = int(self.doc.get("next_shard", len(self.doc["shards"])))
        for f in self.path.glob("shard-*.safetensors"):
            stem = f.name[len("shard-") : -len(".safetensors")]
            if stem.isdigit():
                n = max(n, int(stem) + 1)
        for sh in self.doc["shards"]:
            stem = sh["file"][len("shard-") : -len(".safetensors")]
            if stem.isdigit():
                n = max(n, int(stem) + 1)
        self.doc["next_shard"] = n + 1
        return f"shard-{n:05d}.safetensors"

    def append(
        self,
        tensors: dict[str, Tensor],
        ids: list[str],
        sample_ids: list[str],
        answers: list[str],
        meta: list[dict[str, Any]],
        skipped: list[str],
    ) -> None:
        """Write one shard (atomically, under a new name) and record it and the newly skipped ids in the manifest."""
        from safetensors.torch import save

        from nnshift.artifacts import sha256_bytes, tensor_spec

        if ids:
            name = self._next_name()
            cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            data = save(cpu)
            atomic_write_bytes(self.path / name, data)
            entry = {"file": name, "n": len(ids), "sha256": sha256_bytes(data), "tensors": tensor_spec(cpu)}
            entry.update(ids=ids, sample_ids=sorted(set(sample_ids)), answers=answers, meta=meta)
            self.doc["shards"].append(entry)
        self.doc["skipped"] = [*self.doc["skipped"], *skipped]
        self._write_manifest()

    def finish(self) -> None:
        """Mark the capture complete."""
        self.doc["done"] = True
        self._write_manifest()

    def read(self) -> tuple[dict[str, Tensor], list[str], list[str], list[dict[str, Any]]]:
        """All rows: per-layer tensors, ids, answers, meta (checksums, shapes and finiteness verified)."""
        parts: dict[str, list[Tensor]] = {}
        ids: list[str] = []
        answers: list[str] = []
        meta: list[dict[str, Any]] = []
        for sh in self.doc["shards"]:
            tensors, problem = _check_shard(self.path, sh, list(self.key.get("layers", [])), _dim(self.key))
            if tensors is None:
                raise CorruptStoreError(f"{str(self.path)!r}: {problem} ({sh['n']} rows)", _REPAIR)
            for k, v in tensors.items():
                parts.setdefault(k, []).append(v)
            ids += sh["ids"]
            answers += sh["answers"]
            meta += sh["meta"]
        return {k: torch.cat(v) for k, v in parts.items()}, ids, answers, meta

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open an existing store for reading (whatever its key; no lock taken)."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.doc = _read_manifest(self.path)
        self.key = self.doc["key"]
        self.lock = None  # a reader holds no lock
        return self

    def counts(self) -> tuple[int, int | None]:
        """(samples done, samples expected): done counts kept and skipped samples; expected is None if unknown."""
        expected = self.doc.get("expected")
        return len(self.done_ids), expected if isinstance(expected, int) else None

    def activations(self, layer: int | None = None, *, allow_partial: bool = False) -> Activations:
        """The stored rows of one layer (the only one when ``layer`` is None); a partial store needs ``allow_partial``."""
        from nnshift.errors import StoreError

        if not self.done and not allow_partial:
            kept, expected = self.counts()
            raise StoreError(
                f"{str(self.path)!r} is a partial capture: {kept} of {expected if expected is not None else '?'} "
                "samples (kept / expected); it was interrupted or repaired",
                "run the same capture again to finish it, or pass allow_partial=True (--allow-partial)",
            )
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
        info = {**self.key, "layer": layer, "complete": self.done}
        from nnshift.store import Activations

        return Activations(tensors[name], ids, answers, meta, info=info, skipped=list(self.doc["skipped"]))


def _refuse_foreign(path: Path) -> None:
    """Refuse a capture folder that holds something other than a capture store."""
    from nnshift.errors import StoreError

    if not path.is_dir():
        if path.exists():
            raise StoreError(f"out={str(path)!r} is a file, not a folder", "pass a new or empty folder as out=")
        return
    if (path / ActivationStore.MANIFEST).exists():
        return
    visible = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if any(v.startswith("shard-") for v in visible):
        raise CorruptStoreError(
            f"{str(path)!r} holds shards but no manifest.json: the store's manifest was lost",
            "its rows cannot be identified any more: delete the folder and capture again",
        )
    if visible:
        what = (
            "an Activations.save folder" if "activations.json" in visible else f"other files ({', '.join(visible[:5])})"
        )
        raise StoreError(f"out={str(path)!r} holds {what}, not a capture store", "pass a new or empty folder as out=")


def _compare_keys(path: Path, stored: dict[str, Any], requested: dict[str, Any]) -> None:
    """Raise `StoreMismatchError` naming every field where the stored key differs from the requested one."""
    from nnshift.errors import StoreMismatchError

    fields = [k for k in [*requested, *(k for k in stored if k not in requested)] if stored.get(k) != requested.get(k)]
    if fields:

        def short(x: Any) -> str:
            r = repr(x)
            return r if len(r) <= 80 else r[:77] + "..."

        diff = "; ".join(f"{k}: stored {short(stored.get(k))}, requested {short(requested.get(k))}" for k in fields)
        raise StoreMismatchError(
            f"{str(path)!r} holds a capture of another setting; field{'s' if len(fields) > 1 else ''} "
            f"{', '.join(fields)} differ ({diff})",
            "use a new out= folder, or delete this one to start over",
        )


def verify_store(path: str | Path) -> list[str]:
    """Every problem found in the capture store at ``path`` (empty when it is sound); an unfinished store is sound."""
    path = Path(path)
    try:
        doc = _read_manifest(path)
    except CorruptStoreError as exc:
        return [exc.message]
    problems: list[str] = []
    layers = list(doc["key"].get("layers", []))
    seen_rows: set[str] = set()
    seen_samples: set[str] = set()
    for sh in doc["shards"]:
        problem = _check_shard(path, sh, layers, _dim(doc["key"]))[1]
        if problem:
            problems.append(problem)
        if seen_rows & set(sh["ids"]) or seen_samples & set(sh["sample_ids"]):
            problems.append(f"shard {sh['file']} repeats samples of an earlier shard")
        seen_rows |= set(sh["ids"])
        seen_samples |= set(sh["sample_ids"])
    if len(doc["skipped"]) != len(set(doc["skipped"])) or seen_samples & set(doc["skipped"]):
        problems.append("the skipped list repeats samples")
    expected = doc.get("expected")
    done = len(seen_samples | set(doc["skipped"]))
    if doc["done"] and isinstance(expected, int) and done != expected:
        problems.append(f"marked done but holds {done} of {expected} samples")
    return problems


def repair_store(path: str | Path) -> list[str]:
    """Drop the shards that are missing or fail their checks, keep the rest, mark not done; what was dropped."""
    from nnshift.artifacts import DirLock

    path = Path(path)
    _read_manifest(path)  # not a store, or a damaged manifest: refused before the lock (nothing is created)
    with DirLock(path):
        store = ActivationStore.open(path)
        doc = store.doc
        layers = list(doc["key"].get("layers", []))
        kept: list[dict[str, Any]] = []
        dropped: list[str] = []
        seen: set[str] = set()
        for sh in doc["shards"]:
            problem = _check_shard(path, sh, layers, _dim(doc["key"]))[1]
            if problem is None and seen & set(sh["sample_ids"]):
                problem = f"shard {sh['file']} repeats samples of an earlier shard"
            if problem is None:
                kept.append(sh)
                seen |= set(sh["sample_ids"])
                continue
            dropped.append(f"{problem}: dropped its {sh['n']} rows of {len(sh['sample_ids'])} samples")
            (path / sh["file"]).unlink(missing_ok=True)
        skipped = list(dict.fromkeys(x for x in doc["skipped"] if x not in seen))
        if len(skipped) != len(doc["skipped"]):
            dropped.append(f"{len(doc['skipped']) - len(skipped)} repeated entries of the skipped list")
        listed = {sh["file"] for sh in kept}
        for f in path.iterdir():
            leftover = f.name.endswith(".tmp") or (f.name.startswith("shard-") and f.name not in listed)
            if f.is_file() and leftover:
                f.unlink()
                dropped.append(f"removed the unlisted file {f.name}")
        if dropped:
            store.key = doc["key"]
            doc.update(shards=kept, skipped=skipped, done=False)
            doc["format"], doc["format_version"] = STORE_FORMAT, STORE_VERSION
            store._write_manifest()
        return dropped
