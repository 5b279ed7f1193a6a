"""Batched greedy generation inside nnsight, the building block of capture, steering and evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.arguments import check_samples
from nnshift.data import Sample
from nnshift.errors import ArgumentError, PositionError
from nnshift.models.protocol import VLMLike, check_vlm
from nnshift.options import Remote, RunOptions, batched, run_options

if TYPE_CHECKING:
    from nnshift.steering.patches import Patch, PatchSet

__all__ = ["BatchRun", "Edit", "ensure_remote_ready", "generate", "run_generation", "steer", "trim_answer"]

#: an edit applied inside the trace at each generation step: edit(vlm, step, inputs)
Edit = Callable[[Any, int, dict[str, Tensor]], None]


@dataclass
class BatchRun:
    """What one batched greedy generation produced.

    ``tokens[b]`` are the generated ids of row ``b`` up to (not including) its first end token;
    ``states[layer][t]`` is the ``[B, D]`` residual stream of step ``t`` at the last position
    (step 0 = last prompt position, step t = the input position of generated token t - 1).
    """

    tokens: list[list[int]]
    states: dict[int, list[Float[Tensor, "b d"]]] = field(default_factory=dict)
    prompt_len: int = 0


def trim_answer(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """The ids before the first end-of-answer token."""
    out: list[int] = []
    for t in ids:
        if int(t) in eos_ids:
            break
        out.append(int(t))
    return out


def ensure_remote_ready() -> None:
    """Register nnshift with nnsight so that trace bodies calling nnshift code run on an NDIF server without it."""
    import sys

    import nnsight

    nnsight.register(sys.modules["nnshift"])  # the root package, loaded before any of its modules


def _unembed_envoy(vlm: Any) -> Any:
    return vlm._envoy_at(vlm.adapter.unembed)


def run_generation(
    vlm: Any,
    inputs: dict[str, Tensor],
    max_new_tokens: int,
    layers: Sequence[int] = (),
    edit: Edit | None = None,
    remote: Remote = False,
) -> BatchRun:
    """Greedy generation of one prepared batch in nnsight; saves the last-position state of ``layers`` at each step.

    ``edit(vlm, step, inputs)`` runs inside the trace at each step before the states are read, so
    a steering patch can change the residual stream. Generated ids are read from the unembedding's
    argmax (greedy), so nothing after the loop is needed: this stays correct when every row stops early.
    """
    layers = sorted({vlm.layer_index(layer) for layer in layers})
    unembed = _unembed_envoy(vlm)
    eos = vlm.eos_token_ids
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": vlm.pad_token_id,
        "eos_token_id": eos,
    }
    if remote:
        ensure_remote_ready()
        kwargs["remote"] = remote  # True (NDIF) or "local" (nnsight's dry run)
    with warnings.catch_warnings():
        # every row may stop before max_new_tokens: nnsight then warns that the bounded loop was cut short,
        # which is what we want (the ids are read inside the loop), so the warning is not shown to users
        warnings.filterwarnings("ignore", message=r".*was never reached.*")
        return _run(vlm, inputs, max_new_tokens, layers, edit, unembed, eos, kwargs)


def _run(
    vlm: Any,
    inputs: dict[str, Tensor],
    max_new_tokens: int,
    layers: list[int],
    edit: Edit | None,
    unembed: Any,
    eos: Sequence[int],
    kwargs: dict[str, Any],
) -> BatchRun:
    with vlm.model.generate(dict(inputs), **kwargs) as tracer:
        toks: Any = list().save()  # type: ignore[attr-defined]  # nnsight's saved list
        flat: Any = list().save()  # type: ignore[attr-defined]  # step-major, layer-minor (no comprehensions inside a trace body)
        for step in tracer.iter[0:max_new_tokens]:
            if edit is not None:
                edit(vlm, step, inputs)
            for layer in layers:
                flat.append(vlm.get_resid(layer)[:, -1, :].detach().cpu())
            toks.append(unembed.output[:, -1, :].argmax(-1).cpu())
    ids: Int[Tensor, "b t"] = torch.stack(list(toks), dim=1)
    tokens = [trim_answer(row.tolist(), eos) for row in ids]
    return BatchRun(
        tokens=tokens,
        states={layer: list(flat)[j :: len(layers)] for j, layer in enumerate(layers)},
        prompt_len=int(inputs["input_ids"].shape[1]),
    )


def generate(
    vlm: VLMLike,
    samples: Sequence[Sample],
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    edit: Edit | None = None,
    progress: bool | None = None,
    *,
    remote: Remote | None = None,
    options: RunOptions | None = None,
) -> list[str]:
    """Greedy answers of ``vlm`` for ``samples`` (batched, left padding), as text.

    Defaults: 20 new tokens, batches of 16, a progress bar, local; ``options=`` (a `RunOptions`) sets them
    all at once and explicit keywords win over it. ``remote=True`` runs each batch on NDIF.
    """
    check_vlm(vlm, "generate()")
    opts = run_options(options, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, remote=remote)
    samples = check_samples(samples, "generate()")
    if edit is not None and not callable(edit):
        raise ArgumentError(f"edit must be a Patch or a callable, got {edit!r:.60}", "pass edit=vec.patch(alpha)")
    answers: list[str] = []
    for _, batch in batched(samples, opts, "generate"):
        run = run_generation(vlm, vlm.prepare(batch), opts.max_new_tokens, edit=edit, remote=opts.remote)
        answers += [vlm.decode(t) for t in run.tokens]
    return answers


def _check_steer_inputs(vlm: VLMLike, samples: Sequence[Sample], patch: Patch | PatchSet) -> int | None:
    """Validate a patch against the model and the samples (before any forward pass); its per-sample size."""
    if not (hasattr(patch, "bind") and hasattr(patch, "patches")):
        hint = "build one with vec.patch(alpha) (a SteeringVector is not a patch)"
        raise ArgumentError(f"patch must be a Patch or PatchSet, got {type(patch).__name__}", hint)
    patch.check(vlm.hidden_size, vlm.n_layers)
    n = patch.batch_size
    if n is not None and n != len(samples):
        raise PositionError(
            f"per-sample alpha/rows have {n} entries for {len(samples)} samples", "give one entry per sample"
        )
    if patch.steers_images:
        missing = [s.id for s in samples if s.image is None]
        if missing:
            raise PositionError(
                f"image positions are steered but {len(missing)} samples have no image (e.g. {missing[:3]})",
                "steer 'text' or 'all' positions for text-only samples, or drop them",
            )
    return n


def steer(
    vlm: VLMLike,
    samples: Sequence[Sample],
    patch: Patch | PatchSet,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    *,
    progress: bool | None = None,
    remote: Remote | None = None,
    options: RunOptions | None = None,
) -> list[str]:
    """Greedy answers of ``vlm`` for ``samples`` with ``patch`` applied at every generation step.

    Batched with left padding like `generate` (same defaults and ``options=``); per-sample alpha/rows are
    given for all samples and sliced per batch. Everything is validated before the first forward pass.
    ``remote=True`` runs each batch on NDIF (see docs/remote.md).
    """
    check_vlm(vlm, "steer()")
    opts = run_options(options, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, remote=remote)
    samples = check_samples(samples, "steer()")
    n = _check_steer_inputs(vlm, samples, patch)
    answers: list[str] = []
    for start, batch in batched(samples, opts, "steer"):
        part = patch.select_rows(slice(start, start + len(batch))) if n is not None else patch
        inputs = vlm.prepare(batch)
        run = run_generation(vlm, inputs, opts.max_new_tokens, edit=part.bind(vlm, inputs), remote=opts.remote)
        answers += [vlm.decode(t) for t in run.tokens]
    return answers
