"""The nnsight 0.8.1 internals a patch needs inside the user's own trace: the running worker, and decode steps.

A patch called once inside ``vlm.model.generate(...)`` must edit every decode step, however the length is set
(``max_new_tokens=``, ``max_length=``, the model's ``generation_config``, or nothing), and the statements after
it must still run when every row stops early. A ``for step in tracer.iter[...]`` loop in the user's own worker
can do neither: a bounded loop needs the step count up front and is cut short (with the statements after it)
when generation stops early; an open loop never returns.

So the decode steps run on a *side worker*: an nnsight `Mediator` added to the running interleaver just before
the user's own worker, sharing its rows (``batch_group``) and its step origin (``counts_at_start``). It loops
over ``tracer.iter[1:]`` (open-ended) and is served before the user's worker at each visit, so reads written
after ``patch(...)`` see the edited values. When the run ends, nnsight throws `OutOfOrderError` into the side
worker parked on the step that never came; it ends quietly. The user's worker applies step 0 (the prompt pass)
itself and goes on with the block at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from nnshift.errors import SteeringError

__all__ = ["current_worker", "in_step_loop", "on_every_step", "trace_inputs"]

_OUTSIDE_HINT = "call it inside `with vlm.model.trace(...)` / `vlm.model.generate(...)`, or use ns.steer"


def current_worker() -> Any:
    """The nnsight `Mediator` running the current trace body; SteeringError outside a trace."""
    from greenlet import getcurrent

    ref = getattr(getcurrent(), "mediator", None)
    mediator = ref() if ref is not None else None
    if mediator is None:
        raise SteeringError("a patch was called outside an nnsight trace", _OUTSIDE_HINT)
    return mediator


def in_step_loop(mediator: Any) -> bool:
    """Whether the worker is inside a ``for step in tracer.iter[...]`` loop at a step other than 0."""
    return getattr(mediator, "iteration", 0) != 0


def _input_dict(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The ``input_ids`` dict among one invoke's inputs (``trace(inputs)`` or ``trace(**inputs)``), if any."""
    for candidate in (kwargs, *args):
        ids = candidate.get("input_ids") if isinstance(candidate, Mapping) else None
        if isinstance(ids, Tensor) and ids.ndim == 2:
            return dict(candidate)
    return None


def trace_inputs(mediator: Any) -> dict[str, Any] | None:
    """The running trace's own prepared inputs (``input_ids``, ``attention_mask``, ...) for binding a patch.

    Found when the trace has one input set given as a dict or keywords with an ``input_ids`` tensor (what
    ``vlm.prepare`` returns); None otherwise (text prompts, several invokes: nnsight pads those together, so a
    patch must then be given ``inputs=`` explicitly or falls back to shape-based binding).
    """
    batcher = getattr(getattr(mediator, "interleaver", None), "batcher", None)
    invokes = getattr(batcher, "invokes", None)
    if not isinstance(invokes, list) or len(invokes) != 1:
        return None
    try:
        args, kwargs = invokes[0]
    except (TypeError, ValueError):
        return None
    return _input_dict(tuple(args), dict(kwargs))


def _side_worker_class() -> type:
    from nnsight.intervention.interleaver import Mediator, OutOfOrderError
    from nnsight.intervention.iterator import Iterations

    class StepWorker(Mediator):
        """A worker running ``fn(step)`` for steps ``start .. stop - 1`` (open-ended when ``stop`` is None)."""

        def __init__(self, fn: Callable[[int], None], start: int, stop: int | None) -> None:
            # not super(): this class travels by value to NDIF (nnsight.register), which drops the __class__ cell
            Mediator.__init__(self, None, {}, {})
            self.fn, self.first, self.stop = fn, start, stop

        def _run(self) -> None:
            try:
                for step in Iterations()[self.first : self.stop]:
                    self.fn(step)
            except OutOfOrderError:
                # the run ended before the step this worker waits for: generation stopped, nothing to edit
                self.transform = None
                return
            self.flush()

    return StepWorker


_STEP_WORKER: type | None = None


def on_every_step(fn: Callable[[int], None], start: int = 1, stop: int | None = None) -> None:
    """Inside a trace: run ``fn(step)`` at every generation step from ``start`` on, on a side worker.

    Returns at once, so the statements after the call run whatever the number of steps. ``stop`` (exclusive)
    bounds the steps; None runs until the generation ends (early stop included). Each step's edits land before
    the calling worker reads the same location.
    """
    global _STEP_WORKER
    parent = current_worker()
    interleaver = getattr(parent, "interleaver", None)
    mediators = getattr(interleaver, "mediators", None)
    if interleaver is None or not isinstance(mediators, list) or parent not in mediators:
        raise SteeringError(
            "cannot find the running nnsight interleaver to edit the decode steps",
            "apply the patch per step instead: `for step in tracer.iter[0:n]: patch(vlm, step, inputs)` "
            "with min_new_tokens=n, or use ns.steer",
        )
    if _STEP_WORKER is None:
        _STEP_WORKER = _side_worker_class()
    side = _STEP_WORKER(fn, start, stop)
    side.batch_group = parent.batch_group
    mediators.insert(mediators.index(parent), side)  # served before the caller at each visit
    side.start(interleaver)
    side.counts_at_start = dict(parent.counts_at_start)  # count steps from the caller's origin
    reindex = getattr(interleaver, "_reindex_parked", None)
    if reindex is not None:
        reindex()
