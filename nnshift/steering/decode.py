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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.generation import BatchRun, trim_answer
from nnshift.steering.kv import select_rows
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


def _layer_patches(patch: PatchSet | None, n_layers: int, last: bool) -> PatchSet | None:
    """The patches of ``patch`` at the model's last layer (``last``) or below it (None when there is none)."""
    if patch is None:
        return None
    keep = [p for p in patch.patches if (p.layer % n_layers == n_layers - 1) == last]
    return PatchSet(keep) if keep else None


def _first_tokens(
    vlm: Any, h: Float[Tensor, "n d"], top: PatchSet | None, last_ids: Int[Tensor, "n 1"]
) -> tuple[Float[Tensor, "n d"], Int[Tensor, " n"]]:
    """Each row's last-layer edit applied to the last block's output at the last prompt position, and its greedy
    token (final norm and unembedding: `VLM.logit_lens`)."""
    bound = _bind(vlm, top, None, last_ids)
    edit = None if bound is None else bound.edits.get(vlm.n_layers - 1)
    if edit is not None:
        edited = edit.edit_prefill(h[:, None, :])
        if edited is not None:
            h = edited[:, 0, :]
    return h, vlm.logit_lens(h).argmax(-1).to(last_ids.device)


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
    (default: row ``r``). Rows may share one when ``patch`` edits none of them below the model's last layer: their
    step 0 (the last prompt position) is then one forward, and each applies its own last-layer edit to the last
    block's output before the unembedding (that edit reaches nothing else at step 0). ``patch`` covers the answer
    rows (per-row alpha/rows); step 0 applies its prompt-pass edit to the last prompt position, later steps its
    decode edit. With ``read_last``, ``states[last layer][0]`` is the last layer's (edited) state at the last
    prompt position, as `run_generation` reads it. The cache is consumed.
    """
    last = vlm.n_layers - 1
    n_in = int(input_ids.shape[0])
    start = torch.arange(n_in) if start_rows is None else torch.tensor(list(start_rows), dtype=torch.long)
    rep = torch.full((n_in,), -1, dtype=torch.long)  # an answer row of each input row (its first)
    for r, i in reversed(list(enumerate(start.tolist()))):
        rep[i] = r
    hooks = _Hooks(vlm, last)
    hooks.bound = _bind(vlm, _layer_patches(patch, vlm.n_layers, last=False), rep, input_ids[:, -1:])
    layers = sorted({*(p.layer % vlm.n_layers for p in (patch.patches if patch is not None else ())), last})
    eos_ids = list(vlm.eos_token_ids)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=input_ids.dtype)
    with torch.no_grad(), _hooked(vlm, hooks, layers):
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
        vlm.hf(
            input_ids=input_ids[:, -1:],
            attention_mask=attention_mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
        assert hooks.first is not None  # the hook on the last layer ran
        first, nxt = _first_tokens(
            vlm,
            hooks.first.index_select(0, start.to(hooks.first.device)),
            _layer_patches(patch, vlm.n_layers, True),
            input_ids.index_select(0, start)[:, -1:],
        )
        if start_rows is not None:
            select_rows(cache, start)
        out = _greedy_steps(
            vlm,
            hooks,
            patch,
            cache,
            attention_mask.index_select(0, start.to(attention_mask.device)),
            nxt,
            max_new_tokens,
            eos,
        )
    return BatchRun(
        tokens=[trim_answer(row, eos_ids) for row in out],
        states={last: [first]} if read_last else {},
        prompt_len=int(input_ids.shape[1]),
    )


def _greedy_steps(
    vlm: Any,
    hooks: _Hooks,
    patch: PatchSet | None,
    cache: Any,
    attn: Int[Tensor, "n s"],
    nxt: Int[Tensor, " n"],
    max_new_tokens: int,
    eos: Tensor,
) -> list[list[int]]:
    """The decode steps after step 0 (whose tokens are ``nxt``): each row's ids, finished rows leaving the batch."""
    n = int(nxt.shape[0])
    active = torch.arange(n)
    out: list[list[int]] = [[int(t)] for t in nxt.tolist()]
    hooks.bound = _bind(vlm, patch, None, nxt[:, None])
    for step in range(1, max_new_tokens):
        going = ~torch.isin(nxt.cpu(), eos)
        if not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            select_rows(cache, keep)
            active, attn, nxt = active[keep], attn[keep.to(attn.device)], nxt[keep.to(nxt.device)]
            hooks.bound = _bind(vlm, patch, active, nxt[:, None])
        hooks.step = step
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
        logits = vlm.hf(
            input_ids=nxt[:, None], attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True
        ).logits
        nxt = logits[:, -1, :].argmax(-1)
        for r, t in zip(active.tolist(), nxt.tolist(), strict=True):
            out[r].append(int(t))
    return out
