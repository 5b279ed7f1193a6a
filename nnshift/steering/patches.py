"""Patches: reusable trace-time edits that add ``alpha * s`` to the residual stream after a decoder layer.

A `Patch` is a steering vector, a layer, a strength ``alpha`` and the positions to edit (a
`nnshift.positions` selector; default ``"all"``, like the reference code: every prompt position and every
generated token). Patches add up (``patch_a + patch_b`` is a `PatchSet`, applied in layer order; two patches on
one layer add their edits) and can be switched per sample (``rows=[True, False, ...]`` or a ``[B]`` alpha).
They never change the model's weights.

Inside the user's own nnsight trace or generation::

    with vlm.model.generate(inputs, max_new_tokens=8) as tracer:
        patch(vlm, inputs=inputs)                 # every generation step (max_new_tokens read from the call)
        out = tracer.result.save()

    with vlm.model.generate(inputs, max_new_tokens=8) as tracer:
        for step in tracer.iter[0:8]:
            patch(vlm, step, inputs)              # the same, in the user's step loop (step 0 = the prompt)

``ns.steer(vlm, samples, patch)`` is the convenience that returns the steered answers. The same object
installs as TransformerLens hooks (`Patch.tl_hooks`, `Patch.hooked`).

Everything that can fail is checked before the first forward pass: vector size vs hidden size
(`HiddenSizeMismatchError`), layer range (`LayerOutOfRangeError`), positions that do not exist in the input
(`PositionError`), NaN/Inf (`NonFiniteError`). The edit itself is plain tensor arithmetic on the layer output
(``h + delta``, ``delta`` precomputed on the model's device and dtype), so it runs the same locally and on NDIF.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from nnshift.data import Sample
from nnshift.errors import (
    EmptyInputError,
    HiddenSizeMismatchError,
    LayerOutOfRangeError,
    NonFiniteError,
    PositionError,
    SteeringError,
)
from nnshift.positions import Image, Selector, SelectorLike, Text, TokenOfInterest, Union, as_selector
from nnshift.steering.checks import check_edit_finite, check_steer_args
from nnshift.steering.vectors import SteeringVector

__all__ = ["BoundPatch", "Patch", "PatchSet", "steer"]

Scale = float | Float[Tensor, " _batch"]  # a float, or one value per sample


# ---------------------------------------------------------------------------- helpers


def _parts(selector: Selector) -> list[Selector]:
    return list(selector.parts) if isinstance(selector, Union) else [selector]


def _needs_image_mask(selector: Selector) -> bool:
    return any(isinstance(p, (Image, Text)) for p in _parts(selector))


def _as_scale(x: Any, what: str) -> Scale:
    """A float, or a 1-D float32 tensor (bools become 0/1)."""
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
                f"{what} must be a number or a [B] sequence, got {type(x).__name__}", "one per sample"
            ) from exc
    if t.ndim == 0:
        return _as_scale(float(t), what)
    if t.ndim != 1 or t.shape[0] == 0:
        raise SteeringError(f"{what} must be a scalar or a [B] vector, got shape {tuple(t.shape)}", "one per sample")
    t = t.to(dtype=torch.float32, device="cpu")
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} has NaN/Inf values", f"use finite {what} values")
    return t


def _batch_of(x: Scale) -> int | None:
    return int(x.shape[0]) if isinstance(x, Tensor) else None


@dataclass
class _LayerEdit:
    """What one layer receives: a precomputed prefill delta (or lazy parts needing the traced shape) and a decode delta."""

    prefill: Tensor | None = None  # [D], [B, 1, D] or [B, S, D] (model dtype, device)
    lazy: list[tuple[Selector, Scale, Tensor]] = field(default_factory=list)  # (selector, scale, vec float32)
    decode: Tensor | None = None  # [D] or [B, 1, D]

    def prefill_delta(self, h: Tensor) -> Tensor | None:
        """The prompt-pass delta for a traced output ``h`` [B, S, D] (lazy parts resolved from its shape)."""
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
            d = _delta_from_weights(_weights(mask, scale), vec, h.device, h.dtype)
            delta = d if delta is None else delta + d
        return delta


def _weights(mask: Bool[Tensor, "b s"], scale: float | Tensor) -> Float[Tensor, "b s"]:
    w = mask.to(torch.float32)
    if isinstance(scale, Tensor):
        if scale.shape[0] != w.shape[0]:
            raise PositionError(
                f"per-sample alpha/rows have {scale.shape[0]} entries for a batch of {w.shape[0]}",
                "give one entry per sample of the batch",
            )
        return w * scale.unsqueeze(1)
    return w * scale


def _delta_from_weights(
    w: Float[Tensor, "b s"], vec: Float[Tensor, " d"], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``w[..., None] * vec`` in float32, cast to the model dtype; collapsed to [D] when ``w`` is one constant."""
    vec = vec.to(device=device, dtype=torch.float32)
    flat = w.flatten()
    if flat.numel() and bool((flat == flat[0]).all()):
        return (float(flat[0]) * vec).to(dtype=dtype)
    if bool((w == w[:, :1]).all()):
        w = w[:, :1]
    return (w.to(device).unsqueeze(-1) * vec).to(dtype=dtype)


def _scaled(scale: Scale, vec: Float[Tensor, " d"], device: torch.device, dtype: torch.dtype) -> Tensor:
    vec = vec.to(device=device, dtype=torch.float32)
    if isinstance(scale, Tensor):
        return (scale.to(device).view(-1, 1, 1) * vec).to(dtype=dtype)
    return (scale * vec).to(dtype=dtype)


def _target_device(device: torch.device) -> torch.device:
    # a meta (NDIF client) model: keep the values on the CPU, the server moves them to the layer's device
    return torch.device("cpu") if device.type == "meta" else device


def _current_steps() -> int | None:
    """Inside a trace: ``max_new_tokens`` of the running generate call, or None for a single forward."""
    from greenlet import getcurrent

    ref = getattr(getcurrent(), "mediator", None)
    if ref is None or ref() is None:
        raise SteeringError(
            "a patch was called outside an nnsight trace",
            "call it inside `with vlm.model.trace(...)` / `vlm.model.generate(...)`, or use ns.steer",
        )
    batcher = getattr(getattr(ref(), "interleaver", None), "batcher", None)
    kwargs = getattr(batcher, "kwargs", None) or {}
    steps = kwargs.get("max_new_tokens")
    return int(steps) if steps is not None else None


# ---------------------------------------------------------------------------- bound patches


class BoundPatch:
    """Patches resolved for one model and one batch: per-layer deltas on the model's device, ready for the trace.

    ``apply(vlm, step)`` runs inside the trace: step 0 (or None) is the prompt pass, step t > 0 the t-th decode
    step under the KV cache. Only tensor arithmetic happens there.
    """

    def __init__(self, edits: dict[int, _LayerEdit], batch_size: int | None) -> None:
        self.edits = dict(sorted(edits.items()))
        self.batch_size = batch_size

    @property
    def layers(self) -> list[int]:
        """The edited layers, in order."""
        return list(self.edits)

    def apply(self, vlm: Any, step: int | None = None) -> None:
        """Inside an nnsight trace: add the deltas of this step to every patched layer, in layer order."""
        prefill = step is None or int(step) == 0
        for layer, edit in self.edits.items():
            if prefill:
                if edit.prefill is None and not edit.lazy:
                    continue
                h = vlm.get_resid(layer)
                delta = edit.prefill_delta(h)
            else:
                if edit.decode is None:
                    continue
                h = vlm.get_resid(layer)
                delta = edit.decode
            vlm.set_resid(layer, h + delta.to(device=h.device, dtype=h.dtype))

    def __call__(self, vlm: Any, step: int | None = None, inputs: Any = None) -> None:
        """`apply`, with the signature of a `nnshift.generation.Edit` (``inputs`` is ignored: already bound)."""
        self.apply(vlm, step)


# ---------------------------------------------------------------------------- patches


class _Steerable:
    """What `Patch` and `PatchSet` share: binding, calling inside traces, TransformerLens hooks."""

    _cache: tuple[Any, ...] | None = None

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The single patches, in the order given."""
        raise NotImplementedError

    def __add__(self, other: _Steerable) -> PatchSet:
        if not isinstance(other, _Steerable):
            return NotImplemented
        return PatchSet([*self.patches, *other.patches])

    @property
    def touches_decode(self) -> bool:
        """Whether any patch edits decode steps (then it must be applied at every generation step)."""
        return any(p.positions.touches_decode for p in self.patches)

    @property
    def batch_size(self) -> int | None:
        """The batch size fixed by per-sample alpha/rows (None if every patch is batch-independent)."""
        sizes = {n for p in self.patches if (n := p.batch_size) is not None}
        if len(sizes) > 1:
            raise SteeringError(f"patches with per-sample values for different batch sizes {sorted(sizes)}", "")
        return next(iter(sizes)) if sizes else None

    def check(self, hidden_size: int, n_layers: int) -> list[int]:
        """Validate sizes, layers and values against a model's hidden size and layer count; the layers (0-based)."""
        out = []
        for p in self.patches:
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
        self.batch_size  # noqa: B018 - raises on inconsistent per-sample sizes
        return out

    def _edits(
        self,
        n_layers: int,
        hidden_size: int,
        attention_mask: Int[Tensor, "b s"] | None,
        image_mask: Bool[Tensor, "b s"] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[dict[int, _LayerEdit], int | None]:
        layers = self.check(hidden_size, n_layers)
        batch = int(attention_mask.shape[0]) if attention_mask is not None else self.batch_size
        if attention_mask is not None and self.batch_size not in (None, batch):
            raise PositionError(
                f"per-sample alpha/rows have {self.batch_size} entries for a batch of {batch}",
                "give one entry per sample of the batch (ns.steer slices them per batch for you)",
            )
        device = _target_device(device)
        parts: dict[int, dict[str, Any]] = {}
        for p, layer in zip(self.patches, layers, strict=True):
            sel, scale, vec = p.positions, p.scale, p.vector.vector
            slot = parts.setdefault(layer, {"pre": [], "lazy": [], "dec": []})
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
                    slot["pre"].append(_delta_from_weights(_weights(mask, scale), vec, device, torch.float32))
            else:
                if _needs_image_mask(sel):
                    raise PositionError(
                        f"the positions {sel} need the batch's input ids (image tokens) to be resolved",
                        "pass inputs= (the dict given to the trace) when applying or binding the patch",
                    )
                slot["lazy"].append((sel, scale, vec.detach().cpu()))
            if sel.decode_step():
                slot["dec"].append(_scaled(scale, vec, device, torch.float32))
        edits: dict[int, _LayerEdit] = {}
        for layer, slot in parts.items():
            pre = _sum(slot["pre"])
            dec = _sum(slot["dec"])
            edits[layer] = _LayerEdit(
                prefill=None if pre is None else pre.to(dtype=dtype),
                lazy=slot["lazy"],
                decode=None if dec is None else dec.to(dtype=dtype),
            )
        return edits, batch

    def bind(self, vlm: Any, inputs: dict[str, Tensor] | None = None) -> BoundPatch:
        """Validate against ``vlm`` and precompute the per-layer deltas for the batch ``inputs`` (before a trace).

        ``inputs`` (the dict given to the trace, e.g. ``vlm.prepare(samples)``) fixes the prompt positions:
        padding is never edited and image/text selectors find the image tokens. Without it, "all"/"prompt"
        edit every prompt position and "last_prompt" the last column (left padding); "image"/"text" need it.
        """
        attn = img = None
        if inputs is not None:
            ids = inputs["input_ids"]
            attn = inputs.get("attention_mask")
            if attn is None:
                attn = torch.ones_like(ids)
            img = vlm.image_token_mask(ids)
        check_edit_finite(self, vlm.dtype)
        edits, batch = self._edits(vlm.n_layers, vlm.hidden_size, attn, img, vlm.device, vlm.dtype)
        return BoundPatch(edits, batch)

    def _bound(self, vlm: Any, inputs: dict[str, Tensor] | None) -> BoundPatch:
        ids = None if inputs is None else inputs.get("input_ids")
        cache = self._cache
        if cache is not None and cache[0] is vlm and cache[1] is ids:
            return cache[2]
        bound = self.bind(vlm, inputs)
        self._cache = (vlm, ids, bound)
        return bound

    def apply(self, vlm: Any, step: int | None = None, inputs: dict[str, Tensor] | None = None) -> None:
        """Inside a trace: edit one step (0 or None = the prompt pass; t > 0 = decode step t)."""
        self._bound(vlm, inputs).apply(vlm, step)

    def __call__(
        self,
        vlm: Any,
        step: int | None = None,
        inputs: dict[str, Tensor] | None = None,
        *,
        steps: int | None = None,
    ) -> None:
        """Inside an nnsight trace or generation: apply the patch.

        ``patch(vlm, step, inputs)`` edits one step (the signature of a `nnshift.generation.Edit`, for a
        ``for step in tracer.iter[...]`` loop). ``patch(vlm)`` / ``patch(vlm, inputs=inputs)`` edits every step:
        one forward in ``.trace()``, ``max_new_tokens`` steps in ``.generate()`` (or ``steps=``). Put anything
        that reads results after it (and pass ``min_new_tokens`` when every row may stop early).
        """
        bound = self._bound(vlm, inputs)
        if step is not None:
            bound.apply(vlm, step)
            return
        n = steps if steps is not None else _current_steps()
        if n is None:
            bound.apply(vlm, 0)
            return
        from nnsight.intervention.iterator import Iterations

        for s in Iterations()[0 : int(n)]:
            bound.apply(vlm, s)

    # ------------------------------------------------------------------ TransformerLens
    def tl_hooks(
        self,
        model: Any,
        *,
        attention_mask: Int[Tensor, "b s"] | None = None,
        image_mask: Bool[Tensor, "b s"] | None = None,
    ) -> list[tuple[str, Any]]:
        """``[(hook_name, fn)]`` for a TransformerLens model (``blocks.{l}.hook_resid_post``), e.g. for ``run_with_hooks``.

        The hooks tell the prompt pass from KV-cache decode steps by the sequence length, like the nnsight path.
        """
        from nnshift.steering.tl import tl_hooks

        return tl_hooks(self, model, attention_mask=attention_mask, image_mask=image_mask)

    @contextlib.contextmanager
    def hooked(
        self,
        model: Any,
        *,
        attention_mask: Int[Tensor, "b s"] | None = None,
        image_mask: Bool[Tensor, "b s"] | None = None,
    ) -> Iterator[Any]:
        """Context manager: the patch installed as TransformerLens hooks on ``model`` (removed on exit)."""
        with model.hooks(fwd_hooks=self.tl_hooks(model, attention_mask=attention_mask, image_mask=image_mask)):
            yield model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state


def _sum(deltas: list[Tensor]) -> Tensor | None:
    """Sum of broadcastable deltas ([D], [B, 1, D], [B, S, D]), in float32."""
    out = None
    for d in deltas:
        out = d if out is None else out + d
    return out


class Patch(_Steerable):
    """Add ``alpha * vector`` to the residual stream after decoder ``layer`` at ``positions``.

    ``vector``: a `SteeringVector` (its layer is the default) or a ``[D]`` tensor (then ``layer`` is required).
    ``alpha``: a float, or a ``[B]`` tensor (per-sample strength). ``positions``: a selector or a shorthand
    (``"all"`` by default: every prompt position and every generated token, as in the reference code;
    ``"generated"``, ``"last_prompt"``, ``"prompt"``, ``"image"``, ``"text"``, unions ``a | b``).
    ``rows``: a ``[B]`` on/off (bool) or multiplier per sample of the batch.
    """

    def __init__(
        self,
        vector: SteeringVector | Float[Tensor, " d"],
        alpha: float | Tensor = 1.0,
        positions: SelectorLike = "all",
        *,
        layer: int | None = None,
        rows: Tensor | Sequence[bool] | Sequence[float] | None = None,
    ) -> None:
        if not isinstance(vector, SteeringVector):
            if (
                isinstance(vector, Tensor)
                and vector.ndim == 1
                and vector.shape[0] > 0
                and not bool(torch.isfinite(vector).all())
            ):
                raise NonFiniteError("the steering vector has NaN/Inf values", "recompute it from finite activations")
            vector = SteeringVector(vector, layer)
        self.vector = vector
        layer = vector.layer if layer is None else layer
        if layer is None:
            raise SteeringError("the patch has no layer", "pass layer= (or use a SteeringVector that knows its layer)")
        if isinstance(layer, bool) or not isinstance(layer, int):
            try:
                layer = int(layer)
            except (TypeError, ValueError) as exc:
                raise SteeringError(f"layer must be an int, got {type(layer).__name__}", "") from exc
        self.layer: int = layer
        self.alpha: Scale = _as_scale(alpha, "alpha")
        self.rows: Scale | None = None if rows is None else _as_scale(rows, "rows")
        self.positions: Selector = as_selector(positions)
        na, nr = _batch_of(self.alpha), _batch_of(self.rows) if self.rows is not None else None
        if na is not None and nr is not None and na != nr:
            raise SteeringError(f"alpha has {na} entries and rows {nr}", "give both one entry per sample")

    @property
    def patches(self) -> tuple[Patch, ...]:
        """This patch alone."""
        return (self,)

    @property
    def scale(self) -> Scale:
        """The effective strength: ``alpha`` times ``rows`` (a float or a ``[B]`` tensor)."""
        if self.rows is None:
            return self.alpha
        return self.rows * self.alpha

    @property
    def batch_size(self) -> int | None:
        """The batch size fixed by per-sample alpha/rows, or None."""
        return _batch_of(self.scale)

    def select_rows(self, index: slice | Sequence[int]) -> Patch:
        """The same patch for a sub-batch: per-sample alpha/rows indexed by ``index`` (others unchanged)."""

        def pick(x: Scale | None) -> Scale | None:
            if not isinstance(x, Tensor):
                return x
            return x[index] if isinstance(index, slice) else x[list(index)]

        return Patch(self.vector, pick(self.alpha), self.positions, layer=self.layer, rows=pick(self.rows))

    def with_alpha(self, alpha: float | Tensor) -> Patch:
        """The same patch with another strength."""
        return Patch(self.vector, alpha, self.positions, layer=self.layer, rows=self.rows)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (vector provenance, layer, alpha, positions)."""
        alpha = self.alpha.tolist() if isinstance(self.alpha, Tensor) else self.alpha
        rows = self.rows.tolist() if isinstance(self.rows, Tensor) else self.rows
        return {
            "layer": self.layer,
            "alpha": alpha,
            "rows": rows,
            "positions": self.positions.spec(),
            "vector": {"method": self.vector.method, "norm": self.vector.norm, **self.vector.info},
        }

    def __repr__(self) -> str:
        alpha = f"[{self.alpha.shape[0]} values]" if isinstance(self.alpha, Tensor) else f"{self.alpha:g}"
        rows = "" if self.rows is None else f", rows=[{self.rows.shape[0]}]"
        return f"Patch(layer={self.layer}, alpha={alpha}, positions={self.positions}{rows}, vector={self.vector!r})"


class PatchSet(_Steerable):
    """Several patches applied together, in layer order; patches on one layer add their edits."""

    def __init__(self, patches: Sequence[Patch | PatchSet]) -> None:
        flat: list[Patch] = []
        for p in patches:
            if not isinstance(p, _Steerable):
                raise SteeringError(f"PatchSet takes patches, got {type(p).__name__}", "build them with vec.patch(...)")
            flat.extend(p.patches)
        if not flat:
            raise EmptyInputError("an empty PatchSet", "give at least one patch")
        self._patches = tuple(flat)

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The patches, in the order given."""
        return self._patches

    def select_rows(self, index: slice | Sequence[int]) -> PatchSet:
        """Every patch restricted to a sub-batch (see `Patch.select_rows`)."""
        return PatchSet([p.select_rows(index) for p in self._patches])

    def spec(self) -> list[dict[str, Any]]:
        """JSON-able descriptions of the patches."""
        return [p.spec() for p in self._patches]

    def __len__(self) -> int:
        return len(self._patches)

    def __iter__(self) -> Iterator[Patch]:
        return iter(self._patches)

    def __repr__(self) -> str:
        return "PatchSet(" + ", ".join(repr(p) for p in self._patches) + ")"


# ---------------------------------------------------------------------------- convenience


def steer(
    vlm: Any,
    samples: Sequence[Sample],
    patch: Patch | PatchSet,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    *,
    progress: bool = True,
    remote: bool = False,
) -> list[str]:
    """Greedy answers of ``vlm`` for ``samples`` with ``patch`` applied at every generation step.

    Batched with left padding like `nnshift.generate`; per-sample alpha/rows are given for all samples and
    sliced per batch. Everything is validated before the first forward pass. ``remote=True`` runs each batch
    on NDIF (see docs/remote.md).
    """
    from nnshift.generation import run_generation

    samples = check_steer_args(samples, patch, max_new_tokens, batch_size, progress)
    patch.check(vlm.hidden_size, vlm.n_layers)
    check_edit_finite(patch, vlm.dtype)
    n = patch.batch_size
    if n is not None and n != len(samples):
        raise PositionError(
            f"per-sample alpha/rows have {n} entries for {len(samples)} samples", "give one entry per sample"
        )
    if any(
        _needs_image_mask(p.positions) and any(isinstance(x, Image) for x in _parts(p.positions)) for p in patch.patches
    ):
        missing = [s.id for s in samples if s.image is None]
        if missing:
            raise PositionError(
                f"image positions are steered but {len(missing)} samples have no image (e.g. {missing[:3]})",
                "steer 'text' or 'all' positions for text-only samples, or drop them",
            )
    answers: list[str] = []
    bar = tqdm(total=len(samples), desc="steer", disable=not progress, leave=False)
    with torch.inference_mode(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags.*")
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            part = patch.select_rows(slice(start, start + len(batch))) if n is not None else patch
            inputs = vlm.prepare(batch)
            bound = part.bind(vlm, inputs)
            run = run_generation(vlm, inputs, max_new_tokens, edit=bound, remote=remote)
            answers += [vlm.decode(t) for t in run.tokens]
            bar.update(len(batch))
    bar.close()
    return answers
