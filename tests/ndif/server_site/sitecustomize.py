"""Loaded by every Python process of the local NDIF test server (its folder is on their PYTHONPATH).

Hides the top-level packages named in NNSHIFT_NDIF_HIDE (comma-separated) from the server, so a test proves
that what a client sends with ``remote=True`` runs without them, as on a real NDIF where nnshift is not
installed. A hidden import raises ModuleNotFoundError, as it would there.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_HIDDEN = frozenset(name.strip() for name in os.environ.get("NNSHIFT_NDIF_HIDE", "").split(",") if name.strip())


class _HideFinder:
    """A meta-path finder that refuses the hidden packages and their submodules."""

    @staticmethod
    def find_spec(fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden on the NDIF test server)", name=fullname)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _HideFinder())
