"""The package version and the library versions recorded with every result (layer 0: imports nothing of nnshift)."""

from __future__ import annotations

__all__ = ["__version__", "versions"]

__version__ = "0.1.0"


def versions(*, libraries: bool = True) -> dict[str, str]:
    """Versions of nnshift and (``libraries=True``) torch, transformers and nnsight, for provenance records."""
    out = {"nnshift": __version__}
    if libraries:
        import nnsight
        import torch
        import transformers

        out.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            nnsight=getattr(nnsight, "__version__", "unknown"),
        )
    return out
