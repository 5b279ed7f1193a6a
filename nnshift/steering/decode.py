"""A local greedy decoder that continues from a prefilled KV cache, with patches applied by forward hooks.

The sweep's shared path (`nnshift.steering.prefix.run_shared`) has run the prompt minus its last token once per
sample; every grid point then needs step 0 (the last prompt token) and the decode steps. `decode_from_cache` runs
those steps as plain forwards of ``vlm.hf`` (no nnsight trace: each edit is a torch forward hook on the patched
decoder block calling the same `LayerEdit` arithmetic as the trace path), and drops a row from the batch as soon as
it has produced an end token, so a grid of mostly short answers does not keep computing the finished ones.

Each step feeds what HF's greedy generation feeds: the previous token, the attention mask grown by one column,
position ids counted from each row's first real token, and the cache. Rows are independent (causal attention
within a row), so leaving finished rows out changes nothing for the others; a finished row's answer is its ids
up to the end token, as `nnshift.generation.run_generation` reports it. Used only where `plain_greedy` holds
(no logits processor in the model's generation config) and on the model families verified for prefix sharing;
tests/test_sweep_prefix.py compares every result with the nnsight path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.errors import SteeringError
from nnshift.generation import BatchRun, trim_answer
from nnshift.steering.deltas import is_plain
from nnshift.steering.kv import select_rows
from nnshift.steering.patches import BoundPatch, PatchSet

__all__ = ["decode_from_cache", "free_rows", "layer_patches", "plain_greedy"]

#: answer rows unembedded at once (bounds the float32 logits held per step: rows x vocabulary)
_CHUNK = 256

#: generation-config fields that make HF's greedy choice differ from the logits' argmax (when set)
_PROCESSORS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
}


def plain_greedy(vlm: Any) -> bool:
    """Whether HF's greedy generation of ``vlm`` picks each token as the argmax of the raw logits."""
    config = getattr(vlm.hf, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, name, default) in (default, None, []) for name, default in _PROCESSORS.items())


class _StepDone(Exception):
    """Raised after the last block: the final norm and unembedding run per answer row in `_tokens` instead."""


class _Hooks:
    """Forward hooks on the patched blocks: step 0 edits as the prompt pass, later steps as decode steps."""

    def __init__(self, vlm: Any, read: int | None) -> None:
        self.vlm, self.read = vlm, read
        self.step = 0
        self.bound: BoundPatch | None = None
        self.state: Tensor | None = None  # the read layer's state at the last position of this step, after its edit

    def hook(self, layer: int) -> Any:
        def run(module: Any, args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            edit = None if self.bound is None else self.bound.edits.get(layer)
            out = None
            if edit is not None:
                out = edit.edit_prefill(h) if self.step == 0 else edit.edit_decode(h)
            new = h if out is None else out
            if layer == self.read:
                self.state = new[:, -1, :].detach()
                raise _StepDone  # the last block has filled its keys and values; the tokens come from `_tokens`
            if out is None:
                return None
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return run


@contextmanager
def _hooked(vlm: Any, hooks: _Hooks, layers: list[int]) -> Iterator[None]:
    handles = [vlm.layer_module(layer).register_forward_hook(hooks.hook(layer)) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _bind(vlm: Any, patch: PatchSet | None, rows: Tensor | None, last: Int[Tensor, "r 1"]) -> BoundPatch | None:
    """``patch`` (for ``rows`` of it; all when None), bound to one text column (step 0 edits it as the last prompt
    position)."""
    if patch is None:
        return None
    part = patch if rows is None else patch.select_rows(rows.tolist())
    return part.bind(vlm, {"input_ids": last, "attention_mask": torch.ones_like(last)})


def layer_patches(patch: PatchSet | None, n_layers: int, last: bool) -> PatchSet | None:
    """The patches of ``patch`` at the model's last layer (``last``) or below it (None when there is none)."""
    if patch is None:
        return None
    keep = [p for p in patch.patches if (p.layer % n_layers == n_layers - 1) == last]
    return PatchSet(keep) if keep else None


class _Rows:
    """The answer rows still generating, and the forward rows they read at the next step.

    An answer row whose patch edits nothing below the model's last layer (``free``) shares its forward row with
    every other free row of the same sample that has generated the same ids so far: their states are the same at
    every layer (nothing below the last block is edited, and no layer's keys and values come from the last
    block's output); only their last-layer edits differ, and those are applied to the shared output, per answer
    row, before the unembedding (`_tokens`).
    """

    def __init__(self, start: Tensor, free: list[bool]) -> None:
        self.free = free
        self.active = torch.arange(int(start.shape[0]))  # answer rows still generating
        self.reads = start.clone()  # the forward row each active answer row reads
        self.rep = self._representatives(int(start.max()) + 1 if start.numel() else 0)

    def _representatives(self, n_forward: int) -> Tensor:
        """An active answer row reading each forward row (whose below-last-layer patch the forward row gets)."""
        rep = torch.full((n_forward,), -1, dtype=torch.long)
        for r, f in reversed(list(zip(self.active.tolist(), self.reads.tolist(), strict=True))):
            rep[f] = r
        return rep

    def advance(self, tokens: Tensor, going: Tensor) -> Tensor | None:
        """Drop the finished rows, regroup the others by (forward row, new token); the old forward row of each new
        one (None when the forward rows are unchanged)."""
        n_old = int(self.rep.shape[0])
        self.active, reads, tokens = self.active[going], self.reads[going], tokens[going]
        keys: dict[tuple[int, int], int] = {}
        src: list[int] = []
        new_reads: list[int] = []
        for row, f, t in zip(self.active.tolist(), reads.tolist(), tokens.tolist(), strict=True):
            key = (f, int(t)) if self.free[row] else (-1 - row, 0)
            if key not in keys:
                keys[key] = len(src)
                src.append(f)
            new_reads.append(keys[key])
        self.reads = torch.tensor(new_reads, dtype=torch.long)
        self.rep = self._representatives(len(src))
        return None if src == list(range(n_old)) else torch.tensor(src, dtype=torch.long)


def _tokens(
    vlm: Any, h: Float[Tensor, "n d"], top: PatchSet | None, rows: Tensor, step: int, like: Tensor
) -> tuple[Float[Tensor, "n d"], Int[Tensor, " n"]]:
    """Each answer row's last-layer edit applied to its forward row's last-block output ``h`` (prompt-pass edit at
    step 0, decode edit after), and its greedy token (final norm and unembedding: `VLM.logit_lens`)."""
    bound = _bind(vlm, top, rows, like[:, -1:])
    edit = None if bound is None else bound.edits.get(vlm.n_layers - 1)
    if edit is not None:
        edited = edit.edit_prefill(h[:, None, :]) if step == 0 else edit.edit_decode(h[:, None, :])
        if edited is not None:
            h = edited[:, 0, :]
    tokens = [vlm.logit_lens(h[i : i + _CHUNK]).argmax(-1) for i in range(0, int(h.shape[0]), _CHUNK)]
    return h, torch.cat(tokens).to(like.device)


def free_rows(below: PatchSet | None, n: int) -> list[bool]:
    """Which of ``n`` answer rows no patch edits below the last layer (``below``: plain patches of zero strength on
    them)."""
    if below is None:
        return [True] * n
    if not all(is_plain(p) for p in below.patches):
        return [False] * n
    scales = [p.scale.tolist() if isinstance(p.scale, Tensor) else [p.scale] * n for p in below.patches]
    return [all(s[r] == 0 for s in scales) for r in range(n)]


def decode_from_cache(
    vlm: Any,
    input_ids: Int[Tensor, "r s"],
    attention_mask: Int[Tensor, "r s"],
    cache: Any,
    patch: PatchSet | None,
    max_new_tokens: int,
    read_last: bool = False,
    start_rows: Sequence[int] | None = None,
) -> BatchRun:
    """Greedy answers of rows whose cache holds every prompt position but the last (left padded rows).

    ``start_rows[r]``: the row of ``input_ids`` / ``attention_mask`` / ``cache`` that answer row ``r`` starts from
    (default: row ``r``); rows may share one only when ``patch`` edits none of them below the model's last layer.
    Such rows also share their forward rows later while their ids are the same (`_Rows`). ``patch`` covers the
    answer rows (per-row alpha/rows); step 0 applies its prompt-pass edit to the last prompt position, later steps
    its decode edit. With ``read_last``, ``states[last layer][0]`` is the last layer's (edited) state at the last
    prompt position, as `run_generation` reads it. The cache is consumed.
    """
    last = vlm.n_layers - 1
    start = torch.arange(int(input_ids.shape[0])) if start_rows is None else torch.tensor(list(start_rows))
    below, top = layer_patches(patch, vlm.n_layers, False), layer_patches(patch, vlm.n_layers, True)
    free = free_rows(below, int(start.shape[0]))
    shared = Counter(start.tolist())
    if any(shared[f] > 1 and not ok for f, ok in zip(start.tolist(), free, strict=True)):
        raise SteeringError("answer rows edited below the last layer share a start row", "give each its own row")
    rows = _Rows(start, free)
    hooks = _Hooks(vlm, last)
    layers = sorted({*(p.layer % vlm.n_layers for p in (patch.patches if patch is not None else ())), last})
    eos_ids = list(vlm.eos_token_ids)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=input_ids.dtype)
    out: list[list[int]] = [[] for _ in range(int(start.shape[0]))]
    attn, feed = attention_mask, input_ids[:, -1:]
    first: Tensor | None = None
    with torch.no_grad(), _hooked(vlm, hooks, layers):
        for step in range(max_new_tokens):
            hooks.step = step
            hooks.bound = _bind(vlm, below, rows.rep, feed)
            pos = (attn.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
            hooks.state = None
            with suppress(_StepDone):
                vlm.hf(input_ids=feed, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True)
            if hooks.state is None:
                raise SteeringError(
                    f"the decode step of {type(vlm.hf).__name__} never reached its last block",
                    "set shares_prompt_prefix=False on this model's adapter (sweeps then run HF generation)",
                )
            h = hooks.state.index_select(0, rows.reads.to(hooks.state.device))
            like = input_ids.index_select(0, start[rows.active].to(input_ids.device))
            h, nxt = _tokens(vlm, h, top, rows.active, step, like)
            first = h if step == 0 else first
            for r, t in zip(rows.active.tolist(), nxt.tolist(), strict=True):
                out[r].append(int(t))
            going = ~torch.isin(nxt.cpu(), eos)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            src = rows.advance(nxt.cpu(), going)
            if src is not None:
                select_rows(cache, src)
                attn = attn.index_select(0, src.to(attn.device))
            feed = _feed(rows, nxt[going.to(nxt.device)], attn)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
    return BatchRun(
        tokens=[trim_answer(row, eos_ids) for row in out],
        states={last: [first]} if read_last and first is not None else {},
        prompt_len=int(input_ids.shape[1]),
    )


def _feed(rows: _Rows, tokens: Tensor, attn: Tensor) -> Int[Tensor, "f 1"]:
    """The next input id of each forward row: the token its answer rows generated."""
    feed = torch.zeros((int(attn.shape[0]), 1), dtype=torch.long, device=attn.device)
    feed[rows.reads.to(attn.device), 0] = tokens.to(attn.device)
    return feed
