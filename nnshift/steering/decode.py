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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from nnshift.generation import BatchRun, trim_answer
from nnshift.steering.patches import BoundPatch, PatchSet

__all__ = ["decode_from_cache", "plain_greedy"]

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


class _Hooks:
    """Forward hooks on the patched blocks: step 0 edits as the prompt pass, later steps as decode steps."""

    def __init__(self, vlm: Any, read: int | None) -> None:
        self.vlm, self.read = vlm, read
        self.step = 0
        self.bound: BoundPatch | None = None
        self.first: Tensor | None = None  # the read layer's state at step 0, after its edit

    def hook(self, layer: int) -> Any:
        def run(module: Any, args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            edit = None if self.bound is None else self.bound.edits.get(layer)
            out = None
            if edit is not None:
                out = edit.edit_prefill(h) if self.step == 0 else edit.edit_decode(h)
            new = h if out is None else out
            if layer == self.read and self.step == 0:
                self.first = new[:, -1, :].detach()
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


def decode_from_cache(
    vlm: Any,
    input_ids: Int[Tensor, "r s"],
    attention_mask: Int[Tensor, "r s"],
    cache: Any,
    patch: PatchSet | None,
    max_new_tokens: int,
    read_last: bool = False,
) -> BatchRun:
    """Greedy answers of ``r`` rows whose cache holds every prompt position but the last (left padded rows).

    ``patch`` covers the ``r`` rows (per-row alpha/rows); step 0 applies its prompt-pass edit to the last prompt
    position, later steps its decode edit. With ``read_last``, ``states[last layer][0]`` is the last layer's
    (edited) state at the last prompt position, as `run_generation` reads it. The cache is consumed.
    """
    n = int(input_ids.shape[0])
    last = vlm.n_layers - 1
    hooks = _Hooks(vlm, last if read_last else None)
    active = torch.arange(n)
    attn = attention_mask
    cur = input_ids[:, -1:]
    hooks.bound = _bind(vlm, patch, None, cur)
    layers = sorted({*(hooks.bound.layers if hooks.bound is not None else []), *([last] if read_last else [])})
    out: list[list[int]] = [[] for _ in range(n)]
    eos_ids = list(vlm.eos_token_ids)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=input_ids.dtype)
    with torch.no_grad(), _hooked(vlm, hooks, layers):
        for step in range(max_new_tokens):
            hooks.step = step
            pos = (attn.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
            logits = vlm.hf(
                input_ids=cur, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True
            ).logits
            nxt = logits[:, -1, :].argmax(-1)
            for r, t in zip(active.tolist(), nxt.tolist(), strict=True):
                out[r].append(int(t))
            going = ~torch.isin(nxt.cpu(), eos)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep.to(nxt.device))
                active, attn, nxt = active[keep], attn[keep.to(attn.device)], nxt[keep.to(nxt.device)]
                hooks.bound = _bind(vlm, patch, active, nxt[:, None])
            cur = nxt[:, None].to(input_ids.dtype)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
    states = {} if not read_last or hooks.first is None else {last: [hooks.first]}
    return BatchRun(
        tokens=[trim_answer(row, eos_ids) for row in out],
        states=states,
        prompt_len=int(input_ids.shape[1]),
    )
