"""The metrics of one sweep row from its answers: target rate, untouched accuracy, CIDEr-D, length, steerability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nnshift.cider import cider_d
from nnshift.data import Sample
from nnshift.evaluate import vqa_accuracy
from nnshift.steering.sweep_report import SweepRow
from nnshift.steering.targets import sample_task, sample_type

__all__ = ["evaluate_row", "moved", "untouched_accuracy"]


def untouched_accuracy(plan: Any, answers: Sequence[str], keep_answers: Sequence[str]) -> dict[str, float]:
    """Official VQA accuracy per ground-truth type over the untouched-type samples plus every VQA ``keep`` sample."""
    touched = plan.target.touched_types
    scores: dict[str, list[float]] = {}
    pairs = [
        (s, a)
        for s, a in zip(plan.samples, answers, strict=True)
        if sample_task(s) == "vqa" and sample_type(s) not in touched
    ]
    pairs += [(s, a) for s, a in zip(plan.keep, keep_answers, strict=True) if sample_task(s) == "vqa"]
    for s, a in pairs:
        scores.setdefault(sample_type(s), []).append(vqa_accuracy(a, s.answers))
    return {t: sum(v) / len(v) for t, v in sorted(scores.items())}


def _cider(samples: Sequence[Sample], answers: Sequence[str]) -> float | None:
    pairs = [(a, s.answers) for s, a in zip(samples, answers, strict=True) if sample_task(s) == "caption" and s.answers]
    if not pairs:
        return None
    return float(cider_d([a for a, _ in pairs], [r for _, r in pairs]).score)


def moved(
    target: Any,
    relevant: Sequence[bool],
    answers: Sequence[str],
    before: Sequence[str],
    margins: Sequence[float],
    base_margins: Sequence[float],
    threshold: float,
) -> list[int]:
    """Per sample: +1 moved toward the target, -1 away, 0 neither or not relevant (see `nnshift.steering.sweeps`)."""
    out = []
    for i, rel in enumerate(relevant):
        if not rel:
            out.append(0)
        elif target.task == "caption":
            now, was = target.hit(answers[i]), target.hit(before[i])
            out.append(1 if now and not was else -1 if was and not now else 0)
        else:
            d = margins[i] - base_margins[i]
            out.append(0 if math.isnan(d) else 1 if d > threshold else -1 if d < -threshold else 0)
    return out


def evaluate_row(
    plan: Any,
    kind: str,
    name: str,
    layer: int | None,
    alpha: float | None,
    text: Sequence[str],
    ids: Sequence[Sequence[int]],
    margins: Sequence[float],
    base: Any,
    base_row: SweepRow | None,
    threshold: float,
) -> SweepRow:
    """A `SweepRow` (without fluency) for answers ``text`` of the samples then keep; ``base``: the unsteered answers."""
    n = len(plan.samples)
    answers, keep = list(text[:n]), list(text[n:])
    before = list(base.text[:n])
    relevant = plan.target.relevant(plan.samples, before)
    n_rel = sum(relevant)
    hits = sum(plan.target.hit(a) for a, r in zip(answers, relevant, strict=True) if r)
    acc = untouched_accuracy(plan, answers, keep)
    ref = acc if base_row is None else base_row.untouched_accuracy
    drops = [ref[t] - acc[t] for t in acc if t in ref]
    row = SweepRow(
        kind=kind,
        name=name,
        layer=layer,
        alpha=alpha,
        target_rate=hits / n_rel if n_rel else math.nan,
        n_relevant=n_rel,
        untouched_accuracy=acc,
        max_drop=max(drops) if drops else math.nan,
        cider=_cider([*plan.samples, *plan.keep], [*answers, *keep]),
        answers=answers,
        keep_answers=keep,
        sample_length=[len(x) for x in ids[:n]],
        sample_margin=[float(m) for m in margins[:n]],
    )
    row.length = sum(row.sample_length) / n if n else math.nan
    if plan.steerability:
        row.sample_moved = moved(plan.target, relevant, answers, before, margins[:n], base.margins[:n], threshold)
        row.toward = sum(m > 0 for m in row.sample_moved) / n_rel if n_rel else math.nan
        row.away = sum(m < 0 for m in row.sample_moved) / n_rel if n_rel else math.nan
    else:
        row.sample_moved = [0] * n
    return row
