"""Delta resolution: from patches (vector, strength, rows, positions, layer) to per-layer additive edits.

One patch adds ``alpha * rows[b] * s`` to the residual stream after its layer, at the positions its selector
picks. Resolving a set of patches for one model and one batch gives, per edited layer, a `LayerEdit`: the
prompt-pass delta (``[D]``, ``[B, 1, D]`` or ``[B, S, D]``, zero on padding) and the decode-step delta (``[D]``
or ``[B, 1, D]``), summed over the patches on that layer in float32 and cast once to the model dtype.
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
    "needs_image_mask",
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


@dataclass
class LayerEdit:
    """What one layer receives: a prompt-pass delta (or lazy parts needing the traced shape) and a decode delta."""

    prefill: Tensor | None = None  # [D], [B, 1, D] or [B, S, D] (model dtype, device)
    lazy: list[tuple[Selector, Scale, Tensor]] = field(default_factory=list)  # (selector, scale, vec float32)
    decode: Tensor | None = None  # [D] or [B, 1, D]

    def prefill_delta(self, h: Float[Tensor, "b s d"]) -> Tensor | None:
        """The prompt-pass delta for a traced output ``h`` (lazy parts resolved from its shape)."""
        delta = self.prefill
        if (
            delta is not None
            and delta.ndim == 3
            and (delta.shape[1] not in (1, h.shape[1]) or delta.shape[0] != h.shape[0])
        ):
            raise PositionError(
                f"the patch was bound to inputs of shape {tuple(delta.shape[:2])} but the traced layer output is "
                f"{tuple(h.shape[:2])}",
                "bind the patch to the same inputs as the trace (patch(vlm, inputs=inputs))",
            )
        for selector, scale, vec in self.lazy:
            b, s = h.shape[0], h.shape[1]
            mask = selector.prefill_mask(torch.ones(b, s, dtype=torch.long), torch.zeros(b, s, dtype=torch.bool))
            d = delta_from_weights(weights_from_mask(mask, scale), vec, h.device, h.dtype)
            delta = d if delta is None else delta + d
        return delta


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
        out.append(p.layer % n_layers)
    common_batch_size(patches)
    return out


def _add_patch(
    slot: dict[str, list[Any]],
    p: PatchLike,
    attention_mask: Int[Tensor, "b s"] | None,
    image_mask: Bool[Tensor, "b s"] | None,
    device: torch.device,
) -> None:
    """Add one patch's prompt (or lazy) and decode parts to its layer's slot."""
    sel, scale, vec = p.positions, p.scale, p.vector.vector
    if isinstance(sel, TokenOfInterest):
        raise PositionError(
            "token_of_interest() positions are known only after generation and cannot be steered",
            "steer 'all', 'generated', 'last_prompt', 'prompt', 'image' or 'text' positions",
        )
    if attention_mask is not None:
        img = image_mask if image_mask is not None else torch.zeros_like(attention_mask, dtype=torch.bool)
        mask = sel.prefill_mask(attention_mask.cpu(), img.cpu())
        if not bool(mask.any()) and not sel.decode_step():
            raise PositionError(f"the positions {sel} select nothing in this input", "check the selector")
        if bool(mask.any()):
            slot["pre"].append(delta_from_weights(weights_from_mask(mask, scale), vec, device, torch.float32))
    else:
        if needs_image_mask(sel):
            raise PositionError(
                f"the positions {sel} need the batch's input ids (image tokens) to be resolved",
                "pass inputs= (the dict given to the trace) when applying or binding the patch",
            )
        slot["lazy"].append((sel, scale, vec.detach().cpu()))
    if sel.decode_step():
        slot["dec"].append(scaled_delta(scale, vec, device, torch.float32))


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
    slots: dict[int, dict[str, list[Any]]] = {}
    for p, layer in zip(patches, layers, strict=True):
        _add_patch(slots.setdefault(layer, {"pre": [], "lazy": [], "dec": []}), p, attention_mask, image_mask, device)
    edits: dict[int, LayerEdit] = {}
    for layer, slot in slots.items():
        pre, dec = sum_deltas(slot["pre"]), sum_deltas(slot["dec"])
        edits[layer] = LayerEdit(
            prefill=None if pre is None else pre.to(dtype=dtype),
            lazy=slot["lazy"],
            decode=None if dec is None else dec.to(dtype=dtype),
        )
    return edits, batch
