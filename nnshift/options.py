"""One options object and one batching loop for the runners: `generate`, `steer`, `capture`, `by_impact`.

`RunOptions(batch_size, max_new_tokens, progress, remote)` is frozen and validated when built. Each runner
takes ``options=`` and its own keywords; an explicit keyword wins over ``options``, which wins over the
runner's defaults (``max_new_tokens`` is 20 for `generate` / `steer`, 32 for `capture`, 5 for `by_impact`)::

    opts = RunOptions(batch_size=8, max_new_tokens=12, progress=False)
    ns.generate(vlm, samples, options=opts)
    ns.steer(vlm, samples, patch, options=opts)
    ns.capture(vlm, samples, layer=-1, at="generated", options=opts)

`batched` is the loop they share: batches of ``batch_size`` with a progress bar, autograd inference mode off
(nnsight edits need it) and transformers' "generation flags" warning silenced.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from tqdm.auto import tqdm

from nnshift.errors import OptionsError

__all__ = ["Remote", "RunOptions", "batched", "run_options"]

T = TypeVar("T")

#: where traces run: False (here), True (NDIF), "local" (nnsight's dry run of a remote request, here)
Remote = bool | Literal["local"]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name} must be an int, got {type(value).__name__} {value!r}", f"pass e.g. {name}=16")
    if value < 1:
        raise OptionsError(f"{name} must be >= 1, got {value}", f"pass a positive {name}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionsError(f"{name} must be True or False, got {type(value).__name__} {value!r}", f"pass {name}=True")


@dataclass(frozen=True)
class RunOptions:
    """How a runner batches and generates: batch size, new-token budget, progress bar, NDIF (``remote``).

    ``remote`` is False (local), True (NDIF) or ``"local"`` (nnsight's dry run of a remote request, locally).
    """

    batch_size: int = 16
    max_new_tokens: int = 20
    progress: bool = True
    remote: Remote = False

    # __post_init__ checks the types itself with an OptionsError that says what to pass; this keeps jaxtyping's
    # runtime checker (the tests' import hook) from pre-empting it with a bare TypeCheckError
    __no_type_check__ = True

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size)
        _positive_int("max_new_tokens", self.max_new_tokens)
        _flag("progress", self.progress)
        if self.remote != "local":  # nnsight's serialisation dry run: the request is built and run here
            _flag("remote", self.remote)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def run_options(
    options: object = None,
    defaults: RunOptions | None = None,
    **explicit: Any,
) -> RunOptions:
    """The options of one call: the explicit keywords (those not None) over ``options`` over ``defaults``.

    ``options`` is checked here (a `RunOptions` or None), so a wrong type gets an `OptionsError` with a hint.
    """
    if options is not None and not isinstance(options, RunOptions):
        raise OptionsError(
            f"options must be a RunOptions, got {type(options).__name__}",
            "build one with nnshift.options.RunOptions(batch_size=..., max_new_tokens=...)",
        )
    unknown = set(explicit) - {f.name for f in dataclasses.fields(RunOptions)}
    if unknown:
        raise OptionsError(f"unknown run options {sorted(unknown)}", "use batch_size, max_new_tokens, progress, remote")
    base = options if options is not None else (defaults if defaults is not None else RunOptions())
    given = {k: v for k, v in explicit.items() if v is not None}
    return base.replace(**given) if given else base


def batched(
    items: Sequence[T],
    options: RunOptions,
    desc: str,
    *,
    total: int | None = None,
    initial: int = 0,
    leave: bool = False,
    postfix: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[tuple[int, Sequence[T]]]:
    """Yield ``(start, batch)``: ``items`` in batches of ``options.batch_size`` under one progress bar.

    While the loop runs, torch's inference mode is off (nnsight edits need autograd-capable tensors) and
    transformers' "generation flags" warning is silenced. ``postfix()`` (e.g. kept/skipped counts) is shown on
    the bar after each batch.
    """
    bar = tqdm(
        total=total if total is not None else len(items),
        initial=initial,
        desc=desc,
        leave=leave,
        disable=not options.progress,
    )
    try:
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags.*")
            for start in range(0, len(items), options.batch_size):
                batch = items[start : start + options.batch_size]
                yield start, batch
                bar.update(len(batch))
                if postfix is not None:
                    bar.set_postfix(**postfix())
    finally:
        bar.close()
