"""Capture inside your own nnsight trace: `read` the selected positions, then `from_tensor` -> `Activations`.

    inputs = vlm.prepare(samples)
    with vlm.model.trace(inputs):
        h = ns.read(vlm, -1, at="last_prompt", inputs=inputs)   # a saved [rows, hidden] tensor
    acts = ns.read_activations(h, samples, vlm=vlm, layer=-1, at="last_prompt", inputs=inputs)

The rows, their ids and ``reduce="mean"`` follow `ns.capture` exactly (tests/test_read.py checks equality),
so what you read in your own trace can be paired, fed to concepts, shift analysis and steering vectors.
Selectors that need the model's own answer (token of interest, generated) need a generation: use `ns.capture`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from nnshift._version import versions
from nnshift.data import Sample
from nnshift.errors import EmptyInputError, HiddenSizeMismatchError, PositionError
from nnshift.models.protocol import VLMLike, check_vlm, token_batch
from nnshift.positions import Selector, SelectorLike, as_selector
from nnshift.store import Activations, prompt_rows

__all__ = ["cache_activations", "read", "read_activations", "selection_mask"]


def _forward_selector(at: SelectorLike) -> Selector:
    selector = as_selector(at)
    if selector.needs_generation:
        raise PositionError(
            f"{selector} needs the model's own answer, which one forward trace does not produce",
            "capture it with ns.capture(vlm, samples, layer, at=...), which runs the generation for you",
        )
    return selector


def selection_mask(vlm: VLMLike, at: SelectorLike, inputs: Mapping[str, Tensor]) -> Bool[Tensor, "b s"]:
    """The [batch, seq] mask of the prompt positions ``at`` selects in ``inputs`` (as `ns.capture` selects them)."""
    check_vlm(vlm, "selection_mask()")
    ids, attn = token_batch(inputs)
    return _forward_selector(at).prefill_mask(attn.cpu(), vlm.image_token_mask(ids).cpu())


def read(vlm: VLMLike, layer: int, at: SelectorLike = "last_prompt", *, inputs: Mapping[str, Tensor]) -> Any:
    """Inside ``vlm.model.trace(inputs)``: the saved residual states after block ``layer`` at the selected positions.

    After the trace the result is a ``[rows, hidden]`` tensor, rows in batch order then position order.
    """
    check_vlm(vlm, "read()")
    mask = selection_mask(vlm, at, inputs).to(inputs["input_ids"].device)
    return vlm.get_resid(layer)[mask].detach().cpu().save()


def read_activations(
    tensor: Float[Tensor, "n d"],
    samples: Sequence[Sample],
    *,
    vlm: VLMLike,
    layer: int,
    at: SelectorLike = "last_prompt",
    inputs: Mapping[str, Tensor],
    reduce: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Activations:
    """Turn what `read` returned into `Activations` with capture's rows, ids and provenance."""
    check_vlm(vlm, "read_activations()")
    if reduce not in (None, "mean"):
        raise PositionError(f"unknown reduce {reduce!r}", "use reduce=None or reduce='mean'")
    samples = list(samples)
    mask = selection_mask(vlm, at, inputs)
    if mask.shape[0] != len(samples):
        raise EmptyInputError(
            f"{len(samples)} samples for a batch of {mask.shape[0]} prompts", "pass the samples given to vlm.prepare"
        )
    if tensor.ndim != 2 or tensor.shape[0] != int(mask.sum()) or tensor.shape[1] != vlm.hidden_size:
        raise HiddenSizeMismatchError(
            f"read tensor of shape {tuple(tensor.shape)}; expected [{int(mask.sum())}, {vlm.hidden_size}]",
            "pass the tensor ns.read returned for these inputs and this selector",
        )
    layout = prompt_rows(mask, token_batch(inputs)[1], samples, reduce)
    rows = [tensor[s].float().mean(0).to(dtype) for _, _, _, s in layout]
    from nnshift.capture import store_key

    layer_index = vlm.layer_index(layer)
    info = store_key(vlm, samples, [layer_index], as_selector(at), reduce, dtype, max_new_tokens=1)
    info.update(layer=layer_index, versions=versions(), source="ns.read")
    kept = {sample.id for _, sample, _, _ in layout}
    return Activations(
        tensor=torch.stack(rows) if rows else torch.zeros(0, vlm.hidden_size, dtype=dtype),
        ids=[r[0] for r in layout],
        answers=["" for _ in layout],
        meta=[r[2] for r in layout],
        info=info,
        samples=[r[1] for r in layout],
        skipped=[s.id for s in samples if s.id not in kept],
    )


def _cache_entry(cache: Any, layer: int, n_layers: int) -> Float[Tensor, "b s d"]:
    """The residual stream after block ``layer`` in a TransformerLens cache (HookedTransformer or bridge names)."""
    layer = layer + n_layers if layer < 0 else layer
    for name in (f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_out"):
        if name in cache:
            return cache[name]
    raise PositionError(
        f"the cache has no residual stream of block {layer}",
        f"run run_with_cache without names_filter, or keep blocks.{layer}.hook_resid_post / blocks.{layer}.hook_out",
    )


def cache_activations(
    cache: Any,
    samples: Sequence[Sample],
    *,
    vlm: VLMLike,
    layer: int,
    at: SelectorLike = "last_prompt",
    inputs: Mapping[str, Tensor],
    reduce: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Activations:
    """TransformerLens ``run_with_cache`` output (its ActivationCache or a dict) on ``inputs`` -> `Activations`.

    Rows, ids and provenance are `ns.capture`'s; ``layer`` counts decoder blocks as nnshift does.
    """
    check_vlm(vlm, "cache_activations()")
    resid = _cache_entry(cache, layer, vlm.n_layers)
    mask = selection_mask(vlm, at, inputs)
    if resid.shape[:2] != mask.shape:
        raise HiddenSizeMismatchError(
            f"cached residual of shape {tuple(resid.shape)} for inputs of shape {tuple(mask.shape)}",
            "run the TransformerLens model on exactly the inputs passed here (vlm.prepare(samples))",
        )
    flat = resid.detach().cpu()[mask]
    acts = read_activations(flat, samples, vlm=vlm, layer=layer, at=at, inputs=inputs, reduce=reduce, dtype=dtype)
    acts.info["source"] = "transformer_lens cache"
    return acts
