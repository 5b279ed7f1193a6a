"""Concept gates: apply a patch only where a concept is active, decided inside the trace from the hidden state.

A `ConceptGate` holds K concept directions ``U`` (``[K, D]``, e.g. a `ConceptDictionary`'s concepts) and one
index ``i``. At each position of each sample, from the current residual ``h`` at the patch's layer:

- ``rule="assign"``: the gate is open when ``i`` is the nearest concept by cosine
  (``argmax_k cos(h, u_k) == i``), and, if a ``threshold`` is given, ``cos(h, u_i) > threshold`` too;
- ``rule="cosine"``: the gate is open when ``cos(h, u_i) > threshold`` (required).

The patch's weight is multiplied by the gate (0 or 1) before its operator is applied. The decision is plain
tensor arithmetic on ``h`` (float32), so it runs at every step of a generation, on NDIF, and in TransformerLens
hooks, like the rest of the patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from nnshift.errors import NonFiniteError, SteeringError
from nnshift.metrics import ConceptShape

__all__ = ["GATE_RULES", "BoundGate", "ConceptGate", "gate_mask", "unit_rows"]

GATE_RULES = ("assign", "cosine")


def unit_rows(u: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """The rows of ``u`` scaled to unit length, in float32 (`SteeringError` for a zero row)."""
    u = u.detach().to(torch.float32)
    norms = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise SteeringError("a concept direction of the gate has zero norm", "drop the zero concept or refit")
    return u / norms


def gate_mask(
    h: Float[Tensor, "*batch d"], units: Float[Tensor, "k d"], index: int, rule: str, threshold: float | None
) -> Bool[Tensor, "*batch"]:
    """Where the gate is open: per position of ``h``, from its cosines to the unit concept rows ``units``."""
    x = h.to(torch.float32)
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    cos = x @ units.to(device=x.device).T  # [..., K]
    if rule == "assign":
        open_ = cos.argmax(dim=-1) == index
        return open_ if threshold is None else open_ & (cos[..., index] > threshold)
    return cos[..., index] > threshold


@dataclass
class BoundGate:
    """A gate ready for the trace: unit concept rows on the model's device, the index, the rule, the threshold."""

    units: Float[Tensor, "k d"]
    index: int
    rule: str
    threshold: float | None

    def mask(self, h: Float[Tensor, "*batch d"]) -> Bool[Tensor, "*batch"]:
        """Where the gate is open at the positions of ``h``."""
        return gate_mask(h, self.units, self.index, self.rule, self.threshold)


def _check_threshold(rule: str, threshold: Any) -> float | None:
    """The threshold as a float in [-1, 1] (required for ``cosine``), or None."""
    if threshold is None:
        if rule == "cosine":
            raise SteeringError('rule="cosine" needs a threshold', "pass threshold=t with -1 <= t <= 1, e.g. 0.5")
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise SteeringError(f"threshold must be a number, got {threshold!r}", "pass a cosine, e.g. threshold=0.5")
    t = float(threshold)
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        raise SteeringError(f"threshold {t} is not a cosine in [-1, 1]", "pass a number between -1 and 1")
    return t


class ConceptGate(ConceptShape):
    """Open a patch only where concept ``index`` of ``concepts`` is active in the current hidden state.

    ``concepts``: ``[K, D]`` concept directions (rows need not be unit). ``rule``: ``"assign"`` (the nearest
    concept by cosine is ``index``; with a ``threshold`` its cosine must also exceed it) or ``"cosine"``
    (``cos(h, u_index) > threshold``).
    """

    def __init__(
        self,
        concepts: Float[Tensor, "k d"],
        index: int,
        rule: str = "assign",
        threshold: float | None = None,
    ) -> None:
        if not isinstance(concepts, Tensor) or concepts.ndim != 2 or concepts.shape[0] == 0 or concepts.shape[1] == 0:
            raise SteeringError(
                f"concepts must be a non-empty [K, D] tensor, got {getattr(concepts, 'shape', type(concepts).__name__)}",
                "pass a dictionary's concepts, or use ConceptGate.from_dictionary(dictionary, i)",
            )
        if not bool(torch.isfinite(concepts).all()):
            raise NonFiniteError(
                "the gate's concepts have NaN/Inf values", "refit the dictionary on finite activations"
            )
        k = int(concepts.shape[0])
        if isinstance(index, bool) or not isinstance(index, int) or not -k <= index < k:
            raise SteeringError(f"gate index {index!r} is out of range for K={k}", f"use a concept index 0..{k - 1}")
        if rule not in GATE_RULES:
            raise SteeringError(f"unknown gate rule {rule!r}", f"use one of {', '.join(GATE_RULES)}")
        self.threshold: float | None = _check_threshold(rule, threshold)
        self.concepts: Float[Tensor, "k d"] = concepts.detach().to(device="cpu", dtype=torch.float32).contiguous()
        unit_rows(self.concepts)  # zero rows fail here, not in the trace
        self.index: int = index % k
        self.rule: str = rule

    @classmethod
    def from_dictionary(
        cls, dictionary: Any, index: int, rule: str = "assign", threshold: float | None = None
    ) -> ConceptGate:
        """The gate of concept ``index`` of a `ConceptDictionary` (or anything with ``.concepts`` ``[K, D]``)."""
        from nnshift.metrics import concept_matrix

        u = concept_matrix(dictionary, "dictionary", device=torch.device("cpu"), error=SteeringError)
        return cls(u, index, rule, threshold)

    def bound(self, device: torch.device) -> BoundGate:
        """The gate ready for a trace on ``device`` (unit concept rows precomputed)."""
        return BoundGate(unit_rows(self.concepts).to(device), self.index, self.rule, self.threshold)

    def mask(self, h: Float[Tensor, "*batch d"]) -> Bool[Tensor, "*batch"]:
        """Where the gate is open for hidden states ``h`` (outside a trace too, e.g. on captured activations)."""
        if h.shape[-1] != self.dim:
            raise SteeringError(f"h has size {h.shape[-1]}, the gate's concepts {self.dim}", "use the same layer")
        return gate_mask(h, unit_rows(self.concepts), self.index, self.rule, self.threshold)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (the concept matrix is saved as a tensor by `Patch.save`)."""
        return {"index": self.index, "rule": self.rule, "threshold": self.threshold, "k": self.k}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptGate):
            return NotImplemented
        return self.spec() == other.spec() and torch.equal(self.concepts, other.concepts)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        t = "" if self.threshold is None else f", threshold={self.threshold:g}"
        return f"ConceptGate(index={self.index}, rule={self.rule!r}{t}, k={self.k}, d={self.dim})"
