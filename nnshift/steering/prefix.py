"""Prompt-prefix sharing: run the prompt minus its last token once per sample, then every grid point from there.

When no patch edits a prompt position other than the last one (positions made of ``"last_prompt"`` and
``"generated"`` only), every steered copy of a sample and its unsteered copy have the same hidden states at every
earlier prompt position and every layer (causal attention), so their KV cache there is the same. `run_shared`
computes that cache once per sample (``generate(max_new_tokens=1)`` on the prompt minus its last token, so the
position ids, attention mask and image features are the ones the plain run uses), repeats it ``copies`` times
along the batch (sample-major, like the sweep's rows) and continues the generation on the full ids and mask
from the last prompt token: step 0 is the last prompt position alone, then the decode steps.

This is used only where it was shown to generate what the plain run does: locally, for a model family whose
adapter says so (`ModelAdapter.shares_prompt_prefix`, verified on the tiny models and the shapes zoo by
tests/test_sweep_prefix.py), for positions that spare the prefix or a patch at the model's last layer (whatever
its positions: see `can_share_prefix`), and for prompts whose last token is text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from nnshift.errors import SteeringError
from nnshift.generation import BatchRun, run_generation
from nnshift.positions import Generated, LastPrompt, Selector
from nnshift.steering.deltas import selector_parts
from nnshift.steering.patches import PatchSet

__all__ = ["batch_allows_sharing", "can_share_prefix", "prefix_cache", "run_shared", "spares_prompt_prefix"]


def spares_prompt_prefix(selector: Selector) -> bool:
    """Whether ``selector`` leaves every prompt position but the last one alone (``last_prompt`` / ``generated``)."""
    return all(type(p) in (LastPrompt, Generated) for p in selector_parts(selector))


def can_share_prefix(vlm: Any, selector: Selector, remote: object, layer: int | None = None) -> bool:
    """Whether grid points patched at ``selector`` (at ``layer``) may share the prompt prefix on ``vlm``.

    The run must be local and the family verified; the positions must spare the prefix, or ``layer`` must be the
    model's last layer: its output at an earlier prompt position feeds only that position's logits, which
    generation never reads, and no layer's KV cache (each layer's keys and values come from its input).
    """
    adapter = getattr(vlm, "adapter", None)
    ready = remote is False and getattr(adapter, "shares_prompt_prefix", False) is True and hasattr(vlm, "hf")
    if not ready:
        return False
    return spares_prompt_prefix(selector) or (layer is not None and vlm.layer_index(layer) == vlm.n_layers - 1)


def batch_allows_sharing(vlm: Any, inputs: dict[str, Tensor]) -> bool:
    """Whether a prepared batch can be split before its last token: left padding, >= 2 tokens, a text last token."""
    ids: Int[Tensor, "b s"] = inputs["input_ids"]
    attn = inputs.get("attention_mask")
    if ids.ndim != 2 or ids.shape[1] < 2 or attn is None or tuple(attn.shape) != tuple(ids.shape):
        return False
    if not bool((attn[:, -1] == 1).all()) or not bool((attn.sum(1) >= 2).all()):
        return False
    return not bool(vlm.image_token_mask(ids)[:, -1].any())


def prefix_cache(vlm: Any, inputs: dict[str, Tensor], copies: int) -> Any:
    """The KV cache of every prompt position but the last, computed once per row, each row repeated ``copies`` times."""
    prefix = {k: (v[:, :-1] if k in ("input_ids", "attention_mask") else v) for k, v in inputs.items()}
    with torch.no_grad():
        out = vlm.hf.generate(
            **prefix,
            max_new_tokens=1,
            do_sample=False,
            return_dict_in_generate=True,
            pad_token_id=vlm.pad_token_id,
            eos_token_id=vlm.eos_token_ids,
        )
    cache = out.past_key_values
    if cache is None or cache.get_seq_length() != prefix["input_ids"].shape[1]:
        raise SteeringError(
            f"the prompt-prefix pass of {type(vlm.hf).__name__} returned no KV cache of the prefix's length",
            "set shares_prompt_prefix=False on this model's adapter (the sweep then runs every prompt in full)",
        )
    if copies > 1:
        cache.batch_repeat_interleave(copies)
    return cache


def run_shared(
    vlm: Any,
    inputs: dict[str, Tensor],
    copies: int,
    patch: PatchSet | None,
    max_new_tokens: int,
    layers: Sequence[int] = (),
) -> BatchRun:
    """Greedy generation of every row of ``inputs`` repeated ``copies`` times (sample-major) from a shared prefix.

    ``patch`` covers the ``len(inputs) x copies`` rows (per-row alpha/rows); it is bound to the last prompt
    column, so its step 0 edits the last prompt position. The result is `run_generation`'s on the repeated rows.
    """
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    cont: dict[str, Any] = {
        "input_ids": ids.repeat_interleave(copies, 0),
        "attention_mask": attn.repeat_interleave(copies, 0),
    }
    edit = None
    if patch is not None:
        edit = patch.bind(
            vlm, {"input_ids": cont["input_ids"][:, -1:], "attention_mask": cont["attention_mask"][:, -1:]}
        )
    cont["past_key_values"] = prefix_cache(vlm, inputs, copies)
    return run_generation(vlm, cont, max_new_tokens, layers=layers, edit=edit, remote=False)
