"""Capture residual-stream states at selected positions, batched, inside nnsight; stream to disk and resume."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnshift._version import versions
from nnshift.data import Sample
from nnshift.errors import ArgumentError, EmptyInputError, TokenOfInterestError
from nnshift.generation import ensure_remote_ready, run_generation
from nnshift.models.protocol import VLMLike, check_vlm, token_batch
from nnshift.options import Remote, RunOptions, batched, run_options
from nnshift.positions import Generated, Selector, SelectorLike, TokenOfInterest, as_selector, find_word_token
from nnshift.store import Activations, ActivationStore, prompt_rows, row_id, sample_id_of

__all__ = ["capture", "provenance", "store_key"]

_CAPTURE_DEFAULTS = RunOptions(max_new_tokens=32)


def provenance() -> dict[str, str]:
    """Versions of the libraries that produced a result."""
    return versions()


def _positive_int(value: Any, name: str) -> int:
    """``value`` checked to be an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{name} must be an integer >= 1, got {value!r}", f"pass {name}=1 or more")
    return value


def _layer_list(layer: Any) -> list[int]:
    """``layer`` checked: an int, or a non-empty sequence of ints (no str, bool or float)."""
    hint = "pass layer=12, layer=-1 or layer=[8, 16] (ints; -1 is the last layer)"
    items = [layer] if not isinstance(layer, (list, tuple, range)) else list(layer)
    if not items:
        raise ArgumentError("layer is an empty list", hint)
    bad = [x for x in items if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        raise ArgumentError(f"layer must be an int or a list of ints, got {layer!r}", hint)
    return items


def _check_args(
    samples: Any, layer: Any, selector: Selector, reduce: Any, dtype: Any, sizes: dict[str, Any]
) -> list[Sample]:
    """Validate capture's arguments before any work; the samples as a list."""
    if isinstance(samples, (str, bytes, Sample)) or not isinstance(samples, Iterable):
        raise ArgumentError(
            f"samples must be an iterable of Sample, got {type(samples).__name__}", "pass a list of ns.Sample"
        )
    from nnshift.arguments import as_list

    samples = as_list(samples)
    if samples is None:
        raise ArgumentError("samples cannot be iterated", "pass a list of ns.Sample")
    if not samples:
        raise EmptyInputError("capture() got no samples", "pass at least one Sample")
    wrong = [type(s).__name__ for s in samples if not isinstance(s, Sample)]
    if wrong:
        raise ArgumentError(
            f"samples must be ns.Sample objects, got {wrong[0]}", "wrap inputs in ns.Sample(id, prompt, image)"
        )
    from collections import Counter

    dup = sorted(i for i, n in Counter(s.id for s in samples).items() if n > 1)
    if dup:
        raise ArgumentError(
            f"{len(dup)} sample id(s) appear more than once: {dup[:5]}",
            "give every sample a unique id (Activations.samples of a multi-position capture repeats samples: "
            "pass the original list)",
        )
    _layer_list(layer)
    for name, value in sizes.items():
        _positive_int(value, name)
    if reduce not in (None, "mean"):
        raise ArgumentError(f"unknown reduce {reduce!r}", "use reduce=None (one row per position) or reduce='mean'")
    if reduce == "mean" and isinstance(selector, TokenOfInterest):
        raise ArgumentError(
            "reduce='mean' does not apply to token_of_interest (one position per sample)", "drop reduce="
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(
            f"dtype must be a floating torch dtype, got {dtype!r}", "use torch.float32, float16 or bfloat16"
        )
    return samples


def _adapter_settings(adapter: Any) -> Any:
    """The adapter's fields, stable across processes (functions by qualified name, notes left out)."""
    import dataclasses

    if not dataclasses.is_dataclass(adapter):
        return type(adapter).__name__
    out = {}
    for f in dataclasses.fields(adapter):
        value = getattr(adapter, f.name)
        if f.name != "notes":
            out[f.name] = f"{value.__module__}.{value.__qualname__}" if callable(value) else value
    return out


def _processor_settings(vlm: VLMLike) -> str:
    """SHA-256 of what turns a sample into input ids: chat template, tokenizer, image processor, adapter."""
    import hashlib
    import json

    tok = vlm.tokenizer
    proc = getattr(vlm, "processor", None)
    image_proc = getattr(proc, "image_processor", None)
    settings = {
        "template": getattr(proc, "chat_template", None) or getattr(tok, "chat_template", None),
        "tokenizer": [type(tok).__name__, len(tok), getattr(tok, "bos_token", None), getattr(tok, "eos_token", None)],
        "image_processor": image_proc.to_dict() if image_proc is not None and hasattr(image_proc, "to_dict") else None,
        "adapter": _adapter_settings(getattr(vlm, "adapter", None)),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_key(
    vlm: Any,
    samples: Sequence[Sample],
    layers: list[int],
    selector: Selector,
    reduce: str | None,
    dtype: torch.dtype,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Everything that changes captured numbers: model, weights, adapter, dtypes, processor, positions, dataset."""
    from nnshift.artifacts import weights_fingerprint
    from nnshift.data import dataset_fingerprint

    hf = vlm.hf
    params = list(hf.named_parameters())
    lora_on = bool(getattr(vlm, "lora_enabled", False))
    lora = getattr(vlm, "lora", None) if lora_on or getattr(vlm, "lora_merged", False) else None
    config = getattr(hf, "config", None)
    gen = {"max_new_tokens": max_new_tokens, "greedy": True, "eos": vlm.eos_token_ids}
    return {
        "model": vlm.name,
        "revision": getattr(config, "_commit_hash", None),
        "weights": weights_fingerprint((n, p) for n, p in params if "lora_" not in n),
        "lora": lora,
        "lora_weights": weights_fingerprint((n, p) for n, p in params if "lora_" in n) if lora_on else None,
        "model_dtype": str(vlm.dtype),
        "processor": _processor_settings(vlm),
        "layers": layers,
        "selector": selector.spec(),
        "reduce": reduce,
        "dtype": str(dtype),
        "hidden_size": vlm.hidden_size,
        "generation": gen if selector.needs_generation else None,
        "dataset": dataset_fingerprint(samples),
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


@dataclass(frozen=True)
class _Job:
    """What every batch of one capture shares: the model, the selector, the layers and the run settings."""

    vlm: VLMLike
    selector: Selector
    layers: list[int]
    reduce: str | None
    dtype: torch.dtype
    options: RunOptions


def _rows_from_generation(job: _Job, batch: Sequence[Sample], rows: _Rows) -> None:
    """Rows of a batch whose selector needs the model's own answer (token of interest, generated tokens)."""
    vlm, selector, layers, reduce, dtype = job.vlm, job.selector, job.layers, job.reduce, job.dtype
    run = run_generation(vlm, vlm.prepare(batch), job.options.max_new_tokens, layers=layers, remote=job.options.remote)
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
                rows.add(vecs, row_id(sample.id, f"g{t - 1}"), sample, answer, {**base_meta, "answer_token": t - 1})


def _rows_from_forward(job: _Job, batch: Sequence[Sample], rows: _Rows) -> None:
    """Rows of a batch whose selector reads prompt positions (one forward pass)."""
    vlm, layers, dtype, remote = job.vlm, job.layers, job.dtype, job.options.remote
    if remote:
        ensure_remote_ready()
    inputs = vlm.prepare(batch)
    ids, attn = token_batch(inputs)
    mask = job.selector.prefill_mask(attn.cpu(), vlm.image_token_mask(ids).cpu())
    dev_mask = mask.to(ids.device)
    with vlm.model.trace(dict(inputs), remote=remote):
        saved: Any = list().save()  # type: ignore[attr-defined]  # nnsight's saved list
        for layer in layers:
            saved.append(vlm.get_resid(layer)[dev_mask].detach().cpu())
    flat = {layer: s.to(dtype) for layer, s in zip(layers, saved, strict=True)}
    layout = prompt_rows(mask, attn, batch, job.reduce)
    kept = {sample.id for _, sample, _, _ in layout}
    rows.skipped.extend(s.id for s in batch if s.id not in kept)
    for rid, sample, meta, part in layout:
        vecs = {layer: flat[layer][part].float().mean(0).to(dtype) for layer in layers}
        rows.add(vecs, rid, sample, "", meta)


def _assemble(
    vlm: VLMLike,
    samples: list[Sample],
    layers: list[int],
    key: dict[str, Any],
    store: ActivationStore | None,
    mem: list[tuple[dict[str, Tensor], list[str], list[str], list[dict[str, Any]]]],
    skipped: list[str],
) -> dict[int, Activations]:
    """The per-layer `Activations` of a finished capture (from the store, or from the shards kept in memory)."""
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
        owners = [sample_id_of(i, by_id) for i in acts.ids]
        acts.samples = [by_id[o] for o in owners] if all(o in by_id for o in owners) else None

    return result


def capture(
    vlm: VLMLike,
    samples: Iterable[Sample],
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
    remote: Remote | None = None,
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
    traces on NDIF (nnsight's ``CONFIG.API``; see docs/remote.md). Everything that changes the numbers is
    the store's key: resuming with another model, weights, adapter, dtype, processor, layer, selector,
    generation setting or dataset raises `StoreMismatchError` naming the field. Defaults: batches of 16,
    32 new tokens, a progress bar, local; ``options=`` (a `RunOptions`) sets them at once, explicit keywords
    win over it.
    """
    check_vlm(vlm, "capture()")
    opts = run_options(
        options,
        _CAPTURE_DEFAULTS,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        remote=remote,
    )
    selector = as_selector(at)
    sizes = {"batch_size": opts.batch_size, "max_new_tokens": opts.max_new_tokens, "shard_size": shard_size}
    samples = _check_args(samples, layer, selector, reduce, dtype, sizes)
    single = not isinstance(layer, (list, tuple, range))
    layers = sorted({vlm.layer_index(x) for x in _layer_list(layer)})
    if isinstance(selector, Generated) and reduce is None:
        reduce = selector.reduce
    key = store_key(vlm, samples, layers, selector, reduce, dtype, opts.max_new_tokens)
    store = ActivationStore(out, key, expected=len(samples)) if out is not None else None
    try:
        return _capture_run(
            vlm,
            samples,
            selector,
            layers,
            single,
            reduce,
            key,
            store,
            opts,
            shard_size,
            dtype,
        )
    finally:
        if store is not None:
            store.close()


def _capture_run(
    vlm: VLMLike,
    samples: list[Sample],
    selector: Selector,
    layers: list[int],
    single: bool,
    reduce: str | None,
    key: dict[str, Any],
    store: ActivationStore | None,
    opts: RunOptions,
    shard_size: int,
    dtype: torch.dtype,
) -> Activations | dict[int, Activations]:
    """The capture loop behind `capture`, after validation (the store, if any, is locked)."""
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
    job = _Job(vlm, selector, layers, reduce, dtype, opts)
    for _, batch in loop:
        build(job, batch, rows)
        pending += len(batch)
        if pending >= shard_size:
            counts["kept"] += len(rows.ids)
            counts["skipped"] += len(rows.skipped)
            flush()
    flush()

    result = _assemble(vlm, samples, layers, key, store, mem, skipped)
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
