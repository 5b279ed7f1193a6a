"""One input/output layer for saved artifacts: safetensors + a JSON manifest, checksummed, versioned, atomic.

An artifact folder holds ``<kind>.safetensors`` (the tensors) and ``<kind>.json``: the format name and
version, the shape and dtype of every tensor, the SHA-256 of the tensor file, the caller's document, and
the SHA-256 of the manifest itself (so a changed field is noticed too). `read_artifact` checks all of it.
A per-folder writer lock (`DirLock`) keeps a second writer out; a lock left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnshift.errors import ArtifactError, NnshiftError, StoreError

__all__ = [
    "DirLock",
    "atomic_write_bytes",
    "canonical_json",
    "check_format",
    "check_tensors",
    "read_artifact",
    "read_json",
    "seal",
    "sha256_bytes",
    "tensor_spec",
    "unseal",
    "weights_fingerprint",
    "write_artifact",
]

SELF_SHA = "manifest_sha256"


def _umask() -> int:
    """The process umask: from /proc on Linux (no change at all), else set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename), umask mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """A stable JSON encoding (sorted keys, no spaces) of a JSON-able object, used for checksums."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def seal(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` normalised through JSON, with its own SHA-256 added under ``manifest_sha256``."""
    body = json.loads(json.dumps({k: v for k, v in doc.items() if k != SELF_SHA}, default=str))
    body[SELF_SHA] = sha256_bytes(canonical_json(body))
    return body


def unseal(doc: Any, where: str) -> dict[str, Any]:
    """Check a manifest read from disk: a JSON object whose ``manifest_sha256`` (when present) matches."""
    if not isinstance(doc, dict):
        raise ArtifactError(
            f"{where} is not a JSON object (got {type(doc).__name__})", "the file is damaged: re-create it"
        )
    stored = doc.get(SELF_SHA)
    if stored is not None:
        body = {k: v for k, v in doc.items() if k != SELF_SHA}
        if sha256_bytes(canonical_json(body)) != stored:
            raise ArtifactError(f"{where} fails its checksum (it was changed after it was written)", _REMAKE)
    return doc


_REMAKE = "the file is damaged or was edited by hand: re-create it (re-run what wrote it)"


def tensor_spec(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "float32"}}`` for a dict of tensors."""
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()}


def check_tensors(
    tensors: Mapping[str, Tensor], spec: Any, where: str, *, finite: bool = True, hint: str = _REMAKE
) -> None:
    """Raise `ArtifactError` unless ``tensors`` have exactly the names, shapes and dtypes of ``spec`` (and are finite)."""
    if not isinstance(spec, dict):
        raise ArtifactError(f"{where}: the manifest has no tensor list", hint)
    if set(tensors) != set(spec):
        raise ArtifactError(f"{where}: tensors {sorted(tensors)} but the manifest lists {sorted(spec)}", hint)
    got = tensor_spec(tensors)
    for name, want in spec.items():
        if got[name] != want:
            raise ArtifactError(f"{where}: tensor {name!r} is {got[name]}, the manifest says {want}", hint)
        t = tensors[name]
        if finite and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{where}: tensor {name!r} holds NaN or Inf values", hint)


def check_format(doc: Mapping[str, Any], fmt: str, max_version: int, where: str) -> int:
    """The manifest's ``format_version`` after checking its ``format`` name; a newer version is refused."""
    if doc.get("format", fmt) != fmt:
        raise ArtifactError(f"{where} holds a {doc.get('format')!r}, not a {fmt!r}", "pass the right folder")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{where} has no valid format_version (got {version!r})", _REMAKE)
    if version > max_version:
        raise ArtifactError(
            f"{where} was written by a newer nnshift (format_version {version}, this one reads up to {max_version})",
            "upgrade nnshift (pip install -U nnshift)",
        )
    return version


def write_artifact(
    path: str | Path, kind: str, version: int, tensors: Mapping[str, Tensor], doc: Mapping[str, Any]
) -> Path:
    """Write ``path/<kind>.safetensors`` and ``path/<kind>.json`` (format, version, tensor specs, SHA-256s), atomically."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(cpu)
    name = f"{kind}.safetensors"
    manifest = {
        "format": f"nnshift.{kind}",
        "format_version": version,
        "tensors": tensor_spec(cpu),
        "files": {name: sha256_bytes(data)},
        "doc": dict(doc),
    }
    atomic_write_bytes(path / name, data)  # tensors first: the manifest is the commit point
    atomic_write_bytes(path / f"{kind}.json", json.dumps(seal(manifest)).encode())
    return path


def read_json(file: Path, missing: NnshiftError, broken: str, hint: str = _REMAKE) -> Any:
    """The JSON in ``file``: raises ``missing`` when there is no such file, `ArtifactError` ``broken: why`` when unreadable."""
    try:
        return json.loads(file.read_bytes())
    except FileNotFoundError as exc:
        raise missing from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{broken}: {exc}", hint) from exc


def read_artifact(
    path: str | Path, kind: str, max_version: int, *, finite: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what `write_artifact` wrote, checking checksums, version, tensor shapes/dtypes and finiteness."""
    from safetensors.torch import load

    path = Path(path)
    where = str(path / f"{kind}.json")
    missing = ArtifactError(f"no {kind} in {str(path)!r}: {kind}.json is missing", "pass the folder it was saved to")
    manifest = unseal(read_json(path / f"{kind}.json", missing, f"{where!r} cannot be read as JSON"), repr(where))
    check_format(manifest, f"nnshift.{kind}", max_version, repr(where))
    files, doc = manifest.get("files"), manifest.get("doc")
    if not isinstance(files, dict) or not isinstance(doc, dict):
        raise ArtifactError(f"{where!r} lacks its 'files' or 'doc' entry", _REMAKE)
    tensors: dict[str, Tensor] = {}
    for name, sha in files.items():
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{str(path / name)!r} is missing or unreadable: {exc}", _REMAKE) from exc
        if sha256_bytes(data) != sha:
            raise ArtifactError(f"{str(path / name)!r} fails its checksum", _REMAKE)
        try:
            tensors.update(load(data))
        except Exception as exc:  # safetensors raises its own error types
            raise ArtifactError(f"{str(path / name)!r} is not a valid safetensors file: {exc}", _REMAKE) from exc
    check_tensors(tensors, manifest.get("tensors"), repr(where), finite=finite)
    return tensors, doc


def weights_fingerprint(named: Iterable[tuple[str, Tensor]], per_tensor: int = 256) -> str | None:
    """A cheap SHA-256 of weights: every tensor's name, shape, dtype and ``per_tensor`` evenly spaced values.

    PEFT's ``.base_layer`` is dropped from the names, so a model with its LoRA switched off and the same
    model without the adapter agree. Weights that are not loaded (meta tensors) give None.
    """
    h = hashlib.sha256()
    for name, t in named:
        if t.is_meta:
            return None
        flat = t.detach().reshape(-1)
        n = flat.numel()
        idx = torch.linspace(0, max(n - 1, 0), min(n, per_tensor), device=flat.device).long()
        values = flat[idx].float().cpu().contiguous() if n else torch.zeros(0)
        h.update(f"{name.replace('.base_layer', '')}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Writer lock
# ---------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """One writer per folder: ``<dir>/.lock`` holds the writer's pid, host and start time.

    The lock file is created with ``O_CREAT | O_EXCL``. When it exists, a holder on this host whose pid
    is dead is stale: the file is renamed away atomically (only one of several racing writers wins),
    checked to be the stale one, and the lock is created again. Any other holder makes `acquire` raise
    `StoreError` naming the pid, host and start time.
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / self.NAME
        self.held = False
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def holder(self) -> dict[str, Any] | None:
        """The lock file's content (None when there is no lock)."""
        try:
            doc = json.loads(self.file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _stale(self, doc: dict[str, Any]) -> bool:
        if not doc:  # empty or unreadable: a writer that died between creating and filling it, after a grace time
            with contextlib.suppress(OSError):
                return time.time() - self.file.stat().st_mtime > 10
            return False
        pid = doc.get("pid")
        if doc.get("host") != self.me["host"] or not isinstance(pid, int) or isinstance(pid, bool):
            return False
        return not _pid_alive(pid)

    def _create(self) -> bool:
        try:
            fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> DirLock:
        """Take the lock or raise `StoreError` naming its holder; a dead holder's lock is taken over."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                self.held = True
                return self
            doc = self.holder()
            if doc is None:
                continue  # released between our two calls
            if not self._stale(doc):
                raise StoreError(
                    f"{str(self.folder)!r} is being written by another process "
                    f"(pid {doc.get('pid', '?')} on {doc.get('host', '?')}, since {doc.get('started', '?')})",
                    "wait for it to finish, or stop it; if that process is gone on another machine, "
                    f"delete {str(self.file)!r}",
                )
            aside = self.file.with_name(f"{self.NAME}.stale.{os.getpid()}.{time.monotonic_ns()}")
            try:
                os.rename(self.file, aside)
            except FileNotFoundError:
                continue
            try:
                moved = json.loads(aside.read_text())
            except (OSError, ValueError):
                moved = {}
            if moved != doc and moved and not self._stale(moved):
                with contextlib.suppress(OSError):  # we moved a live writer's fresh lock: put it back
                    os.link(aside, self.file)
            with contextlib.suppress(OSError):
                aside.unlink()
        raise StoreError(f"cannot take the lock of {str(self.folder)!r}", f"delete {str(self.file)!r} and retry")

    def release(self) -> None:
        """Drop the lock (only if this object holds it)."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                if self.holder() == self.me:
                    self.file.unlink()
            self.held = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
