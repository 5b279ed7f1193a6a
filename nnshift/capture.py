"""Capture residual-stream states at selected positions, batched, inside nnsight; stream to disk and resume."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnshift.data import Sample
from nnshift.errors import EmptyInputError, TokenOfInterestError
from nnshift.generation import ensure_remote_ready, run_generation
from nnshift.options import RunOptions, batched, run_options
from nnshift.positions import Generated, SelectorLike, TokenOfInterest, as_selector, find_word_token
from nnshift.store import Activations, ActivationStore

__all__ = ["capture", "provenance"]

_CAPTURE_DEFAULTS = RunOptions(max_new_tokens=32)


def provenance() -> dict[str, str]:
    """Versions of the libraries that produced a result."""
    import nnsight
    import transformers

    import nnshift

    return {
        "nnshift": nnshift.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": getattr(nnsight, "__version__", "unknown"),
    }


class _Rows:
    """Rows collected for the current shard: per-layer states, row ids, the samples they came from."""

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        self.clear()

    def clear(self) -> None:
        self.tensors: dict[int, list[Tensor]] = {layer: [] for layer in self.layers}
        self.ids: list[str] = []
        self.sample_ids: list[str] = []
        self.answers: list[str] = []
        self.meta: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.skipped_answers: list[str] = []

    def add(self, vecs: dict[int, Tensor], row_id: str, sample: Sample, answer: str, meta: dict[str, Any]) -> None:
        for layer in self.layers:
            self.tensors[layer].append(vecs[layer].reshape(1, -1))
        self.ids.append(row_id)
        self.sample_ids.append(sample.id)
        self.answers.append(answer)
        self.meta.append(meta)

    def stacked(self, dim: int) -> dict[str, Tensor]:
        return {f"layer_{layer}": torch.cat(v) if v else torch.zeros(0, dim) for layer, v in self.tensors.items()}


def _rows_from_generation(
    vlm: Any,
    batch: Sequence[Sample],
    selector: Any,
    layers: list[int],
    reduce: str | None,
    rows: _Rows,
    dtype: Any,
    options: RunOptions,
) -> None:
    run = run_generation(vlm, vlm.prepare(batch), options.max_new_tokens, layers=layers, remote=options.remote)
    n_steps = len(run.states[layers[0]])
    for b, sample in enumerate(batch):
        answer_ids = run.tokens[b]
        answer = vlm.decode(answer_ids)
        base_meta = {**sample.meta, "answer_tokens": len(answer_ids)}
        if isinstance(selector, TokenOfInterest):
            k = find_word_token(vlm.tokenizer, answer_ids, selector)
            if k is None or k >= n_steps:
                rows.skipped.append(sample.id)
                rows.skipped_answers.append(answer)
                continue
            vecs = {layer: run.states[layer][k][b].to(dtype) for layer in layers}
            rows.add(vecs, sample.id, sample, answer, {**base_meta, "toi_step": k})
            continue
        # Generated: decode steps 1..len(answer) (their inputs are the answer tokens)
        steps = list(range(1, min(len(answer_ids), n_steps - 1) + 1))
        if not steps:
            rows.skipped.append(sample.id)
            continue
        if reduce == "mean":
            vecs = {layer: torch.stack([run.states[layer][t][b] for t in steps]).float().mean(0) for layer in layers}
            rows.add({k: v.to(dtype) for k, v in vecs.items()}, sample.id, sample, answer, base_meta)
        else:
            for t in steps:
                vecs = {layer: run.states[layer][t][b].to(dtype) for layer in layers}
                rows.add(vecs, f"{sample.id}#g{t - 1}", sample, answer, {**base_meta, "answer_token": t - 1})


def _rows_from_forward(
    vlm: Any,
    batch: Sequence[Sample],
    selector: Any,
    layers: list[int],
    reduce: str | None,
    rows: _Rows,
    dtype: Any,
    options: RunOptions,
) -> None:
    remote = options.remote
    if remote:
        ensure_remote_ready()
    inputs = vlm.prepare(batch)
    attn = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    mask = selector.prefill_mask(attn.cpu(), vlm.image_token_mask(inputs["input_ids"]).cpu())
    dev_mask = mask.to(inputs["input_ids"].device)
    with vlm.model.trace(dict(inputs), remote=remote):
        saved = list().save()
        for layer in layers:
            saved.append(vlm.get_resid(layer)[dev_mask].detach().cpu())
    flat = {layer: s.to(dtype) for layer, s in zip(layers, saved, strict=True)}
    counts = mask.sum(dim=1).tolist()
    offsets = [0, *torch.tensor(counts).cumsum(0).tolist()]
    pad = (attn.cpu() == 0).sum(dim=1).tolist()
    for b, sample in enumerate(batch):
        lo, hi = offsets[b], offsets[b + 1]
        if hi == lo:
            rows.skipped.append(sample.id)
            continue
        if reduce == "mean" or hi - lo == 1:
            vecs = {layer: flat[layer][lo:hi].float().mean(0).to(dtype) for layer in layers}
            rows.add(vecs, sample.id, sample, "", {**sample.meta, "n_positions": hi - lo})
            continue
        positions = (mask[b].nonzero().flatten() - pad[b]).tolist()
        for j, p in enumerate(positions):
            vecs = {layer: flat[layer][lo + j] for layer in layers}
            rows.add(vecs, f"{sample.id}#{p}", sample, "", {**sample.meta, "position": p})


def capture(
    vlm: Any,
    samples: Sequence[Sample],
    layer: int | Sequence[int] = -1,
    at: SelectorLike = "last_prompt",
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    reduce: str | None = None,
    out: str | Path | None = None,
    shard_size: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    remote: bool | None = None,
    options: RunOptions | None = None,
) -> Activations | dict[int, Activations]:
    """Residual-stream states of ``vlm`` after decoder block ``layer`` at the positions ``at`` selects.

    Selectors that need the model's own answer (``token_of_interest``, ``generated``) run batched
    greedy generation and keep only the selected states (moved to CPU step by step); the others run
    one forward pass. One row per sample, except for multi-position selectors without ``reduce="mean"``
    (one row per position, id ``"<sample id>#<position>"``). Samples where nothing is selected (e.g. the
    TOI is not in the answer) are listed in ``Activations.skipped``. With ``out=DIR`` the rows are streamed
    to shards on disk (atomic writes); running the same call again resumes where it stopped.
    Several layers (a list) give a dict ``{layer: Activations}`` from one pass. ``remote=True`` runs the
    traces on NDIF (nnsight's ``CONFIG.API``; see docs/remote.md). Defaults: batches of 16, 32 new tokens, a
    progress bar, local; ``options=`` (a `RunOptions`) sets them at once, explicit keywords win over it.
    """
    opts = run_options(
        options,
        _CAPTURE_DEFAULTS,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        remote=remote,
    )
    max_new_tokens = opts.max_new_tokens
    if len(samples) == 0:
        raise EmptyInputError("capture() got no samples", "pass at least one Sample")
    selector = as_selector(at)
    single = isinstance(layer, int)
    layers = sorted({vlm.layer_index(x) for x in ([layer] if single else layer)})
    if isinstance(selector, Generated) and reduce is None:
        reduce = selector.reduce
    key = {
        "model": vlm.name,
        "lora": getattr(vlm, "lora", None) if getattr(vlm, "lora_enabled", False) else None,
        "layers": layers,
        "selector": selector.spec(),
        "reduce": reduce,
        "dtype": str(dtype),
        "hidden_size": vlm.hidden_size,
        "max_new_tokens": max_new_tokens if selector.needs_generation else None,
    }
    store = ActivationStore(out, key) if out is not None else None
    done = store.done_ids if store is not None else set()
    todo = [s for s in samples if s.id not in done]
    rows = _Rows(layers)
    mem: list[tuple[dict[str, Tensor], list[str], list[str], list[dict[str, Any]]]] = []
    skipped: list[str] = []
    examples: list[str] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        examples.extend(rows.skipped_answers[: 3 - len(examples)])
        if store is not None:
            store.append(
                rows.stacked(vlm.hidden_size), rows.ids, rows.sample_ids, rows.answers, rows.meta, rows.skipped
            )
        else:
            mem.append((rows.stacked(vlm.hidden_size), rows.ids, rows.answers, rows.meta))
            skipped.extend(rows.skipped)
        rows.clear()
        pending = 0

    build = _rows_from_generation if selector.needs_generation else _rows_from_forward
    counts = {"kept": 0, "skipped": 0}  # over all shards of this call

    def postfix() -> dict[str, int]:
        return {"kept": counts["kept"] + len(rows.ids), "skipped": counts["skipped"] + len(rows.skipped)}

    loop = batched(
        todo,
        opts,
        f"capture {selector}",
        total=len(samples),
        initial=len(samples) - len(todo),
        leave=True,
        postfix=postfix,
    )
    for _, batch in loop:
        build(vlm, batch, selector, layers, reduce, rows, dtype, opts)
        pending += len(batch)
        if pending >= shard_size:
            counts["kept"] += len(rows.ids)
            counts["skipped"] += len(rows.skipped)
            flush()
    flush()

    if store is not None:
        store.finish()
        result = {layer: store.activations(layer) for layer in layers}
    else:
        result = {}
        for layer in layers:
            name = f"layer_{layer}"
            tensor = torch.cat([m[0][name] for m in mem]) if mem else torch.zeros(0, vlm.hidden_size)
            result[layer] = Activations(
                tensor=tensor,
                ids=[i for m in mem for i in m[1]],
                answers=[a for m in mem for a in m[2]],
                meta=[x for m in mem for x in m[3]],
                info={**key, "layer": layer},
                skipped=list(skipped),
            )
    by_id = {s.id: s for s in samples}
    for acts in result.values():
        acts.info["versions"] = provenance()
        acts.samples = (
            [by_id[m_id.split("#")[0]] for m_id in acts.ids]
            if all(i.split("#")[0] in by_id for i in acts.ids)
            else None
        )

    first = result[layers[0]]
    if isinstance(selector, TokenOfInterest) and len(first) == 0:
        shown = "; ".join(repr(a) for a in examples) or "answers not shown: resumed from disk"
        raise TokenOfInterestError(
            f"the token of interest {selector.word!r} was never produced in the {len(samples)} answers (e.g. {shown})",
            "check the word against a few generated answers (ns.generate), try variants=True, or raise max_new_tokens",
        )
    if first.skipped:
        warnings.warn(
            f"capture: {len(first.skipped)} of {len(samples)} samples had no selected position "
            f"({selector}); their ids are in Activations.skipped",
            stacklevel=2,
        )
    return first if single else result
