"""Several steering vectors in one artifact (e.g. `fine_all`'s dict): `save_vectors` / `load_vectors`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnshift.artifacts import write_artifact
from nnshift.errors import ArtifactError
from nnshift.saved import load_saved, typed_field
from nnshift.steering.vectors import _MANY_KIND, _REMAKE, FORMAT_VERSION, SteeringVector, _vector_from

__all__ = ["load_vectors", "save_vectors"]


def _key_to_json(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _key_from_json(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_vectors(vectors: Mapping[Any, SteeringVector], path: str | Path) -> Path:
    """Save several vectors (e.g. `fine_all`'s dict) as ``path/vectors.safetensors`` + ``path/vectors.json``."""
    entries = []
    tensors = {}
    for n, (key, vec) in enumerate(vectors.items()):
        tensors[f"v{n}"] = vec.vector
        entries.append({"key": _key_to_json(key), "tensor": f"v{n}", **vec.to_dict()})
    return write_artifact(path, _MANY_KIND, FORMAT_VERSION, tensors, {"vectors": entries})


def load_vectors(path: str | Path) -> dict[Any, SteeringVector]:
    """Load what `save_vectors` wrote (tuple keys come back as tuples), each vector checked as in `SteeringVector.load`."""
    path = Path(path)
    tensors, doc, _ = load_saved(
        path, _MANY_KIND, FORMAT_VERSION, "steering vectors", "pass the folder save_vectors wrote"
    )
    where = f"the steering vectors in {str(path)!r}"
    entries = typed_field(doc, "vectors", list, where)
    out: dict[Any, SteeringVector] = {}
    used: set[str] = set()
    for n, e in enumerate(entries):
        at = f"{where}, entry {n}"
        if not isinstance(e, dict):
            raise ArtifactError(f"{at} is not a JSON object (got {type(e).__name__})", _REMAKE)
        name = typed_field(e, "tensor", str, at)
        key = _key_from_json(typed_field(e, "key", (str, int, float, list, type(None)), at))
        if name not in tensors or name in used:
            raise ArtifactError(f"{at} names tensor {name!r}, which is missing or used twice", _REMAKE)
        if not all(isinstance(x, (str, int, float, type(None))) for x in (key if isinstance(key, tuple) else [key])):
            raise ArtifactError(f"{at} has a key {e['key']!r} that is not a name or a list of numbers", _REMAKE)
        if key in out:
            raise ArtifactError(f"{at} repeats the key {e['key']!r}", _REMAKE)
        used.add(name)
        out[key] = _vector_from(tensors[name], e, at)
    if used != set(tensors):
        raise ArtifactError(f"{where} holds tensors {sorted(set(tensors) - used)} that no entry names", _REMAKE)
    return out
