"""Saving and loading patches: ``DIR/patch.safetensors`` + ``DIR/patch.json``, a checksummed `nnshift.artifacts` folder.

The JSON holds ``format`` (``"nnshift.patch"``), ``format_version``, ``kind`` (``"Patch"`` or ``"PatchSet"``),
one entry per patch (layer, alpha and rows as numbers or tensor names, the positions selector's spec, the
vector's layer, method and provenance ``info``) and ``provenance`` (library versions at save time). Tensors:
``p<n>.vector`` (``[D]`` float32) and, for per-sample values, ``p<n>.alpha`` / ``p<n>.rows`` (``[B]``).
Format version 3 (written only when a patch has another operator than ``"add"`` or a concept gate) adds per
patch ``op``, ``value`` and ``gate`` (``null`` or ``{"tensor": "p<n>.gate", "index", "rule", "threshold"}``
with the ``[K, D]`` concept matrix as ``p<n>.gate``); plain patches are still written as version 2, so older
nnshift versions read them. Versions 1-3 are read. Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from nnshift.artifacts import SELF_SHA, write_artifact
from nnshift.errors import ArtifactError, DataFormatError
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
from nnshift.saved import load_saved
from nnshift.steering.deltas import is_plain
from nnshift.steering.gates import ConceptGate
from nnshift.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from nnshift.steering.patches import Patch

__all__ = ["PATCH_FORMAT", "PATCH_FORMAT_VERSION", "load_patches", "save_patches", "selector_from_spec"]

PATCH_FORMAT = "nnshift.patch"
PATCH_FORMAT_VERSION = 3  # 3: operators and gates; 2: checksummed artifact (nnshift.artifacts); 1: plain JSON
_PLAIN_VERSION = 2  # what a set of plain additive patches is written as (readable by older versions)
_KIND = "patch"
_REMAKE = "save the patch again (Patch.save / PatchSet.save)"
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


def _op_entry(p: Patch, n: int, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The version-3 fields of one patch: operator, value, gate (its concept matrix stored as ``p<n>.gate``)."""
    gate = None
    if p.gate is not None:
        tensors[f"p{n}.gate"] = p.gate.concepts.contiguous().cpu()
        gate = {"tensor": f"p{n}.gate", "index": p.gate.index, "rule": p.gate.rule, "threshold": p.gate.threshold}
    return {"op": p.op, "value": p.value, "gate": gate}


def save_patches(patches: Sequence[Patch], path: str | Path, kind: str) -> Path:
    """Write ``patches`` (a `Patch` alone or a `PatchSet`'s patches, ``kind`` says which) to the folder ``path``."""
    from nnshift.capture import provenance

    path = Path(path)
    plain = all(is_plain(p) for p in patches)
    tensors: dict[str, Tensor] = {}
    entries = []
    for n, p in enumerate(patches):
        tensors[f"p{n}.vector"] = p.vector.vector.contiguous().cpu()
        entry = {
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
        entries.append(entry if plain else {**entry, **_op_entry(p, n, tensors)})
    doc = {"kind": kind, "patches": entries, "provenance": provenance()}
    return write_artifact(path, _KIND, _PLAIN_VERSION if plain else PATCH_FORMAT_VERSION, tensors, doc)


def _gate_value(x: Any, tensors: dict[str, Tensor]) -> ConceptGate | None:
    """The `ConceptGate` a saved ``gate`` entry describes (None for null)."""
    if x is None:
        return None
    return ConceptGate(tensors[x["tensor"]], int(x["index"]), str(x["rule"]), x.get("threshold"))


def _legacy_v1(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """A format-1 patch folder (plain JSON with ``format`` and ``format_version`` 1, no manifest): its tensors and doc.

    Format 1 wrote the ``format`` key, which `load_saved` takes for a manifest's; None for anything else.
    """
    from safetensors.torch import load

    try:
        raw = json.loads((path / f"{_KIND}.json").read_bytes())
    except (OSError, ValueError):
        return None
    manifest = ("files", "doc", "tensors", SELF_SHA)
    if not isinstance(raw, dict) or raw.get("format_version") != 1 or any(k in raw for k in manifest):
        return None
    if raw.get("format") != PATCH_FORMAT:
        return None
    try:
        return load((path / f"{_KIND}.safetensors").read_bytes()), raw
    except Exception as exc:  # OS errors and safetensors' own error types
        raise ArtifactError(f"cannot read the patch in {str(path)!r}: {exc}", _REMAKE) from exc


def load_patches(path: str | Path) -> tuple[str, list[Patch]]:
    """Read what `save_patches` wrote (format 1, 2 or 3): (``kind``, the patches in order)."""
    from nnshift.steering.patches import Patch

    path = Path(path)
    legacy = _legacy_v1(path)
    if legacy is not None:
        tensors, doc = legacy
    else:
        tensors, doc, _ = load_saved(path, _KIND, PATCH_FORMAT_VERSION, "patch", "pass the folder Patch.save wrote")
    if doc.get("kind", "PatchSet") not in ("Patch", "PatchSet"):
        raise ArtifactError(f"the patch in {str(path)!r} has kind {doc.get('kind')!r}", _REMAKE)
    try:
        out = []
        for e in doc["patches"]:
            v = e["vector"]
            vec = SteeringVector(tensors[v["tensor"]], v.get("layer"), v.get("method", "given"), v.get("info", {}))
            alpha = _scale_value(e["alpha"], tensors)
            if alpha is None:
                raise KeyError("alpha")
            rows = _scale_value(e.get("rows"), tensors)
            sel = selector_from_spec(e["positions"])
            op = {"op": e.get("op", "add"), "value": e.get("value"), "gate": _gate_value(e.get("gate"), tensors)}
            out.append(Patch(vec, alpha, sel, layer=e["layer"], rows=rows, **op))
        return str(doc.get("kind", "PatchSet")), out
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ArtifactError(f"the patch in {str(path)!r} is incomplete: {exc!r}", _REMAKE) from exc
