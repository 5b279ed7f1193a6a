"""Patches: reusable trace-time edits that add ``alpha * s`` to the residual stream after a decoder layer.

A `Patch` is a steering vector, a layer, a strength ``alpha`` and the positions to edit (a
`nnshift.positions` selector; default ``"all"``, like the reference code: every prompt position and every
generated token). Patches add up (``patch_a + patch_b`` is a `PatchSet`, applied in layer order; two patches on
one layer add their edits) and can be switched per sample (``rows=[True, False, ...]`` or a ``[B]`` alpha).
They never change the model's weights. ``op=`` makes a patch ablate (``"project_out"``), clamp (``"clamp"``) or
push relative to ``||h||`` (``"norm"``) instead of adding, and ``gate=`` (a `ConceptGate`) limits it to where a
concept is active; patches on one layer then apply in the order given, each to the output of the one before
(`nnshift.steering.operators`, `nnshift.steering.gates`).

Inside the user's own nnsight trace or generation::

    with vlm.model.generate(inputs, max_new_tokens=8) as tracer:
        patch(vlm, inputs=inputs)                 # every generation step, however the length is set
        out = tracer.result.save()                # runs even when every row stops early

    with vlm.model.generate(inputs, max_new_tokens=8) as tracer:
        for step in tracer.iter[0:8]:
            patch(vlm, step, inputs)              # the same, in the user's step loop (step 0 = the prompt)

``inputs=`` may be left out when the trace was given one prepared dict (``trace(inputs)`` or
``trace(**inputs)``): the patch then binds to the trace's own inputs. ``patch.save(dir)`` /
``Patch.load(dir)`` / ``PatchSet.load(dir)`` store patches as safetensors + JSON (see `patch_io`).

``ns.steer(vlm, samples, patch)`` is the convenience that returns the steered answers. The same object
installs as TransformerLens hooks (`Patch.tl_hooks`, `Patch.hooked`).

Everything that can fail is checked before the first forward pass: vector size vs hidden size
(`HiddenSizeMismatchError`), layer range (`LayerOutOfRangeError`), positions that do not exist in the input
(`PositionError`), NaN/Inf (`NonFiniteError`). The edit itself is plain tensor arithmetic on the layer output
(``h + delta``, ``delta`` precomputed on the model's device and dtype), so it runs the same locally and on NDIF.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nnshift.errors import DataFormatError, EmptyInputError, NonFiniteError, SteeringError
from nnshift.models.protocol import VLMLike
from nnshift.positions import Image, Selector, SelectorLike, as_selector
from nnshift.steering.checks import check_edit_finite
from nnshift.steering.deltas import (
    LayerEdit,
    Scale,
    as_scale,
    batch_of,
    check_patches,
    common_batch_size,
    resolve_edits,
    selector_parts,
)
from nnshift.steering.gates import ConceptGate
from nnshift.steering.operators import check_op
from nnshift.steering.steps import current_worker, in_step_loop, on_every_step, trace_inputs
from nnshift.steering.vectors import SteeringVector

__all__ = ["BoundPatch", "Patch", "PatchSet"]  # `steer` lives in nnshift.generation (importable here)

# ---------------------------------------------------------------------------- bound patches


class BoundPatch:
    """Patches resolved for one model and one batch: per-layer deltas on the model's device, ready for the trace.

    ``apply(vlm, step)`` runs inside the trace: step 0 (or None) is the prompt pass, step t > 0 the t-th decode
    step under the KV cache. Only tensor arithmetic happens there.
    """

    def __init__(self, edits: dict[int, LayerEdit], batch_size: int | None) -> None:
        self.edits = dict(sorted(edits.items()))
        self.batch_size = batch_size

    @property
    def layers(self) -> list[int]:
        """The edited layers, in order."""
        return list(self.edits)

    @property
    def edits_decode(self) -> bool:
        """Whether any layer is edited at decode steps (t > 0)."""
        return any(e.edits_decode for e in self.edits.values())

    def apply(self, vlm: Any, step: int | None = None) -> None:
        """Inside an nnsight trace: edit the layers of this step (plain deltas added, operators run), in layer order."""
        prefill = step is None or int(step) == 0
        for layer, edit in self.edits.items():
            if not (edit.edits_prefill if prefill else edit.edits_decode):
                continue
            h = vlm.get_resid(layer)
            out = edit.edit_prefill(h) if prefill else edit.edit_decode(h)
            if out is not None:
                vlm.set_resid(layer, out)

    def apply_every_step(self, vlm: Any, steps: int | None = None) -> None:
        """Inside a trace: edit the prompt pass now and every decode step (the first ``steps`` steps) on a side worker.

        Returns at once, so the statements after it run however many steps the generation makes.
        """
        _check_steps(steps)
        if in_step_loop(current_worker()):
            raise SteeringError(
                "patch(vlm) without a step was called inside a `for step in tracer.iter[...]` loop",
                "pass the loop's step: `patch(vlm, step, inputs)`, or call patch(vlm, inputs=inputs) once, before any loop",
            )
        self.apply(vlm, 0)
        if self.edits_decode and (steps is None or steps > 1):
            on_every_step(lambda s: self.apply(vlm, s), start=1, stop=steps)

    def __call__(self, vlm: VLMLike, step: int | None = None, inputs: Any = None, *, steps: int | None = None) -> None:
        """With a step, `apply` (the signature of a `nnshift.generation.Edit`; ``inputs`` is ignored: already
        bound); without one, `apply_every_step`."""
        if step is not None:
            self.apply(vlm, step)
        else:
            self.apply_every_step(vlm, steps)


def _input_masks(
    vlm: VLMLike, inputs: dict[str, Tensor] | None
) -> tuple[Int[Tensor, "b s"] | None, Bool[Tensor, "b s"] | None]:
    """The attention mask (all ones when absent) and image-token mask of a prepared batch; (None, None) without one."""
    if inputs is None:
        return None, None
    ids: Int[Tensor, "b s"] = inputs["input_ids"]
    attn = inputs.get("attention_mask")
    if attn is None:
        attn = torch.ones_like(ids)
    return attn, vlm.image_token_mask(ids)


def _check_steps(steps: int | None) -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SteeringError(f"steps must be an int >= 1, got {steps!r}", "pass steps=n, or nothing for every step")


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
        return common_batch_size(self.patches)

    @property
    def steers_images(self) -> bool:
        """Whether any patch edits image positions (then every sample needs an image)."""
        return any(isinstance(x, Image) for p in self.patches for x in selector_parts(p.positions))

    def check(self, hidden_size: int, n_layers: int) -> list[int]:
        """Validate sizes, layers and values against a model's hidden size and layer count; the layers (0-based)."""
        return check_patches(self.patches, hidden_size, n_layers)

    def bind(self, vlm: VLMLike, inputs: dict[str, Tensor] | None = None) -> BoundPatch:
        """Validate against ``vlm`` and precompute the per-layer deltas for the batch ``inputs`` (before a trace).

        ``inputs`` (the dict given to the trace, e.g. ``vlm.prepare(samples)``) fixes the prompt positions:
        padding is never edited and image/text selectors find the image tokens. Without it, "all"/"prompt"
        edit every prompt position and "last_prompt" the last column (left padding); "image"/"text" need it.
        """
        attn, img = _input_masks(vlm, inputs)
        check_edit_finite(self, vlm.dtype)
        edits, batch = resolve_edits(self.patches, vlm.n_layers, vlm.hidden_size, attn, img, vlm.device, vlm.dtype)
        return BoundPatch(edits, batch)

    def _bound(self, vlm: Any, inputs: dict[str, Tensor] | None) -> BoundPatch:
        ids = None if inputs is None else inputs.get("input_ids")
        cache = self._cache
        if cache is not None and cache[0] is vlm and cache[1] is ids:
            return cache[2]
        bound = self.bind(vlm, inputs)
        self._cache = (vlm, ids, bound)
        return bound

    def apply(self, vlm: VLMLike, step: int | None = None, inputs: dict[str, Tensor] | None = None) -> None:
        """Inside a trace: edit one step (0 or None = the prompt pass; t > 0 = decode step t)."""
        if inputs is None:
            inputs = trace_inputs(current_worker())
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
        the one forward of ``.trace()``; in ``.generate()`` the prompt pass and every decode step, however the
        length is set (``max_new_tokens``, ``max_length``, the model's ``generation_config``, or nothing) and
        when every row stops early; ``steps=n`` edits the first ``n`` steps only. The statements after the call
        run in every case (no ``min_new_tokens`` needed). Without ``inputs`` the patch binds to the trace's own
        inputs when it was given one prepared dict (``trace(inputs)`` / ``trace(**inputs)``).
        """
        _check_steps(steps)
        worker = current_worker()
        bound = self._bound(vlm, inputs if inputs is not None else trace_inputs(worker))
        bound(vlm, step, steps=steps)

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

    def save(self, path: str | Path) -> Path:
        """Save as ``path/patch.safetensors`` + ``path/patch.json`` (format, version, provenance; see `patch_io`)."""
        from nnshift.steering.patch_io import save_patches

        return save_patches(self.patches, path, type(self).__name__)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state


class Patch(_Steerable):
    """Edit the residual stream after decoder ``layer`` at ``positions`` with ``vector``: by default add ``alpha * s``.

    ``vector``: a `SteeringVector` (its layer is the default) or a ``[D]`` tensor (then ``layer`` is required).
    ``alpha``: a float, or a ``[B]`` tensor (per-sample strength). ``positions``: a selector or a shorthand
    (``"all"`` by default: every prompt position and every generated token, as in the reference code;
    ``"generated"``, ``"last_prompt"``, ``"prompt"``, ``"image"``, ``"text"``, unions ``a | b``).
    ``rows``: a ``[B]`` on/off (bool) or multiplier per sample of the batch (or one multiplier for all).
    ``op``: ``"add"`` (``h + w s``), ``"project_out"`` (``h - w (h . ŝ) ŝ``), ``"clamp"`` (``h + w (value - h . ŝ) ŝ``)
    or ``"norm"`` (``h + w ||h|| ŝ``), with ``w = alpha * rows`` at the selected positions
    (`nnshift.steering.operators`). ``gate``: a `ConceptGate`: edit only where its concept is active in ``h``.
    """

    def __init__(
        self,
        vector: SteeringVector | Float[Tensor, " d"],
        alpha: float | Tensor = 1.0,
        positions: SelectorLike = "all",
        *,
        layer: int | None = None,
        rows: float | Tensor | Sequence[bool] | Sequence[float] | None = None,
        op: str = "add",
        value: float | None = None,
        gate: ConceptGate | None = None,
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
                raise SteeringError(
                    f"layer must be an int, got {type(layer).__name__}", "pass the decoder block index, e.g. layer=-1"
                ) from exc
        self.layer: int = layer
        self.alpha: Scale = as_scale(alpha, "alpha")
        self.rows: Scale | None = None if rows is None else as_scale(rows, "rows")
        self.positions: Selector = as_selector(positions)
        na, nr = batch_of(self.alpha), batch_of(self.rows) if self.rows is not None else None
        if na is not None and nr is not None and na != nr:
            raise SteeringError(f"alpha has {na} entries and rows {nr}", "give both one entry per sample")
        self.op, self.value = check_op(op, value, self.vector.vector, gate)
        self.gate: ConceptGate | None = gate

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
        return batch_of(self.scale)

    def select_rows(self, index: slice | Sequence[int]) -> Patch:
        """The same patch for a sub-batch: per-sample alpha/rows indexed by ``index`` (others unchanged)."""

        def pick(x: Scale) -> Scale:
            if not isinstance(x, Tensor):
                return x
            return x[index] if isinstance(index, slice) else x[list(index)]

        rows = None if self.rows is None else pick(self.rows)
        return Patch(self.vector, pick(self.alpha), self.positions, layer=self.layer, rows=rows, **self._op_kwargs())

    def _op_kwargs(self) -> dict[str, Any]:
        return {"op": self.op, "value": self.value, "gate": self.gate}

    @classmethod
    def load(cls, path: str | Path) -> Patch:
        """Load what `Patch.save` wrote (a saved `PatchSet` of one patch also loads)."""
        from nnshift.steering.patch_io import load_patches

        kind, patches = load_patches(path)
        if len(patches) != 1:
            raise DataFormatError(
                f"{str(path)!r} holds a {kind} of {len(patches)} patches, not one patch", "load it with PatchSet.load"
            )
        return patches[0]

    def with_alpha(self, alpha: float | Tensor) -> Patch:
        """The same patch with another strength."""
        return Patch(self.vector, alpha, self.positions, layer=self.layer, rows=self.rows, **self._op_kwargs())

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (vector provenance, layer, alpha, positions)."""
        alpha = self.alpha.tolist() if isinstance(self.alpha, Tensor) else self.alpha
        rows = self.rows.tolist() if isinstance(self.rows, Tensor) else self.rows
        return {
            "layer": self.layer,
            "alpha": alpha,
            "rows": rows,
            "positions": self.positions.spec(),
            "op": self.op,
            "value": self.value,
            "gate": None if self.gate is None else self.gate.spec(),
            "vector": {"method": self.vector.method, "norm": self.vector.norm, **self.vector.info},
        }

    def __repr__(self) -> str:
        alpha = f"[{self.alpha.shape[0]} values]" if isinstance(self.alpha, Tensor) else f"{self.alpha:g}"
        if self.rows is None:
            rows = ""
        else:
            rows = f", rows=[{self.rows.shape[0]}]" if isinstance(self.rows, Tensor) else f", rows={self.rows:g}"
        op = "" if self.op == "add" else f", op={self.op!r}" + ("" if self.value is None else f", value={self.value:g}")
        gate = "" if self.gate is None else f", gate={self.gate!r}"
        return f"Patch(layer={self.layer}, alpha={alpha}, positions={self.positions}{rows}{op}{gate}, vector={self.vector!r})"


class PatchSet(_Steerable):
    """Several patches applied together, in layer order; on one layer in the order given (additions sum)."""

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

    @classmethod
    def load(cls, path: str | Path) -> PatchSet:
        """Load what `PatchSet.save` (or `Patch.save`: a set of one) wrote."""
        from nnshift.steering.patch_io import load_patches

        return PatchSet(load_patches(path)[1])

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


def __getattr__(name: str) -> Any:
    if name == "steer":  # moved beside generate; kept importable from here
        from nnshift.generation import steer

        return steer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
