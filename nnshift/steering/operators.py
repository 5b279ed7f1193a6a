"""Patch operators: how a patch edits the residual ``h`` at the positions it selects, with weight ``w``.

``w`` is the patch's strength at a position: ``alpha * rows[b]`` where the positions selector picks the position,
0 elsewhere (padding included), times the concept gate (0 or 1) when the patch has one. With ``s`` the patch's
vector and ``ŝ = s / ||s||``:

- ``"add"`` (the default): ``h + w s``;
- ``"project_out"`` (directional ablation): ``h - w (h · ŝ) ŝ`` (``w = 1``: the direction removed);
- ``"clamp"`` with a value ``c``: ``h + w (c - h · ŝ) ŝ`` (``w = 1``: the coefficient along ``ŝ`` set to ``c``);
- ``"norm"`` (norm-relative strength): ``h + w ||h|| ŝ``, ``||h||`` per position.

Everything is computed in float32 and cast once to ``h``'s dtype; where ``w = 0`` the result is ``h`` exactly.
The ops other than plain ``"add"`` depend on ``h``, so they run inside the trace (`OpEdit`), in the order the
patches were given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.errors import NonFiniteError, SteeringError
from nnshift.positions import Selector
from nnshift.steering.gates import BoundGate, ConceptGate

__all__ = ["OPS", "OpEdit", "apply_op", "check_op", "op_vector"]

OPS = ("add", "project_out", "clamp", "norm")

Weight = float | Float[Tensor, "#wb #ws"]  # a constant, or [B, S] / [B, 1] weights


def check_op(op: Any, value: Any, vector: Float[Tensor, " d"], gate: Any) -> tuple[str, float | None]:
    """Validate an operator, its value, the vector it needs and the gate; ``(op, value as float or None)``."""
    if not isinstance(op, str) or op not in OPS:
        raise SteeringError(f"unknown patch operator op={op!r}", f"use one of {', '.join(map(repr, OPS))}")
    if op == "clamp":
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SteeringError(
                f'op="clamp" needs a numeric value (the coefficient to set), got {value!r}',
                'pass value=c, e.g. Patch(vec, op="clamp", value=0.0)',
            )
        if not math.isfinite(float(value)):
            raise NonFiniteError(f"the clamp value is {value}", "use a finite value")
        value = float(value)
    elif value is not None:
        raise SteeringError(f'value= is only used by op="clamp", not op={op!r}', 'drop value= or use op="clamp"')
    if op != "add" and float(torch.linalg.vector_norm(vector.detach().double())) == 0.0:
        raise SteeringError(f'op="{op}" needs a direction but the vector is zero', "use a non-zero steering vector")
    if gate is not None:
        if not isinstance(gate, ConceptGate):
            raise SteeringError(
                f"gate must be a ConceptGate, got {type(gate).__name__}",
                "build it with ns.steering.ConceptGate(concepts, i) or ConceptGate.from_dictionary(dictionary, i)",
            )
        if gate.dim != vector.shape[0]:
            raise SteeringError(
                f"the gate's concepts have size {gate.dim}, the steering vector {vector.shape[0]}",
                "use a dictionary learnt at the patch's layer of the same model",
            )
    return op, value


def op_vector(op: str, vector: Float[Tensor, " d"], device: torch.device) -> Float[Tensor, " d"]:
    """The vector an operator uses, in float32 on ``device``: ``s`` for ``"add"``, ``ŝ = s / ||s||`` otherwise."""
    v = vector.detach().to(device=device, dtype=torch.float32)
    return v if op == "add" else v / torch.linalg.vector_norm(v)


def apply_op(
    h: Float[Tensor, "*batch s d"],
    op: str,
    w: Weight,
    vec: Float[Tensor, " d"],
    value: float | None = None,
    gate: BoundGate | None = None,
) -> Float[Tensor, "*batch s d"]:
    """``h`` edited by ``op`` with per-position weights ``w`` (see the module docstring), in ``h``'s dtype."""
    x = h.to(torch.float32)
    v = vec.to(device=x.device, dtype=torch.float32)
    ww = w.to(x.device).unsqueeze(-1) if isinstance(w, Tensor) else w
    if gate is not None:
        ww = gate.mask(x).to(torch.float32).unsqueeze(-1) * ww
    if op == "add":
        out = x + ww * v
    elif op == "project_out":
        out = x - (ww * (x @ v).unsqueeze(-1)) * v
    elif op == "clamp":
        out = x + (ww * (float(value) - x @ v).unsqueeze(-1)) * v  # type: ignore[arg-type]
    elif op == "norm":
        out = x + (ww * torch.linalg.vector_norm(x, dim=-1, keepdim=True)) * v
    else:
        raise SteeringError(f"unknown patch operator {op!r}", f"use one of {', '.join(OPS)}")
    return out.to(h.dtype)


@dataclass
class OpEdit:
    """One patch resolved for the trace, applied to the current ``h`` (after the patches before it on its layer).

    ``prefill``: the prompt-pass weights ``[B, S]`` (None: the prompt is not edited, or ``lazy`` resolves them
    from the traced shape: ``(selector, scale)``); ``decode``: the decode-step weight (a float, ``[B, 1]``, or
    None: not edited at decode steps). ``vector``: ``s`` (add) or ``ŝ`` (the others), float32 on the device.
    """

    op: str
    vector: Float[Tensor, " d"]
    prefill: Float[Tensor, "b s"] | None = None
    lazy: tuple[Selector, Any] | None = None
    decode: float | Float[Tensor, "b 1"] | None = None
    value: float | None = None
    gate: BoundGate | None = None

    @property
    def edits_prefill(self) -> bool:
        """Whether the prompt pass is edited."""
        return self.prefill is not None or self.lazy is not None

    def __call__(self, h: Float[Tensor, "*batch s d"], w: Weight) -> Float[Tensor, "*batch s d"]:
        """``h`` edited with the weights ``w``."""
        return apply_op(h, self.op, w, self.vector, self.value, self.gate)
