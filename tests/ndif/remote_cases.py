"""The nnshift calls that tests/test_remote.py runs both locally and on the local NDIF server.

One definition, so the remote run (tests/ndif/remote_client.py, in a plain Python process) and the local run
(in pytest) make exactly the same calls: capture at several selectors, and a greedy generation steered by a
`Patch` at every step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ARCHES", "MAX_NEW", "SELECTORS", "captures", "samples", "steered", "unsteered"]

ARCHES = ("llama", "llava")
SELECTORS = ("last_prompt", "all", "generated")
MAX_NEW = 5
LAYERS = (1, -1)


def samples(vlm: Any) -> list[Any]:
    """Two samples (with images for a multimodal model), of different lengths so left padding is exercised."""
    from PIL import Image

    from nnshift.data import Sample

    red = Image.new("RGB", (32, 32), (200, 30, 30)) if vlm.is_multimodal else None
    blue = Image.new("RGB", (32, 32), (20, 30, 230)) if vlm.is_multimodal else None
    return [Sample(id="a", prompt="the cat sat on the mat", image=red), Sample(id="b", prompt="a square", image=blue)]


def captures(vlm: Any, remote: bool) -> dict[str, dict[int, dict[str, Any]]]:
    """``{selector: {layer: {"tensor", "ids", "answers"}}}`` from `nnshift.capture.capture` at each selector."""
    from nnshift.capture import capture

    out: dict[str, dict[int, dict[str, Any]]] = {}
    for at in SELECTORS:
        acts = capture(
            vlm, samples(vlm), layer=list(LAYERS), at=at, max_new_tokens=MAX_NEW, progress=False, remote=remote
        )
        assert isinstance(acts, dict)
        out[at] = {
            layer: {"tensor": a.tensor, "ids": list(a.ids), "answers": list(a.answers)} for layer, a in acts.items()
        }
    return out


def _vector(vlm: Any) -> Any:
    from nnshift.steering.vectors import SteeringVector

    return SteeringVector(torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0)), layer=1)


def steered(vlm: Any, remote: bool) -> dict[str, Any]:
    """Greedy generation with ``vector.patch(alpha=4, positions="all")`` applied at every step: ids and last-layer states."""
    from nnshift.generation import run_generation

    inputs = vlm.prepare(samples(vlm))
    edit = _vector(vlm).patch(alpha=4.0, positions="all").bind(vlm, inputs)
    last = vlm.n_layers - 1
    run = run_generation(vlm, inputs, MAX_NEW, layers=[last], edit=edit, remote=remote)
    return {"tokens": run.tokens, "states": [s.clone() for s in run.states[last]]}


def unsteered(vlm: Any) -> dict[str, Any]:
    """The same generation without the patch (local), to check that the patch changes something."""
    from nnshift.generation import run_generation

    last = vlm.n_layers - 1
    run = run_generation(vlm, vlm.prepare(samples(vlm)), MAX_NEW, layers=[last])
    states: list[Tensor] = [s.clone() for s in run.states[last]]
    return {"tokens": run.tokens, "states": states}
