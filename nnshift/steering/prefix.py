"""Prompt-prefix sharing: run the prompt minus its last token once per sample, then every grid point from there.

When no patch edits a prompt position other than the last one (positions made of ``"last_prompt"`` and
``"generated"`` only), every steered copy of a sample and its unsteered copy have the same hidden states at every
earlier prompt position and every layer (causal attention), so their KV cache there is the same. `run_shared`
computes that cache once per sample (one forward of the prompt minus its last token, with the position ids
generation uses, stopped once the last block's attention has filled its keys and values), repeats it ``copies``
times along the batch (sample-major, like the sweep's rows) and continues from the last prompt token: step 0 is
the last prompt position alone, then the decode steps (`nnshift.steering.decode`: plain forwards with the patch
as torch hooks, finished rows leaving the batch; HF generation inside nnsight when the model's generation config
has logits processors).

This is used only where it was shown to generate what the plain run does: locally, for a model family whose
adapter says so (`ModelAdapter.shares_prompt_prefix`, verified on the tiny models and the shapes zoo by
tests/test_sweep_prefix.py), for positions that spare the prefix or a patch at the model's last layer (whatever
its positions: see `can_share_prefix`), and for prompts whose last token is text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers.cache_utils import DynamicCache

from nnshift.errors import SteeringError
from nnshift.generation import BatchRun, run_generation
from nnshift.positions import All, Generated, Image, LastPrompt, Prompt, Selector, Text
from nnshift.steering.decode import decode_from_cache, free_rows, layer_patches, plain_greedy
from nnshift.steering.deltas import selector_parts
from nnshift.steering.kv import fork_cache, select_rows
from nnshift.steering.patches import PatchSet

__all__ = [
    "batch_allows_sharing",
    "can_share_prefix",
    "can_split_prefix",
    "fork_cache",
    "prefix_cache",
    "run_shared",
    "shares_prefix",
    "spares_prompt_prefix",
]

#: selectors whose choice at a prompt column depends on that column alone (not on where the prompt ends);
#: `Image` is left out: bound to the last column alone (a text token) it finds no image and refuses
_COLUMN_LOCAL = (All, Prompt, Text, Generated)


def spares_prompt_prefix(selector: Selector) -> bool:
    """Whether ``selector`` leaves every prompt position but the last one alone (``last_prompt`` / ``generated``)."""
    return all(type(p) in (LastPrompt, Generated) for p in selector_parts(selector))


def _ready(vlm: Any, remote: object) -> bool:
    """A local run on a model whose family is verified for prefix sharing."""
    adapter = getattr(vlm, "adapter", None)
    return remote is False and getattr(adapter, "shares_prompt_prefix", False) is True and hasattr(vlm, "hf")


def shares_prefix(vlm: Any, remote: object = False) -> bool:
    """Whether ``vlm``'s family is verified for prompt-prefix sharing and the run is local (weights loaded)."""
    return _ready(vlm, remote) and not getattr(vlm, "is_meta", False)


def can_share_prefix(vlm: Any, selector: Selector, remote: object, layer: int | None = None) -> bool:
    """Whether grid points patched at ``selector`` (at ``layer``) may share the prompt prefix on ``vlm``.

    The run must be local and the family verified; the positions must spare the prefix, or ``layer`` must be the
    model's last layer: its output at an earlier prompt position feeds only that position's logits, which
    generation never reads, and no layer's KV cache (each layer's keys and values come from its input).
    Image positions are left out: the continuation binds the patch to the last (text) column, where
    ``image()`` finds no image token and refuses.
    """
    if not _ready(vlm, remote):
        return False
    if spares_prompt_prefix(selector):
        return True
    last = layer is not None and vlm.layer_index(layer) == vlm.n_layers - 1
    return last and not any(isinstance(p, Image) for p in selector_parts(selector))


def can_split_prefix(vlm: Any, selector: Selector, remote: object) -> bool:
    """Whether points patched at ``selector`` on earlier prompt positions may share the prefix below their layer.

    A patch at layer ``l`` leaves the prefix's states, and so its keys and values, unchanged up to layer ``l``
    (layer ``l``'s own keys and values come from its input); only the layers above are recomputed, from the
    patched output of layer ``l``. The selector must choose each prompt column by that column alone (`All`,
    `Prompt`, `Text`, `Generated`; not `LastPrompt`, whose column moves when the prompt is cut, nor `Image`,
    see `can_share_prefix`).
    """
    return _ready(vlm, remote) and all(type(p) in _COLUMN_LOCAL for p in selector_parts(selector))


def batch_allows_sharing(vlm: Any, inputs: dict[str, Tensor]) -> bool:
    """Whether a prepared batch can be split before its last token: left padding, >= 2 tokens, a text last token."""
    ids: Int[Tensor, "b s"] = inputs["input_ids"]
    attn = inputs.get("attention_mask")
    if ids.ndim != 2 or ids.shape[1] < 2 or attn is None or tuple(attn.shape) != tuple(ids.shape):
        return False
    if not bool((attn[:, -1] == 1).all()) or not bool((attn.sum(1) >= 2).all()):
        return False
    return not bool(vlm.image_token_mask(ids)[:, -1].any())


class _CacheFilled(Exception):
    """Raised by a hook once the last block's keys and values are in the KV cache: nothing after is needed."""


def _last_attention(vlm: Any) -> Any:
    """The last decoder block's attention module (`ModelAdapter.attention`), or None when the block has none."""
    return getattr(vlm.layer_module(vlm.n_layers - 1), getattr(vlm.adapter, "attention", "self_attn"), None)


def _prefix_pass(vlm: Any, inputs: dict[str, Tensor], capture: Sequence[int]) -> tuple[Any, dict[int, Tensor]]:
    """The KV cache of every prompt position but the last (one row per sample) and the states after ``capture``.

    One forward of the model on the prefix, with the position ids generation uses (counted from each row's first
    real token); it stops once the last block's attention has put its keys and values in the cache (the last
    block's feed-forward part and the unembedding feed nothing the continuation reads).
    """
    prefix = {k: (v[:, :-1] if k in ("input_ids", "attention_mask") else v) for k, v in inputs.items()}
    mask: Int[Tensor, "b s"] = prefix["attention_mask"]
    states: dict[int, Tensor] = {}

    def keeper(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            states[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def stop(module: Any, args: Any, output: Any) -> None:
        raise _CacheFilled

    handles = [vlm.layer_module(layer).register_forward_hook(keeper(layer)) for layer in capture]
    attention = _last_attention(vlm)
    if attention is not None:
        handles.append(attention.register_forward_hook(stop))
    cache = DynamicCache(config=vlm.hf.config)
    try:
        with torch.no_grad():
            vlm.hf(
                **prefix, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), past_key_values=cache, use_cache=True
            )
    except _CacheFilled:
        pass
    finally:
        for h in handles:
            h.remove()
    if cache.get_seq_length() != prefix["input_ids"].shape[1] or len(cache.layers) != vlm.n_layers:
        raise SteeringError(
            f"the prompt-prefix pass of {type(vlm.hf).__name__} did not fill a KV cache of the prefix's length",
            "set shares_prompt_prefix=False on this model's adapter (the sweep then runs every prompt in full)",
        )
    return cache, states


def _above(vlm: Any, prefix: dict[str, Tensor], layer: int, steered: Tensor) -> Any:
    """The KV cache of the layers above ``layer`` over the prefix, from ``steered`` (its patched output).

    The blocks up to ``layer`` are skipped (nnsight ``skip``), so the prompt is not run again below the patch;
    image inputs are left out, since nothing they feed is computed. The pass stops once the last block's
    attention has filled its keys and values.
    """
    filler = (steered,) if vlm.block_returns_tuple else steered
    cache = DynamicCache(config=vlm.hf.config)
    name = getattr(vlm.adapter, "attention", "self_attn")
    with torch.no_grad(), vlm.model.trace(dict(prefix), use_cache=True, past_key_values=cache) as tracer:
        for j in range(layer + 1):
            vlm.layer(j).skip(filler)
        if _last_attention(vlm) is not None:
            getattr(vlm.layer(vlm.n_layers - 1), name).output  # noqa: B018  (wait for it, then stop)
            tracer.stop()
    return cache


def prefix_cache(vlm: Any, inputs: dict[str, Tensor], copies: int) -> Any:
    """The KV cache of every prompt position but the last, computed once per row, each row repeated ``copies`` times."""
    cache, _ = _prefix_pass(vlm, inputs, ())
    if copies > 1:
        cache.batch_repeat_interleave(copies)
    return cache


def _split_layers(split_at: Sequence[int | None] | None) -> list[int]:
    return sorted({x for x in split_at or () if x is not None})


def _split_cache(
    vlm: Any,
    inputs: dict[str, Tensor],
    copies: int,
    patch: PatchSet,
    split_at: Sequence[int | None],
    base: Any,
    states: dict[int, Tensor],
    built: Tensor,
) -> Any:
    """The continuation's KV cache of the rows ``built`` of ``B x copies`` (sample-major): copy ``c`` shares the
    prefix below ``split_at[c]``.

    ``base`` / ``states``: the prefix pass's cache and its states after the split layers (``base`` is consumed).
    """
    need = _split_layers(split_at)
    n = int(inputs["input_ids"].shape[0])
    parts: dict[int, Any] = {}  # split layer -> KV cache of its copies (layers above it)
    copies_at: dict[int, list[int]] = {}  # split layer -> the copies split there
    for layer in need:
        cs = [c for c, x in enumerate(split_at) if x == layer]
        rows = [b * copies + c for b in range(n) for c in cs]
        prefix = {k: inputs[k][:, :-1].repeat_interleave(len(cs), 0) for k in ("input_ids", "attention_mask")}
        h = states[layer].repeat_interleave(len(cs), 0)
        edit = patch.select_rows(rows).bind(vlm, prefix).edits.get(layer)
        steered = edit.edit_prefill(h) if edit is not None else None
        parts[layer] = _above(vlm, prefix, layer, h if steered is None else steered)
        copies_at[layer] = cs
    picks: dict[tuple[int, ...], Tensor] = {}  # split layers below j -> source row of each continuation row
    for j, cache_layer in enumerate(base.layers):
        below = tuple(x for x in need if j > x)
        if below not in picks:
            picks[below] = _rows_for(n, split_at, below, copies_at).index_select(0, built)
        pick = picks[below].to(cache_layer.keys.device)
        keys = [cache_layer.keys] + [parts[x].layers[j].keys for x in below]
        values = [cache_layer.values] + [parts[x].layers[j].values for x in below]
        cache_layer.keys = torch.cat(keys).index_select(0, pick)
        cache_layer.values = torch.cat(values).index_select(0, pick)
    return base


def _rows_for(
    n: int, split_at: Sequence[int | None], below: tuple[int, ...], copies_at: dict[int, list[int]]
) -> Int[Tensor, " rows"]:
    """For each continuation row (sample-major), its row in the concatenation [base rows, each ``below`` part].

    A copy split at a layer in ``below`` takes its own recomputed row; every other copy its sample's base row.
    """
    starts, at = {}, n
    for x in below:
        starts[x] = at
        at += n * len(copies_at[x])
    index = []
    for b in range(n):
        for c, at_layer in enumerate(split_at):
            if at_layer in starts:
                cs = copies_at[at_layer]
                index.append(starts[at_layer] + b * len(cs) + cs.index(c))
            else:
                index.append(b)
    return torch.tensor(index)


def run_shared(
    vlm: Any,
    inputs: dict[str, Tensor],
    copies: int,
    patch: PatchSet | None,
    max_new_tokens: int,
    layers: Sequence[int] = (),
    split_at: Sequence[int | None] | None = None,
    on_prefix: Callable[[Any], None] | None = None,
) -> BatchRun:
    """Greedy generation of every row of ``inputs`` repeated ``copies`` times (sample-major) from a shared prefix.

    ``patch`` covers the ``len(inputs) x copies`` rows (per-row alpha/rows); it is bound to the last prompt
    column, so its step 0 edits the last prompt position. ``split_at[c]`` (a layer, or None) marks copies whose
    patch also edits earlier prompt positions at that layer: they share the prefix below it (`can_split_prefix`).
    ``on_prefix`` is called with the unsteered prefix's KV cache (one row per sample, a `fork_cache` the run does
    not touch), e.g. to score answers under the unsteered model (`nnshift.steering.fluency.nll_from_prefix`).
    The result is `run_generation`'s on the repeated rows.
    """
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    cont: dict[str, Any] = {
        "input_ids": ids.repeat_interleave(copies, 0),
        "attention_mask": attn.repeat_interleave(copies, 0),
    }
    need = _split_layers(split_at)
    if need and (patch is None or split_at is None or len(split_at) != copies):
        raise SteeringError("split_at needs the patch and one entry per copy", "pass split_at=[layer or None] * copies")
    base, states = _prefix_pass(vlm, inputs, need)
    if on_prefix is not None:
        on_prefix(fork_cache(base))
    last = vlm.n_layers - 1
    decoder = plain_greedy(vlm) and set(layers) <= {last}
    n = int(ids.shape[0])
    built, start = _start_rows(vlm, patch, split_at, n, copies) if decoder else (list(range(n * copies)), None)
    rows = torch.tensor(built, dtype=torch.long)
    if need:
        assert patch is not None and split_at is not None  # checked above
        cache = _split_cache(vlm, inputs, copies, patch, split_at, base, states, rows)
    else:
        cache = base
        select_rows(cache, rows // copies)
    if decoder:
        pick = (rows // copies).to(ids.device)
        return decode_from_cache(
            vlm,
            ids.index_select(0, pick),
            attn.index_select(0, pick),
            cache,
            patch,
            max_new_tokens,
            read_last=last in layers,
            start_rows=start,
        )
    edit = None
    if patch is not None:
        edit = patch.bind(
            vlm, {"input_ids": cont["input_ids"][:, -1:], "attention_mask": cont["attention_mask"][:, -1:]}
        )
    cont["past_key_values"] = cache
    return run_generation(vlm, cont, max_new_tokens, layers=layers, edit=edit, remote=False)


def _start_rows(
    vlm: Any, patch: PatchSet | None, split_at: Sequence[int | None] | None, n: int, copies: int
) -> tuple[list[int], list[int]]:
    """Which continuation rows (``n x copies``, sample-major) to build, and the built row each one starts from.

    The copies of a sample that are not split and that no patch edits below the model's last layer share one
    row at step 0 (`decode_from_cache`); every other copy has its own.
    """
    unedited = free_rows(layer_patches(patch, vlm.n_layers, last=False), n * copies)
    built: list[int] = []
    start: list[int] = []
    for b in range(n):
        shared = None
        for c in range(copies):
            r = b * copies + c
            free = unedited[r] and (split_at is None or split_at[c] is None)
            if free and shared is not None:
                start.append(shared)
                continue
            start.append(len(built))
            if free:
                shared = len(built)
            built.append(r)
    return built, start
