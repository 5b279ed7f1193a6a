"""Edit resolution: from patches (vector, strength, rows, positions, layer, operator, gate) to per-layer edits.

A plain patch (``op="add"``, no gate) adds ``alpha * rows[b] * s`` to the residual stream after its layer, at the
positions its selector picks. When every patch on a layer is plain, the layer's `LayerEdit` holds the prompt-pass
delta (``[D]``, ``[B, 1, D]`` or ``[B, S, D]``, zero on padding) and the decode-step delta (``[D]`` or
``[B, 1, D]``), summed over those patches in float32 and cast once to the model dtype (``h + delta``).
Otherwise (another operator, or a concept gate: edits that depend on ``h``) the layer holds one `OpEdit` per
patch, in the order given, each applied to the output of the one before (`nnshift.steering.operators`).
Both execution paths use these: the nnsight path (`nnshift.steering.patches.BoundPatch`) and the
TransformerLens hooks (`nnshift.steering.tl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nnshift.errors import (
    HiddenSizeMismatchError,
    LayerOutOfRangeError,
    NonFiniteError,
    PositionError,
    SteeringError,
)
from nnshift.positions import Image, Selector, Text, TokenOfInterest, Union
from nnshift.steering.operators import OpEdit, op_vector
from nnshift.steering.vectors import SteeringVector

__all__ = [
    "LayerEdit",
    "PatchGroup",
    "PatchLike",
    "Scale",
    "as_scale",
    "batch_of",
    "check_patches",
    "common_batch_size",
    "delta_from_weights",
    "is_plain",
    "needs_image_mask",
    "op_edit",
    "resolve_edits",
    "scaled_delta",
    "selector_parts",
    "sum_deltas",
    "target_device",
    "weights_from_mask",
]

Scale = float | Float[Tensor, " _batch"]  # a float, or one value per sample


@runtime_checkable
class PatchLike(Protocol):
    """What delta resolution reads from a single patch."""

    vector: SteeringVector
    layer: int
    positions: Selector

    @property
    def scale(self) -> Scale:
        """The effective strength (alpha times rows)."""
        ...

    @property
    def batch_size(self) -> int | None:
        """The batch size fixed by per-sample values, or None."""
        ...


def is_plain(p: Any) -> bool:
    """Whether a patch is a plain addition (``op="add"``, no gate): resolvable to a precomputed delta."""
    return getattr(p, "op", "add") == "add" and getattr(p, "gate", None) is None


@runtime_checkable
class PatchGroup(Protocol):
    """What can be resolved: anything with its single patches in order (`Patch`, `PatchSet`)."""

    @property
    def patches(self) -> Sequence[PatchLike]:
        """The single patches, in order."""
        ...


# ---------------------------------------------------------------------------- scales and selectors


def selector_parts(selector: Selector) -> list[Selector]:
    """The parts of a union selector (the selector alone otherwise)."""
    return list(selector.parts) if isinstance(selector, Union) else [selector]


def needs_image_mask(selector: Selector) -> bool:
    """Whether resolving ``selector`` needs the batch's image-token mask (image or text positions)."""
    return any(isinstance(p, (Image, Text)) for p in selector_parts(selector))


def as_scale(x: Any, what: str) -> Scale:
    """A finite float, or a 1-D float32 CPU tensor (bools become 0/1); ``what`` names it in errors."""
    if isinstance(x, Tensor):
        t = x.detach()
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        v = float(x)
        if v != v or v in (float("inf"), float("-inf")):
            raise NonFiniteError(f"{what} is {v}", f"use a finite {what}")
        return v
    else:
        try:
            t = torch.as_tensor(list(x))
        except (TypeError, ValueError) as exc:
            raise SteeringError(
                f"{what} must be a number or a [B] sequence, got {type(x).__name__}",
                f"pass a float or one {what} value per sample",
            ) from exc
    if t.ndim == 0:
        return as_scale(float(t), what)
    if t.ndim != 1 or t.shape[0] == 0:
        raise SteeringError(f"{what} must be a scalar or a [B] vector, got shape {tuple(t.shape)}", "one per sample")
    t = t.to(dtype=torch.float32, device="cpu")
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} has NaN/Inf values", f"use finite {what} values")
    return t


def batch_of(x: Scale | None) -> int | None:
    """The number of per-sample values of a scale (None for a float or None)."""
    return int(x.shape[0]) if isinstance(x, Tensor) else None


def target_device(device: torch.device) -> torch.device:
    """Where deltas live: the model's device, or the CPU for a meta (NDIF client) model (the server moves them)."""
    return torch.device("cpu") if device.type == "meta" else device


# ---------------------------------------------------------------------------- deltas


def weights_from_mask(mask: Bool[Tensor, "b s"], scale: Scale) -> Float[Tensor, "b s"]:
    """Per-position weights: the selected positions times the (per-sample) strength."""
    w = mask.to(torch.float32)
    if isinstance(scale, Tensor):
        if scale.shape[0] != w.shape[0]:
            raise PositionError(
                f"per-sample alpha/rows have {scale.shape[0]} entries for a batch of {w.shape[0]}",
                "give one entry per sample of the batch",
            )
        return w * scale.unsqueeze(1)
    return w * scale


def delta_from_weights(
    w: Float[Tensor, "b s"], vec: Float[Tensor, " d"], device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "*shape d"]:
    """``w[..., None] * vec`` in float32, cast to ``dtype``; ``[D]`` when ``w`` is one constant, ``[B, 1, D]`` per row."""
    vec = vec.to(device=device, dtype=torch.float32)
    flat = w.flatten()
    if flat.numel() and bool((flat == flat[0]).all()):
        return (float(flat[0]) * vec).to(dtype=dtype)
    if bool((w == w[:, :1]).all()):
        w = w[:, :1]
    return (w.to(device).unsqueeze(-1) * vec).to(dtype=dtype)


def scaled_delta(
    scale: Scale, vec: Float[Tensor, " d"], device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "*shape d"]:
    """The decode-step delta ``scale * vec``: ``[D]`` for a float, ``[B, 1, D]`` per sample."""
    vec = vec.to(device=device, dtype=torch.float32)
    if isinstance(scale, Tensor):
        return (scale.to(device).view(-1, 1, 1) * vec).to(dtype=dtype)
    return (scale * vec).to(dtype=dtype)


def sum_deltas(deltas: Sequence[Tensor]) -> Tensor | None:
    """Sum of broadcastable deltas (``[D]``, ``[B, 1, D]``, ``[B, S, D]``); None when there are none."""
    out = None
    for d in deltas:
        out = d if out is None else out + d
    return out


def _check_traced(shape: tuple[int, ...], h: Float[Tensor, "b s d"]) -> None:
    """A ``[B, S]`` bound to the inputs must match the traced output's batch and length (or be one column)."""
    if shape[1] not in (1, h.shape[1]) or shape[0] != h.shape[0]:
        raise PositionError(
            f"the patch was bound to inputs of shape {tuple(shape)} but the traced layer output is "
            f"{tuple(h.shape[:2])}",
            "bind the patch to the same inputs as the trace (patch(vlm, inputs=inputs))",
        )


def _lazy_weights(selector: Selector, scale: Scale, h: Float[Tensor, "b s d"]) -> Float[Tensor, "b s"]:
    """Prompt weights resolved from the traced shape (no inputs were bound: no padding known)."""
    b, s = h.shape[0], h.shape[1]
    mask = selector.prefill_mask(torch.ones(b, s, dtype=torch.long), torch.zeros(b, s, dtype=torch.bool))
    return weights_from_mask(mask, scale)


@dataclass
class LayerEdit:
    """What one layer receives: additive deltas (prompt pass, lazy parts, decode), or `OpEdit`s applied in order."""

    prefill: Tensor | None = None  # [D], [B, 1, D] or [B, S, D] (model dtype, device)
    lazy: list[tuple[Selector, Scale, Tensor]] = field(default_factory=list)  # (selector, scale, vec float32)
    decode: Tensor | None = None  # [D] or [B, 1, D]
    ops: list[OpEdit] = field(default_factory=list)  # when set, the layer's patches in order (no deltas then)

    @property
    def edits_prefill(self) -> bool:
        """Whether the prompt pass is edited."""
        return self.prefill is not None or bool(self.lazy) or any(o.edits_prefill for o in self.ops)

    @property
    def edits_decode(self) -> bool:
        """Whether decode steps (t > 0) are edited."""
        return self.decode is not None or any(o.decode is not None for o in self.ops)

    def prefill_delta(self, h: Float[Tensor, "b s d"]) -> Tensor | None:
        """The prompt-pass delta for a traced output ``h`` (lazy parts resolved from its shape)."""
        delta = self.prefill
        if delta is not None and delta.ndim == 3:
            _check_traced(tuple(delta.shape[:2]), h)
        for selector, scale, vec in self.lazy:
            d = delta_from_weights(_lazy_weights(selector, scale, h), vec, h.device, h.dtype)
            delta = d if delta is None else delta + d
        return delta

    def edit_prefill(self, h: Float[Tensor, "b s d"]) -> Float[Tensor, "b s d"] | None:
        """The prompt pass's edited ``h`` (None when nothing is edited)."""
        if not self.ops:
            delta = self.prefill_delta(h)
            return None if delta is None else h + delta.to(device=h.device, dtype=h.dtype)
        out = None
        for o in self.ops:
            if o.prefill is not None:
                _check_traced(tuple(o.prefill.shape), h)
                w = o.prefill
            elif o.lazy is not None:
                w = _lazy_weights(o.lazy[0], o.lazy[1], h)
            else:
                continue
            out = o(h if out is None else out, w)
        return out

    def edit_decode(self, h: Float[Tensor, "b s d"]) -> Float[Tensor, "b s d"] | None:
        """A decode step's edited ``h`` (None when nothing is edited)."""
        if not self.ops:
            d = self.decode
            return None if d is None else h + d.to(device=h.device, dtype=h.dtype)
        out = None
        for o in self.ops:
            if o.decode is not None:
                out = o(h if out is None else out, o.decode)
        return out


# ---------------------------------------------------------------------------- resolution


def common_batch_size(patches: Sequence[PatchLike]) -> int | None:
    """The batch size fixed by per-sample alpha/rows (None if every patch is batch-independent)."""
    sizes = {n for p in patches if (n := p.batch_size) is not None}
    if len(sizes) > 1:
        raise SteeringError(
            f"patches with per-sample values for different batch sizes {sorted(sizes)}",
            "give every per-sample alpha/rows one entry per sample of the same batch",
        )
    return next(iter(sizes)) if sizes else None


def check_patches(patches: Sequence[PatchLike], hidden_size: int, n_layers: int) -> list[int]:
    """Validate sizes, layers and values against a model; the patches' layers (0-based)."""
    out = []
    for p in patches:
        if p.vector.dim != hidden_size:
            raise HiddenSizeMismatchError(
                f"the steering vector has size {p.vector.dim}, the model's hidden size is {hidden_size}",
                "compute the vector from activations of this model",
            )
        if not -n_layers <= p.layer < n_layers:
            raise LayerOutOfRangeError(
                f"patch layer {p.layer} is out of range: the model has {n_layers} decoder layers "
                f"(valid -{n_layers}..{n_layers - 1})",
                "layers count the language model's decoder blocks only; -1 is the last",
            )
        if not bool(torch.isfinite(p.vector.vector).all()):
            raise NonFiniteError("the steering vector has NaN/Inf values", "recompute it from finite activations")
        gate = getattr(p, "gate", None)
        if gate is not None and gate.dim != hidden_size:
            raise HiddenSizeMismatchError(
                f"the gate's concepts have size {gate.dim}, the model's hidden size is {hidden_size}",
                "learn the gate's dictionary on activations of this model at the patch's layer",
            )
        out.append(p.layer % n_layers)
    common_batch_size(patches)
    return out


def _prompt_mask(
    sel: Selector, attention_mask: Int[Tensor, "b s"] | None, image_mask: Bool[Tensor, "b s"] | None
) -> Bool[Tensor, "b s"] | None:
    """The prompt positions ``sel`` picks in the bound inputs (None without inputs: resolved lazily); checked."""
    if isinstance(sel, TokenOfInterest):
        raise PositionError(
            "token_of_interest() positions are known only after generation and cannot be steered",
            "steer 'all', 'generated', 'last_prompt', 'prompt', 'image' or 'text' positions",
        )
    if attention_mask is None:
        if needs_image_mask(sel):
            raise PositionError(
                f"the positions {sel} need the batch's input ids (image tokens) to be resolved",
                "pass inputs= (the dict given to the trace) when applying or binding the patch",
            )
        return None
    img = image_mask if image_mask is not None else torch.zeros_like(attention_mask, dtype=torch.bool)
    mask = sel.prefill_mask(attention_mask.cpu(), img.cpu())
    if not bool(mask.any()) and not sel.decode_step():
        raise PositionError(f"the positions {sel} select nothing in this input", "check the selector")
    return mask


def _add_patch(
    slot: dict[str, list[Any]],
    p: PatchLike,
    attention_mask: Int[Tensor, "b s"] | None,
    image_mask: Bool[Tensor, "b s"] | None,
    device: torch.device,
) -> None:
    """Add one plain patch's prompt (or lazy) and decode parts to its layer's slot."""
    sel, scale, vec = p.positions, p.scale, p.vector.vector
    mask = _prompt_mask(sel, attention_mask, image_mask)
    if mask is None:
        slot["lazy"].append((sel, scale, vec.detach().cpu()))
    elif bool(mask.any()):
        slot["pre"].append(delta_from_weights(weights_from_mask(mask, scale), vec, device, torch.float32))
    if sel.decode_step():
        slot["dec"].append(scaled_delta(scale, vec, device, torch.float32))


def op_edit(
    p: PatchLike,
    attention_mask: Int[Tensor, "b s"] | None,
    image_mask: Bool[Tensor, "b s"] | None,
    device: torch.device,
) -> OpEdit:
    """One patch resolved for the trace as an `OpEdit` (any operator, gated or not)."""
    sel, scale = p.positions, p.scale
    op = getattr(p, "op", "add")
    gate = getattr(p, "gate", None)
    mask = _prompt_mask(sel, attention_mask, image_mask)
    prefill = lazy = decode = None
    if mask is None:
        lazy = (sel, scale)
    elif bool(mask.any()):
        prefill = weights_from_mask(mask, scale).to(device)
    if sel.decode_step():
        decode = scale.view(-1, 1).to(device) if isinstance(scale, Tensor) else scale
    return OpEdit(
        op=op,
        vector=op_vector(op, p.vector.vector, device),
        prefill=prefill,
        lazy=lazy,
        decode=decode,
        value=getattr(p, "value", None),
        gate=None if gate is None else gate.bound(device),
    )


def resolve_edits(
    patches: Sequence[PatchLike],
    n_layers: int,
    hidden_size: int,
    attention_mask: Int[Tensor, "b s"] | None,
    image_mask: Bool[Tensor, "b s"] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[int, LayerEdit], int | None]:
    """Validate ``patches`` and resolve them into per-layer edits for one batch; (edits, batch size or None).

    ``attention_mask`` (left padding) fixes the prompt positions (padding is never edited) and ``image_mask``
    the image tokens; without them the prompt deltas are resolved lazily from the traced shape.
    """
    layers = check_patches(patches, hidden_size, n_layers)
    per_sample = common_batch_size(patches)
    batch = int(attention_mask.shape[0]) if attention_mask is not None else per_sample
    if attention_mask is not None and per_sample not in (None, batch):
        raise PositionError(
            f"per-sample alpha/rows have {per_sample} entries for a batch of {batch}",
            "give one entry per sample of the batch (ns.steer slices them per batch for you)",
        )
    device = target_device(device)
    by_layer: dict[int, list[PatchLike]] = {}
    for p, layer in zip(patches, layers, strict=True):
        by_layer.setdefault(layer, []).append(p)
    edits: dict[int, LayerEdit] = {}
    for layer, group in by_layer.items():
        if not all(is_plain(p) for p in group):
            edits[layer] = LayerEdit(ops=[op_edit(p, attention_mask, image_mask, device) for p in group])
            continue
        slot: dict[str, list[Any]] = {"pre": [], "lazy": [], "dec": []}
        for p in group:
            _add_patch(slot, p, attention_mask, image_mask, device)
        pre, dec = sum_deltas(slot["pre"]), sum_deltas(slot["dec"])
        edits[layer] = LayerEdit(
            prefill=None if pre is None else pre.to(dtype=dtype),
            lazy=slot["lazy"],
            decode=None if dec is None else dec.to(dtype=dtype),
        )
    return edits, batch
