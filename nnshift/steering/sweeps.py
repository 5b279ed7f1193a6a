"""`sweep`: a steering vector at several layers and strengths, beside the unsteered model and baselines, in one run.

The grid (the unsteered model, each prompting baseline, each ``(layer, alpha)``) is run in as few generations as
possible: every sample is replicated once per grid point (sample-major: all grid points of a sample lie next to
each other, so they share a batch and its padding), and one `PatchSet` holds one patch per layer whose per-sample
``alpha`` / ``rows`` switch it on only for that layer's replicas. ``batch_size`` counts *samples* per generation,
so each generation runs ``batch_size x grid size`` rows. Other models (``models=``) run once each. When the run
is local and the model family is verified for it, the prompt minus its last token runs once per sample and the
unsteered and steering points continue from its KV cache (`nnshift.steering.prefix`): as it is for patches that
spare the earlier prompt positions (``last_prompt`` / ``generated``, or the last layer), below the patched layer
for patches on them (``all`` / ``prompt`` / ``text``); the prompting baselines run first, as a batch of their own,
and other models before the grid, so that with fluency on every answer to a batch's samples is scored from that
batch's unsteered prefix (`nnshift.steering.fluency.nll_from_prefix`) and no prompt runs a second time for it.

Per row (see `SweepRow`): the target rate (`nnshift.steering.targets`); the official VQA accuracy per answer type
on the samples whose type the target does not touch, plus every ``keep`` sample, and the largest drop vs the
unsteered row; CIDEr-D on caption samples with references; fluency (`nnshift.steering.fluency`: mean NLL of the
answer under the unsteered model, teacher forced, and the answer length in tokens); steerability.

"Moved", per relevant sample (the samples counted in the target rate):

* VQA targets: ``margin = logsumexp(log p[target first tokens]) - logsumexp(log p[source first tokens])`` at the
  first answer position of the (steered) prompt pass, where the first tokens are those of the target's answers
  (`margin_words`) written with and without a leading space. The sample moved *toward* the target when the row's
  margin minus the unsteered margin is above ``threshold`` (0.1 nats), *away* when below ``-threshold``.
* Caption style: toward = the caption lacks the style unsteered and has it in the row; away = the reverse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nnshift.data import Sample
from nnshift.errors import ArgumentError
from nnshift.generation import BatchRun, run_generation
from nnshift.models.protocol import VLMLike
from nnshift.options import Remote, RunOptions, batched, run_options
from nnshift.positions import SelectorLike
from nnshift.steering.fluency import answer_ids, answer_nll, mean_finite, nll_from_prefix, prepare_rows
from nnshift.steering.patches import Patch, PatchSet
from nnshift.steering.prefix import batch_allows_sharing, can_share_prefix, can_split_prefix, run_shared
from nnshift.steering.sweep_args import SweepPlan, check_sweep_args
from nnshift.steering.sweep_eval import evaluate_row
from nnshift.steering.sweep_report import SweepReport, SweepRow
from nnshift.steering.targets import Target
from nnshift.steering.vectors import SteeringVector

__all__ = ["DEFAULT_ALPHAS", "MOVE_THRESHOLD", "first_token_ids", "sweep"]

DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
#: nats: a margin change beyond this moves a sample toward (or away from) the target
MOVE_THRESHOLD = 0.1


@dataclass(frozen=True)
class _Point:
    """One grid point: what runs on its replicas."""

    kind: str
    name: str
    layer: int | None = None
    alpha: float | None = None
    instruction: str | None = None


def first_token_ids(vlm: Any, words: Sequence[str]) -> list[int]:
    """The first token ids of ``words`` as an answer may start: each word with and without a leading space."""
    tok = vlm.tokenizer
    out: list[int] = []
    for w in words:
        for text in (f" {w}", w):
            ids = [i for i in tok.encode(text, add_special_tokens=False) if tok.decode([i]).strip()]
            if ids and ids[0] not in out:
                out.append(int(ids[0]))
    return out


def _margin_ids(vlm: Any, words: tuple[list[str], list[str]] | None) -> tuple[list[int], list[int]] | None:
    if words is None:
        return None
    tgt = first_token_ids(vlm, words[1])
    src = [i for i in first_token_ids(vlm, words[0]) if i not in tgt]
    if not src or not tgt:
        return None
    return src, tgt


def _margins(vlm: Any, h: Tensor, ids: tuple[list[int], list[int]]) -> list[float]:
    """Target-over-source first-token log-probability margins from last-layer states ``[B, D]``."""
    lp = torch.log_softmax(vlm.logit_lens(h).float(), dim=-1)
    src, tgt = ids
    return (torch.logsumexp(lp[:, tgt], -1) - torch.logsumexp(lp[:, src], -1)).tolist()


def _run_batch(
    vlm: Any, inputs: dict[str, Tensor], edit: Any, opts: RunOptions, ids: tuple[list[int], list[int]] | None
) -> tuple[list[list[int]], list[float]]:
    """Greedy answer ids of one prepared batch and, with ``ids``, the first-position margins."""
    last = vlm.n_layers - 1
    layers = [last] if ids is not None else []
    run = run_generation(vlm, inputs, opts.max_new_tokens, layers=layers, edit=edit, remote=opts.remote)
    return run.tokens, _run_margins(vlm, run, ids)


def _run_margins(vlm: Any, run: BatchRun, ids: tuple[list[int], list[int]] | None) -> list[float]:
    if ids is None:
        return [math.nan] * len(run.tokens)
    return _margins(vlm, run.states[vlm.n_layers - 1][0], ids)


def _run(
    vlm: Any,
    rows: Sequence[Sample],
    patch: PatchSet | None,
    opts: RunOptions,
    ids: tuple[list[int], list[int]] | None,
    desc: str,
) -> tuple[list[list[int]], list[float]]:
    """Greedy answer ids of every row (``patch`` sliced per batch) and, with ``ids``, the first-position margins."""
    tokens: list[list[int]] = []
    margins: list[float] = []
    for start, batch in batched(rows, opts, desc):
        inputs = prepare_rows(vlm, batch)
        edit = None
        if patch is not None:
            edit = patch.select_rows(slice(start, start + len(batch))).bind(vlm, inputs)
        toks, margs = _run_batch(vlm, inputs, edit, opts, ids)
        tokens += toks
        margins += margs
    return tokens, margins


def _grid(plan: SweepPlan) -> list[_Point]:
    points = [_Point("unsteered", "unsteered")]
    points += [_Point("prompt", name, instruction=text) for name, text in plan.prompts.items()]
    points += [_Point("steer", f"L{layer} a={a:g}", layer, a) for layer in plan.layers for a in plan.alphas]
    return points


def _with_instruction(s: Sample, text: str) -> Sample:
    return dataclasses.replace(s, prompt=f"{s.prompt.rstrip()} {text}")


def _grid_patch(plan: SweepPlan, points: list[_Point], n_samples: int) -> PatchSet | None:
    """One patch per layer; its per-row alpha/rows switch it on only for that layer's replicas (sample-major)."""
    patches = []
    for layer in [x for x in plan.layers if any(p.layer == x for p in points)]:
        alpha = torch.tensor([p.alpha if p.layer == layer else 0.0 for p in points] * n_samples, dtype=torch.float32)
        rows = torch.tensor([p.layer == layer for p in points] * n_samples, dtype=torch.bool)
        patches.append(plan.patch(layer, alpha, rows))
    return PatchSet(patches) if patches else None


def _replicate(samples: Sequence[Sample], points: list[_Point]) -> list[Sample]:
    out = []
    for s in samples:
        variants = {
            p.instruction: (s if p.instruction is None else _with_instruction(s, p.instruction)) for p in points
        }
        out += [variants[p.instruction] for p in points]
    return out


@dataclass
class _Answers:
    """What one grid point (or another model) answered: ids and text of every sample (+ keep), first margins."""

    ids: list[list[int]]
    text: list[str]
    margins: list[float]


#: (sample index, answer ids) -> fluency NLL, for answers already scored during the grid run
Known = dict[tuple[int, tuple[int, ...]], float]


def _run_grid(
    vlm: Any, plan: SweepPlan, points: list[_Point], opts: RunOptions, pre: Sequence[_Answers]
) -> tuple[list[_Answers], Known]:
    """Every grid point's answers and, where the prompt prefix was shared, the fluency of every answer to the
    samples (the grid's and ``pre``'s, other models' answers) scored from the unsteered prefix."""
    everything = [*plan.samples, *plan.keep]
    ids = _margin_ids(vlm, plan.margin_words)
    shared = [x for x in plan.layers if can_share_prefix(vlm, plan.positions, opts.remote, x)]
    split = [x for x in plan.layers if x not in shared and can_split_prefix(vlm, plan.positions, opts.remote)]
    known: Known = {}
    if shared or split:
        tokens, margins = _run_grid_shared(vlm, plan, points, opts, ids, everything, shared, split, pre, known)
    else:
        rows = _replicate(everything, points)
        patch = _grid_patch(plan, points, len(everything))
        grid_opts = opts.replace(batch_size=opts.batch_size * len(points))
        tokens, margins = _run(vlm, rows, patch, grid_opts, ids, "sweep")
    g = len(points)
    out = []
    for j in range(g):
        toks = tokens[j::g]
        out.append(_Answers(toks, [vlm.decode(t) for t in toks], margins[j::g]))
    return out, known


def _run_grid_shared(
    vlm: Any,
    plan: SweepPlan,
    points: list[_Point],
    opts: RunOptions,
    ids: tuple[list[int], list[int]] | None,
    everything: list[Sample],
    shared: list[int],
    split: list[int],
    pre: Sequence[_Answers],
    known: Known,
) -> tuple[list[list[int]], list[float]]:
    """The grid's rows (sample-major, as the plain path lays them out) with the prompt prefix run once per sample.

    The unsteered point and the steering points at the ``shared`` layers share each sample's prompt prefix;
    those at the ``split`` layers share it below their layer (`nnshift.steering.prefix`); the prompting
    baselines (another prompt) and the steering points at other layers run first, as a plain batch of their own.
    With fluency, each batch's answers (those of every point and of ``pre``) are scored into ``known`` from the
    batch's unsteered prefix (`nll_from_prefix`), so no prompt runs again for them.
    """
    g, n = len(points), len(everything)
    mine = {*shared, *split}
    own = [j for j, p in enumerate(points) if p.kind == "unsteered" or (p.kind == "steer" and p.layer in mine)]
    other = [j for j, p in enumerate(points) if j not in own]
    split_at = [points[j].layer if points[j].layer in split else None for j in own]
    k = len(own)
    tokens: list[list[int]] = [[] for _ in range(n * g)]
    margins: list[float] = [math.nan] * (n * g)
    if other:
        rest = [points[j] for j in other]
        base_opts = opts.replace(batch_size=opts.batch_size * len(other))
        toks, margs = _run(vlm, _replicate(everything, rest), _grid_patch(plan, rest, n), base_opts, ids, "sweep")
        for r in range(len(toks)):
            at = (r // len(other)) * g + other[r % len(other)]
            tokens[at], margins[at] = toks[r], margs[r]
    patch = _grid_patch(plan, [points[j] for j in own], n)
    layers = [vlm.n_layers - 1] if ids is not None else []
    for start, batch in batched(everything, opts, "sweep"):
        part = None if patch is None else patch.select_rows(slice(start * k, (start + len(batch)) * k))
        inputs = vlm.prepare(list(batch))
        if batch_allows_sharing(vlm, inputs):
            prefix: list[Any] = []
            keep = prefix.append if plan.fluency and start < len(plan.samples) else None
            run = run_shared(vlm, inputs, k, part, opts.max_new_tokens, layers, split_at, on_prefix=keep)
            toks, margs = run.tokens, _run_margins(vlm, run, ids)
        else:
            rows = prepare_rows(vlm, [s for s in batch for _ in range(k)])
            toks, margs = _run_batch(vlm, rows, None if part is None else part.bind(vlm, rows), opts, ids)
            prefix = []
        for r in range(len(toks)):
            at = (start + r // k) * g + own[r % k]
            tokens[at], margins[at] = toks[r], margs[r]
        if prefix:
            _score(
                vlm,
                inputs,
                prefix[0],
                start,
                len(plan.samples),
                tokens[start * g : (start + len(batch)) * g],
                g,
                pre,
                known,
            )
    return tokens, margins


def _score(
    vlm: Any,
    inputs: dict[str, Tensor],
    prefix: Any,
    start: int,
    n_samples: int,
    tokens: list[list[int]],
    g: int,
    pre: Sequence[_Answers],
    known: Known,
) -> None:
    """Score every distinct answer to this batch's samples (rows ``tokens``, sample-major, and ``pre``) into ``known``."""
    pairs: list[tuple[int, list[int]]] = []
    for b in range(min(len(tokens) // g, n_samples - start)):
        j = start + b
        for answer in [*tokens[b * g : (b + 1) * g], *(a.ids[j] for a in pre)]:
            key = (j, tuple(int(x) for x in answer))
            if key in known:
                continue
            known[key] = math.nan
            if answer:
                pairs.append((b, list(key[1])))
    if pairs:
        for (b, answer), v in zip(pairs, nll_from_prefix(vlm, inputs, prefix, pairs), strict=True):
            known[(start + b, tuple(answer))] = v


def _run_model(vlm: Any, other: Any, plan: SweepPlan, opts: RunOptions) -> _Answers:
    everything = [*plan.samples, *plan.keep]
    tokens, margins = _run(other, everything, None, opts, _margin_ids(other, plan.margin_words), "baseline")
    text = [other.decode(t) for t in tokens]
    if not _same_vocab(vlm, other):
        tokens = answer_ids(vlm, text)
    return _Answers(tokens, text, margins)


def _same_vocab(a: Any, b: Any) -> bool:
    return a is b or a.tokenizer is b.tokenizer or a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def _nll(vlm: Any, plan: SweepPlan, every: list[_Answers], opts: RunOptions, known: Known) -> list[list[float]]:
    """Per row, the fluency of its answers to the samples: those in ``known`` (scored during the grid run) as they
    are, the others in one batched pass over every distinct answer (`answer_nll`)."""
    n = len(plan.samples)
    out = [[math.nan] * n for _ in every]
    if not plan.fluency:
        return out
    todo: list[tuple[int, int]] = []
    for k, a in enumerate(every):
        for j in range(n):
            key = (j, tuple(a.ids[j]))
            if key in known:
                out[k][j] = known[key]
            else:
                todo.append((k, j))
    if todo:
        flat = answer_nll(vlm, [plan.samples[j] for _, j in todo], [every[k].ids[j] for k, j in todo], options=opts)
        for (k, j), v in zip(todo, flat, strict=True):
            out[k][j] = v
    return out


def sweep(
    vlm: VLMLike,
    vector_or_patch: SteeringVector | Patch | Mapping[int, SteeringVector],
    samples: Sequence[Sample],
    *,
    target: Target,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    layers: Sequence[int] | None = None,
    positions: SelectorLike | None = None,
    keep: Sequence[Sample] | None = None,
    prompts: Mapping[str, str] | None = None,
    models: Mapping[str, VLMLike] | None = None,
    fluency: bool = True,
    steerability: bool = True,
    threshold: float = MOVE_THRESHOLD,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool | None = None,
    remote: Remote | None = None,
    options: RunOptions | None = None,
) -> SweepReport:
    """Steer ``samples`` at every ``(layer, alpha)``, beside the unsteered model and baselines; a `SweepReport`.

    ``vector_or_patch``: a `SteeringVector` (its layer is the default), a `Patch` (its vector, layer and
    positions; its alpha is replaced by ``alphas``), or ``{layer: vector}`` (one vector per layer; default: every
    layer of the mapping). ``target``: an `AnswerTypeTarget`, `TargetAnswer` or `CaptionStyle`. ``keep``: extra
    samples whose accuracy must be kept (e.g. VQA questions when steering caption style). ``prompts``: name ->
    instruction appended to each prompt (prompting baselines); ``models``: name -> another model (e.g. the
    fine-tune). ``fluency`` / ``steerability`` switch those measures off. ``positions`` defaults to the patch's
    (``"all"`` for a vector). ``batch_size`` counts samples per generation (each generation runs that many samples
    at every grid point). Run options as in `nnshift.steer`. Every argument is checked before any model call.
    """
    plan = check_sweep_args(
        vlm, vector_or_patch, samples, target, alphas, layers, positions, keep, prompts, models, fluency, steerability
    )
    opts = run_options(options, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, remote=remote)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < math.inf:
        raise ArgumentError(f"threshold must be a finite number >= 0, got {threshold!r}", "pass e.g. threshold=0.1")
    if plan.fluency and opts.remote:
        raise ArgumentError("fluency is measured locally and this sweep runs remotely", "pass fluency=False")
    if not plan.steerability:
        plan = dataclasses.replace(plan, margin_words=None)
    if plan.margin_words is not None and opts.remote:
        raise ArgumentError(
            "the steerability margins of a VQA target are read locally and this sweep runs remotely",
            "pass steerability=False",
        )
    points = _grid(plan)
    extra = [(name, _run_model(vlm, other, plan, opts)) for name, other in plan.models.items()]
    answers, known = _run_grid(vlm, plan, points, opts, [a for _, a in extra])
    base = answers[0]
    rows: list[SweepRow] = []
    base_row = None
    every = [*zip(points, answers, strict=True), *((_Point("model", n), a) for n, a in extra)]
    nll = _nll(vlm, plan, [a for _, a in every], opts, known)
    for (p, ans), sample_nll in zip(every, nll, strict=True):
        row = evaluate_row(
            plan, p.kind, p.name, p.layer, p.alpha, ans.text, ans.ids, ans.margins, base, base_row, threshold
        )
        row.sample_nll = sample_nll
        row.nll = mean_finite(row.sample_nll)
        rows.append(row)
        base_row = base_row or row
    return SweepReport(
        target=plan.target,
        rows=rows,
        sample_ids=[s.id for s in plan.samples],
        keep_ids=[s.id for s in plan.keep],
        threshold=threshold,
        info=plan.info(vlm, opts),
    )
