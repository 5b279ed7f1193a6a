"""Loading helpers shared by the saved types (dictionaries, vectors, shift reports): manifest or legacy, typed fields.

Every type is written with `nnshift.artifacts.write_artifact`. Folders written before the manifest existed
(``format_version`` 1: a plain JSON document next to the safetensors file, no checksums) are still read;
their content goes through the same checks (shapes, finiteness, derived data) as a current one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnshift.artifacts import SELF_SHA, check_format, read_artifact, read_json
from nnshift.errors import ArtifactError

__all__ = ["check_finite", "load_saved", "typed_field"]

#: keys that only a current (manifest) file has; a document with none of them is a legacy one
_MANIFEST_KEYS = ("format", "files", "doc", "tensors", SELF_SHA)


_REMAKE = "the file is damaged or was edited by hand: save it again (re-run what wrote it)"


def load_saved(
    path: str | Path, kind: str, max_version: int, what: str, hint: str, *, finite: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any], int]:
    """Tensors, document and format version of a saved ``kind`` folder, current (checked) or legacy.

    A current folder goes through `read_artifact` (checksums of every file and of the manifest, version,
    tensor names/shapes/dtypes, finiteness unless ``finite=False``). A legacy one (no manifest keys) has its
    version checked and its tensors read; the caller checks the content of both the same way.
    """
    from safetensors.torch import load

    path = Path(path)
    json_file = path / f"{kind}.json"
    missing = ArtifactError(f"no saved {what} in {str(path)!r}: {json_file.name} is missing", hint)
    raw = read_json(json_file, missing, f"cannot read the {what} in {str(path)!r}", _REMAKE)
    where = repr(str(json_file))
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where} is not a JSON object (got {type(raw).__name__})", _REMAKE)
    if any(key in raw for key in _MANIFEST_KEYS):
        if SELF_SHA not in raw:
            raise ArtifactError(f"{where} lacks its {SELF_SHA!r}", _REMAKE)
        tensors, doc = read_artifact(path, kind, max_version, finite=finite)
        return tensors, doc, int(raw["format_version"])
    version = check_format(raw, f"nnshift.{kind}", max_version, where)
    file = path / f"{kind}.safetensors"
    try:
        tensors = load(file.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no saved {what} in {str(path)!r}: {file.name} is missing", hint) from exc
    except Exception as exc:  # OS errors and safetensors' own error types
        raise ArtifactError(f"cannot read the {what} in {str(path)!r}: {exc}", _REMAKE) from exc
    return tensors, raw, version


def typed_field(
    doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    """``doc[name]`` checked to be of ``kind`` (bool is not a number); `ArtifactError` naming the field."""
    if name not in doc:
        if default is not ...:
            return default
        raise ArtifactError(f"{where} lacks the field {name!r}", _REMAKE)
    value = doc[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ArtifactError(f"{where}: field {name!r} is {type(value).__name__}, not {names}", _REMAKE)
    return value


def check_finite(t: Tensor, name: str, where: str, allow_nan: Tensor | bool = False) -> None:
    """`ArtifactError` if ``t`` holds Inf, or NaN outside ``allow_nan`` (a mask of places where NaN means "none")."""
    if not t.is_floating_point() or not t.numel():
        return
    bad = torch.isinf(t) | (torch.isnan(t) & ~torch.as_tensor(allow_nan, dtype=torch.bool, device=t.device))
    if bool(bad.any()):
        raise ArtifactError(f"{where}: tensor {name!r} holds {int(bad.sum())} NaN or Inf values", _REMAKE)
