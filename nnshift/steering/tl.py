"""The same patches as TransformerLens hooks (``blocks.{l}.hook_resid_post``; TransformerBridge or HookedTransformer).

A hook cannot see the attention mask, so the prompt pass and the decode steps are told apart by the length of
the hooked tensor: the first call (or a call of the prompt's length) is the prompt pass, a length-1 call after it
is a KV-cache decode step, and a longer call (generation without the KV cache) is the prompt followed by the
generated tokens. Give ``attention_mask`` (left padding) / ``image_mask`` to resolve padding and image positions.

Loading a local Hugging Face folder offline in transformer-lens 4.x::

    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(folder, device="cpu", dtype=torch.float32)
    with patch.hooked(bridge, attention_mask=mask):
        tokens = bridge.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nnshift.errors import PositionError, SteeringError
from nnshift.steering.deltas import LayerEdit, PatchGroup, resolve_edits

__all__ = ["TLHook", "model_dims", "resid_post_name", "tl_hooks"]


def model_dims(model: Any) -> tuple[int, int]:
    """(hidden size, number of layers) of a TransformerLens model (``cfg.d_model``, ``cfg.n_layers``)."""
    cfg = getattr(model, "cfg", None)
    d, n = getattr(cfg, "d_model", None), getattr(cfg, "n_layers", None)
    if d is None or n is None:
        raise SteeringError(
            f"{type(model).__name__} does not look like a TransformerLens model (no cfg.d_model / cfg.n_layers)",
            "pass a TransformerBridge (transformer_lens.model_bridge) or a HookedTransformer",
        )
    return int(d), int(n)


def resid_post_name(model: Any, layer: int) -> str:
    """The hook point of the residual stream after block ``layer`` (``blocks.{l}.hook_resid_post`` or its bridge alias)."""
    hook_dict = getattr(model, "hook_dict", {}) or {}
    for name in (f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_out"):
        if name in hook_dict:
            return name
    raise SteeringError(
        f"no residual-stream hook point for block {layer} on {type(model).__name__}",
        "expected blocks.{l}.hook_resid_post (TransformerLens) or blocks.{l}.hook_out (TransformerBridge)",
    )


class TLHook:
    """A TransformerLens forward hook applying one layer's steering edits; prompt pass vs decode step by length."""

    def __init__(self, edit: LayerEdit, prompt_len: int | None) -> None:
        self.edit = edit
        self.prompt_len = prompt_len
        self.seen = 0  # length of the last prompt pass (when prompt_len is not given)
        self.calls = 0

    def _prefill(self, x: Float[Tensor, "b s d"]) -> Float[Tensor, "b s d"]:
        out = self.edit.edit_prefill(x)
        return x if out is None else out

    def _decode(self, x: Float[Tensor, "b s d"]) -> Float[Tensor, "b s d"]:
        out = self.edit.edit_decode(x)
        return x if out is None else out

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        """Return the edited activation ``[B, S, D]``."""
        s = int(x.shape[1])
        first = self.calls == 0
        self.calls += 1
        p = self.prompt_len if self.prompt_len is not None else self.seen
        if self.prompt_len is None and (first or 1 < s <= p):
            self.seen = s
            return self._prefill(x)
        if s == p and (first or p > 1):
            return self._prefill(x)
        if s == 1:
            return self._decode(x)
        if s > p:  # generation without the KV cache: the prompt, then the generated tokens
            return torch.cat([self._prefill(x[:, :p]), self._decode(x[:, p:])], dim=1)
        raise PositionError(
            f"the hooked activation has {s} positions but the patch was bound to a prompt of {p}",
            "pass the attention_mask of the batch you run (one hook set per batch)",
        )


def tl_hooks(
    patch: PatchGroup,
    model: Any,
    *,
    attention_mask: Int[Tensor, "b s"] | None = None,
    image_mask: Bool[Tensor, "b s"] | None = None,
) -> list[tuple[str, TLHook]]:
    """``[(hook_name, hook)]`` installing ``patch`` on a TransformerLens model; validated before any forward."""
    d_model, n_layers = model_dims(model)
    device = getattr(getattr(model, "cfg", None), "device", None) or "cpu"
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except (StopIteration, AttributeError):
        dtype = torch.float32
    edits, _ = resolve_edits(patch.patches, n_layers, d_model, attention_mask, image_mask, torch.device(device), dtype)
    prompt_len = int(attention_mask.shape[1]) if attention_mask is not None else None
    return [(resid_post_name(model, layer), TLHook(edit, prompt_len)) for layer, edit in sorted(edits.items())]
