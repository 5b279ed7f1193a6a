"""Fluency of (steered) answers: their negative log-likelihood under the unsteered model, teacher forced.

For one sample and answer token ids ``a_1..a_T``, ``nll = -(1/T) sum_t log p(a_t | prompt, a_<t)`` in nats per
token, from one forward of ``prompt + answer`` through the model as it is (no patch). Batches are left padded
(prompts, as `VLM.prepare` gives them) and right padded (answers); position ids count each row from its first
real token, as generation does, so a batch gives what one unpadded forward per sample gives. An empty answer
has no likelihood: NaN (left out of means).

On model families verified for prompt-prefix sharing (`nnshift.steering.prefix.shares_prefix`), each distinct
prompt of a batch runs once and its answers continue from its KV cache (`_batch_nll_shared`): the same numbers
up to float rounding (tests compare both), without one prompt pass per distinct answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.data import Sample
from nnshift.errors import ArgumentError
from nnshift.options import RunOptions, batched
from nnshift.steering.kv import fork_cache, select_rows
from nnshift.steering.prefix import batch_allows_sharing, shares_prefix

__all__ = ["answer_ids", "answer_nll", "mean_finite", "nll_from_prefix", "prepare_rows"]


def mean_finite(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when there is none)."""
    ok = [v for v in values if math.isfinite(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def answer_ids(vlm: Any, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of answers as text (for answers written by another model), without special tokens."""
    return [list(vlm.tokenizer.encode(a, add_special_tokens=False)) if a else [] for a in answers]


def _distinct(rows: Sequence[Sample]) -> tuple[list[Sample], list[int]]:
    """The distinct sample objects of ``rows`` in first-seen order, and each row's index among them."""
    index: dict[int, int] = {}
    unique: list[Sample] = []
    for s in rows:
        if id(s) not in index:
            index[id(s)] = len(unique)
            unique.append(s)
    return unique, [index[id(s)] for s in rows]


def prepare_rows(vlm: Any, rows: Sequence[Sample]) -> dict[str, Tensor]:
    """``vlm.prepare(rows)``, processing each distinct sample object once (rows may repeat samples).

    The distinct samples are prepared together (so padding is what ``prepare(rows)`` gives) and their rows
    repeated. Only when every tensor is batch-first (one row per sample, no flattened ``[patches, dim]`` image
    tensor as Qwen2-VL's) is this shortcut taken; otherwise ``prepare(rows)``.
    """
    unique, where = _distinct(rows)
    if len(unique) == len(rows):
        return vlm.prepare(rows)
    inputs = vlm.prepare(unique)
    ok = all(
        isinstance(v, Tensor)
        and v.ndim >= 1
        and v.shape[0] == len(unique)
        and not (v.is_floating_point() and v.ndim == 2)
        for v in inputs.values()
    )
    if not ok:
        return vlm.prepare(rows)
    pick = torch.tensor(where)
    return {k: v.index_select(0, pick.to(v.device)) for k, v in inputs.items()}


def _answers(
    ids: Sequence[Sequence[int]], t: int, like: Tensor, attn: Tensor, pad: int
) -> tuple[Int[Tensor, "b t"], Int[Tensor, "b t"]]:
    """Answer ids right padded to ``t`` with ``pad`` (``like``'s dtype and device) and their mask."""
    ans = torch.full((len(ids), t), int(pad), dtype=like.dtype, device=like.device)
    mask = torch.zeros((len(ids), t), dtype=attn.dtype, device=attn.device)
    for r, row in enumerate(ids):
        if row:
            ans[r, : len(row)] = torch.tensor(list(row), dtype=like.dtype)
            mask[r, : len(row)] = 1
    return ans, mask


def _mean_nll(lp: Float[Tensor, "b t v"], ans: Int[Tensor, "b t"], mask: Int[Tensor, "b t"]) -> list[float]:
    """Mean negative log-probability of the unmasked answer tokens per row (NaN for an empty answer)."""
    tok = lp.gather(-1, ans.unsqueeze(-1)).squeeze(-1) * mask.float()
    n = mask.float().sum(1)
    out = (-tok.sum(1) / n.clamp(min=1)).tolist()
    return [v if k > 0 else float("nan") for v, k in zip(out, n.tolist(), strict=True)]


def _batch_nll_shared(vlm: Any, batch: Sequence[Sample], ids: Sequence[Sequence[int]], t: int) -> list[float] | None:
    """`_batch_nll` with each distinct prompt run once and its answers continued from its KV cache.

    None when the batch cannot share (not left padded, or ending in an image token): the caller runs it in full.
    """
    unique, where = _distinct(batch)
    inputs = vlm.prepare(unique)
    if not batch_allows_sharing(vlm, inputs):
        return None
    attn_u: Int[Tensor, "u s"] = inputs["attention_mask"]
    pick = torch.tensor(where, device=attn_u.device)
    with torch.no_grad():
        # position ids count each row from its first real token, as in the full path (and generation)
        first = vlm.hf(**inputs, position_ids=(attn_u.long().cumsum(-1) - 1).clamp(min=0), use_cache=True)
        lp = [torch.log_softmax(first.logits[:, -1].float(), dim=-1).index_select(0, pick).unsqueeze(1)]
        attn = attn_u.index_select(0, pick)
        ans, mask = _answers(ids, t, inputs["input_ids"], attn, vlm.pad_token_id)
        if t > 1:
            cache = first.past_key_values
            select_rows(cache, pick)
            full = torch.cat([attn, mask[:, :-1]], dim=1)
            pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, attn.shape[1] :]
            out = vlm.hf(
                input_ids=ans[:, :-1], attention_mask=full, position_ids=pos, past_key_values=cache, use_cache=True
            )
            lp.append(torch.log_softmax(out.logits.float(), dim=-1))
    return _mean_nll(torch.cat(lp, dim=1), ans, mask)


def _continue(
    vlm: Any, inputs: dict[str, Tensor], cache: Any, rows: list[int], answers: Sequence[Sequence[int]], t: int
) -> Float[Tensor, "r t v"]:
    """Log-probabilities after each of ``[last prompt token, answer[:t - 1]]`` of ``rows`` of ``inputs``, continued
    from ``cache`` (the prompt minus its last token, one row per row of ``inputs``; consumed)."""
    ids: Int[Tensor, "b s"] = inputs["input_ids"]
    pick = torch.tensor(rows, device=ids.device)
    attn = inputs["attention_mask"].index_select(0, pick)
    ans, mask = _answers(answers, t, ids, attn, vlm.pad_token_id)
    select_rows(cache, pick)
    full = torch.cat([attn, mask[:, :-1]], dim=1)
    pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, attn.shape[1] - 1 :]
    feed = torch.cat([ids.index_select(0, pick)[:, -1:], ans[:, :-1]], dim=1)
    with torch.no_grad():
        out = vlm.hf(input_ids=feed, attention_mask=full, position_ids=pos, past_key_values=cache, use_cache=True)
    return torch.log_softmax(out.logits.float(), dim=-1)


def nll_from_prefix(
    vlm: Any, inputs: dict[str, Tensor], prefix: Any, pairs: Sequence[tuple[int, Sequence[int]]]
) -> list[float]:
    """Mean NLL of answers continued from the unsteered KV cache of their prompts minus the last token.

    ``inputs``: the prepared batch (left padded); ``prefix``: the KV cache of every prompt position but the last,
    one row per row of ``inputs`` (`nnshift.steering.prefix.run_shared`'s ``on_prefix``; consumed);
    ``pairs``: (row of ``inputs``, answer ids). What `answer_nll` gives, without running any prompt again: the
    first token of every answer to a prompt is scored from one row fed the last prompt token; the answers of two
    tokens or more are fed their tokens but the last. NaN for an empty answer.
    """
    out = [float("nan")] * len(pairs)
    scored = [i for i, (_, x) in enumerate(pairs) if x]
    if not scored:
        return out
    rows = sorted({pairs[i][0] for i in scored})
    longer = [i for i in scored if len(pairs[i][1]) > 1]
    first = _continue(vlm, inputs, fork_cache(prefix) if longer else prefix, rows, [[]] * len(rows), 1)[:, 0]
    where = {b: r for r, b in enumerate(rows)}
    total = {i: -float(first[where[pairs[i][0]], int(pairs[i][1][0])]) for i in scored}
    if longer:
        answers = [pairs[i][1] for i in longer]
        t = max(len(a) for a in answers)
        lp = _continue(vlm, inputs, prefix, [pairs[i][0] for i in longer], answers, t)[:, 1:]
        ans, mask = _answers([a[1:] for a in answers], t - 1, inputs["input_ids"], inputs["attention_mask"], 0)
        rest = -(lp.gather(-1, ans.unsqueeze(-1)).squeeze(-1) * mask.float()).sum(1)
        for i, v in zip(longer, rest.tolist(), strict=True):
            total[i] += v
    for i in scored:
        out[i] = total[i] / len(pairs[i][1])
    return out


def _batch_nll(vlm: Any, batch: Sequence[Sample], ids: Sequence[Sequence[int]]) -> list[float]:
    """Mean NLL per row of one batch (NaN for empty answers)."""
    t = max((len(x) for x in ids), default=0)
    if t == 0:
        return [float("nan")] * len(batch)
    if shares_prefix(vlm):
        got = _batch_nll_shared(vlm, batch, ids, t)
        if got is not None:
            return got
    inputs = prepare_rows(vlm, batch)
    prompt: Int[Tensor, "b s"] = inputs["input_ids"]
    attn = inputs.get("attention_mask", torch.ones_like(prompt))
    s = prompt.shape[1]
    ans, mask = _answers(ids, t, prompt, attn, vlm.pad_token_id)
    full_attn = torch.cat([attn, mask], dim=1)
    feed = dict(inputs)
    feed["input_ids"] = torch.cat([prompt, ans], dim=1)
    feed["attention_mask"] = full_attn
    feed["position_ids"] = (full_attn.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits: Float[Tensor, "b l v"] = vlm.hf(**feed).logits
    lp = torch.log_softmax(logits[:, s - 1 : s + t - 1].float(), dim=-1)
    return _mean_nll(lp, ans, mask)


def answer_nll(
    vlm: Any,
    samples: Sequence[Sample],
    ids: Sequence[Sequence[int]],
    *,
    options: RunOptions | None = None,
) -> list[float]:
    """Per sample, the mean NLL (nats/token) of the answer ids given the sample's prompt under ``vlm`` (no patch).

    ``ids[i]`` are the answer's token ids (as generated, without the end token). Identical (sample, answer) pairs
    are computed once. NaN for an empty answer. Runs locally (the model's weights are needed).
    """
    if len(samples) != len(ids):
        raise ArgumentError(f"{len(samples)} samples for {len(ids)} answers", "pass one answer per sample")
    if getattr(vlm, "is_meta", False):
        raise ArgumentError(
            "fluency needs the model's weights here (it is loaded without them, e.g. for NDIF)",
            "pass fluency=False, or load the model locally",
        )
    opts = options if options is not None else RunOptions(progress=False)
    keys: dict[tuple[int, tuple[int, ...]], int] = {}
    todo: list[tuple[Sample, list[int]]] = []
    for s, row in zip(samples, ids, strict=True):
        key = (id(s), tuple(int(x) for x in row))
        if key not in keys:
            keys[key] = len(todo)
            todo.append((s, list(key[1])))
    first: dict[int, int] = {}
    for s, _ in todo:
        first.setdefault(id(s), len(first))
    order = sorted(range(len(todo)), key=lambda j: first[id(todo[j][0])])  # a sample's answers side by side
    values = [math.nan] * len(todo)
    for _, part in batched(order, opts, "fluency"):
        got = _batch_nll(vlm, [todo[j][0] for j in part], [todo[j][1] for j in part])
        for j, v in zip(part, got, strict=True):
            values[j] = v
    return [values[keys[(id(s), tuple(int(x) for x in row))]] for s, row in zip(samples, ids, strict=True)]
