"""Saving and loading patches: ``DIR/patch.safetensors`` (tensors) + ``DIR/patch.json`` (the rest), atomic writes.

The JSON holds ``format`` (``"nnshift.patch"``), ``format_version``, ``kind`` (``"Patch"`` or ``"PatchSet"``),
one entry per patch (layer, alpha and rows as numbers or tensor names, the positions selector's spec, the
vector's layer, method and provenance ``info``) and ``provenance`` (library versions at save time). Tensors:
``p<n>.vector`` (``[D]`` float32) and, for per-sample values, ``p<n>.alpha`` / ``p<n>.rows`` (``[B]``).
Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from nnshift.errors import CorruptStoreError, DataFormatError
from nnshift.positions import (
    All,
    Generated,
    Image,
    LastPrompt,
    Prompt,
    Selector,
    Text,
    TokenOfInterest,
    Union,
)
from nnshift.steering.vectors import SteeringVector
from nnshift.store import atomic_write_bytes

if TYPE_CHECKING:
    from nnshift.steering.patches import Patch

__all__ = ["PATCH_FORMAT", "PATCH_FORMAT_VERSION", "load_patches", "save_patches", "selector_from_spec"]

PATCH_FORMAT = "nnshift.patch"
PATCH_FORMAT_VERSION = 1
_TENSORS = "patch.safetensors"
_JSON = "patch.json"
_PLAIN: dict[str, type[Selector]] = {
    "All": All,
    "Prompt": Prompt,
    "LastPrompt": LastPrompt,
    "Image": Image,
    "Text": Text,
}


def selector_from_spec(spec: dict[str, Any]) -> Selector:
    """The selector a ``Selector.spec()`` describes (the inverse of ``spec``)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind in _PLAIN:
        return _PLAIN[kind]()
    if kind == "Generated":
        return Generated(reduce=spec.get("reduce"))
    if kind == "TokenOfInterest":
        return TokenOfInterest(
            word=spec["word"],
            variants=bool(spec.get("variants", False)),
            alternatives=tuple(spec.get("alternatives", ())),
        )
    if kind == "Union":
        return Union(parts=tuple(selector_from_spec(p) for p in spec["parts"]))
    raise DataFormatError(f"unknown position selector spec {spec!r}", "save the patch again with this nnshift version")


def _scale_entry(x: float | Tensor | None, name: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(x, Tensor):
        tensors[name] = x.detach().contiguous().cpu()
        return {"tensor": name}
    return x


def _scale_value(x: Any, tensors: dict[str, Tensor]) -> float | Tensor | None:
    if isinstance(x, dict):
        return tensors[x["tensor"]]
    return None if x is None else float(x)


def save_patches(patches: Sequence[Patch], path: str | Path, kind: str) -> Path:
    """Write ``patches`` (a `Patch` alone or a `PatchSet`'s patches, ``kind`` says which) to the folder ``path``."""
    from nnshift.capture import provenance

    path = Path(path)
    tensors: dict[str, Tensor] = {}
    entries = []
    for n, p in enumerate(patches):
        tensors[f"p{n}.vector"] = p.vector.vector.contiguous().cpu()
        entries.append(
            {
                "layer": p.layer,
                "alpha": _scale_entry(p.alpha, f"p{n}.alpha", tensors),
                "rows": _scale_entry(p.rows, f"p{n}.rows", tensors),
                "positions": p.positions.spec(),
                "vector": {
                    "tensor": f"p{n}.vector",
                    "layer": p.vector.layer,
                    "method": p.vector.method,
                    "info": p.vector.info,
                },
            }
        )
    doc = {
        "format": PATCH_FORMAT,
        "format_version": PATCH_FORMAT_VERSION,
        "kind": kind,
        "patches": entries,
        "provenance": provenance(),
    }
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / _TENSORS, save(tensors))
    atomic_write_bytes(path / _JSON, json.dumps(doc, default=str, indent=1).encode())
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    try:
        doc = json.loads((path / _JSON).read_text())
        tensors = load_file(str(path / _TENSORS))
    except FileNotFoundError as exc:
        raise CorruptStoreError(
            f"no saved patch in {str(path)!r}: {exc.filename} is missing", "pass the folder Patch.save wrote"
        ) from exc
    except (json.JSONDecodeError, OSError, SafetensorError) as exc:
        raise CorruptStoreError(f"cannot read the patch in {str(path)!r}: {exc}", "save it again") from exc
    if not isinstance(doc, dict) or doc.get("format") != PATCH_FORMAT:
        raise DataFormatError(
            f"{str(path / _JSON)!r} is not an nnshift patch (format {doc.get('format') if isinstance(doc, dict) else None!r})",
            "pass a folder written by Patch.save or PatchSet.save",
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > PATCH_FORMAT_VERSION:
        raise DataFormatError(
            f"patch format version {version!r} is newer than this nnshift reads ({PATCH_FORMAT_VERSION})",
            "upgrade nnshift",
        )
    return doc, tensors


def load_patches(path: str | Path) -> tuple[str, list[Patch]]:
    """Read what `save_patches` wrote: (``kind``, the patches in order)."""
    from nnshift.steering.patches import Patch

    path = Path(path)
    doc, tensors = _read(path)
    try:
        out = []
        for e in doc["patches"]:
            v = e["vector"]
            vec = SteeringVector(tensors[v["tensor"]], v.get("layer"), v.get("method", "given"), v.get("info", {}))
            alpha = _scale_value(e["alpha"], tensors)
            if alpha is None:
                raise KeyError("alpha")
            rows = _scale_value(e.get("rows"), tensors)
            out.append(Patch(vec, alpha, selector_from_spec(e["positions"]), layer=e["layer"], rows=rows))
        return str(doc.get("kind", "PatchSet")), out
    except (KeyError, TypeError) as exc:
        raise CorruptStoreError(f"the patch in {str(path)!r} is incomplete: {exc!r}", "save it again") from exc
