"""Evaluation of (steered) answers: VQA accuracy per answer type, answer-type and target-answer rates, caption styles.

Every answer is compared after the EvalAI-style normalisation of `normalize_answer` (lower case, punctuation,
number words -> digits, articles dropped, common contractions restored). The VQA score of one prediction is the
official one by default: ``min(1, #matching annotators / 3)`` averaged over the 10 leave-one-annotator-out subsets
(``official=False`` gives the simplified ``min(1, #matches / 3)`` of the reference code); with fewer than 3
reference answers it is exact match. Scores are in [0, 1].
Caption quality is CIDEr-D (`cider_d`, from `nnshift.cider`) against reference captions.
Reports are dataclasses with ``to_dict()`` for JSON.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nnshift.answers import ANSWER_TYPES, answer_type, normalize_answer
from nnshift.cider import CiderResult, cider_d
from nnshift.data import Sample
from nnshift.errors import ArgumentError, DataFormatError, EmptyInputError

__all__ = [
    "ANSWER_TYPES",
    "STYLE_KEYWORDS",
    "CaptionComparison",
    "CaptionReport",
    "CaptionSteeringReport",
    "CiderResult",
    "SteeringReport",
    "VQAComparison",
    "VQAReport",
    "answer_counts",
    "answer_type",
    "caption_report",
    "caption_style_rates",
    "cider_d",
    "compare_captions",
    "compare_vqa",
    "count_changed",
    "evaluate_vqa",
    "has_style",
    "normalize_answer",
    "sample_answer_type",
    "vqa_accuracy",
]


def vqa_accuracy(prediction: str, references: Sequence[str], official: bool = True) -> float:
    """VQA score of one prediction against the annotators' answers, in [0, 1].

    ``official=True``: ``min(1, #matches among the other annotators / 3)`` averaged over every
    leave-one-annotator-out subset (10 subsets for VQAv2's 10 answers); ``official=False``:
    ``min(1, #matches / 3)`` over all annotators. With fewer than 3 reference answers (single-answer
    datasets such as the shapes world) the formula cannot reach 1, so the score is exact match (1 when any
    reference matches). No reference answers gives 0.
    """
    if len(references) == 0:
        return 0.0
    pred = normalize_answer(prediction)
    hits = [normalize_answer(r) == pred for r in references]
    if len(references) < 3:
        return float(any(hits))
    if not official:
        return min(1.0, sum(hits) / 3.0)
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(hits)


def answer_counts(answers: Iterable[str]) -> dict[str, int]:
    """Counts of normalised answers, most common first."""
    return dict(Counter(normalize_answer(a) for a in answers).most_common())


def _matches(answer: str, wanted: Sequence[str]) -> bool:
    return normalize_answer(answer) in {normalize_answer(w) for w in wanted}


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def count_changed(before: Sequence[str], after: Sequence[str], normalize: bool = True) -> int:
    """How many answers differ between two runs (after normalisation by default)."""
    _same_length(before, after)
    f = normalize_answer if normalize else (lambda x: x)
    return sum(f(a) != f(b) for a, b in zip(before, after, strict=True))


def _same_length(a: Sequence[Any], b: Sequence[Any], what: str = "answer lists") -> None:
    if len(a) != len(b):
        raise DataFormatError(f"the {what} have different lengths ({len(a)} vs {len(b)})", "pass one entry per sample")


def _rates(counts: Mapping[str, int], n: int) -> dict[str, float]:
    return {k: (v / n if n else 0.0) for k, v in counts.items()}


# ---------------------------------------------------------------------------- VQA


@dataclass
class VQAReport:
    """VQA accuracy and answer statistics of one run.

    ``accuracy`` is the mean score over all samples; ``macro_accuracy`` the mean of the per-type means (the
    reference's "overall"); ``accuracy_by_type`` uses each sample's ground-truth type (``meta["answer_type"]``,
    else the type of its first reference answer); ``predicted_types`` counts the types of the predictions.
    """

    n: int
    accuracy: float
    macro_accuracy: float
    accuracy_by_type: dict[str, float]
    samples_by_type: dict[str, int]
    predicted_types: dict[str, int]
    predicted_type_rates: dict[str, float]
    answer_counts: dict[str, int]
    official: bool = True
    scores: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, scores: bool = False) -> dict[str, Any]:
        """A JSON-able dict (per-sample scores only with ``scores=True``)."""
        d = asdict(self)
        if not scores:
            d.pop("scores")
        return d


def sample_answer_type(sample: Sample) -> str:
    """The ground-truth answer type of a VQA sample: ``meta["answer_type"]``, else the type of its first answer."""
    t = sample.meta.get("answer_type")
    if t:
        return str(t)
    return answer_type(sample.answers[0]) if sample.answers else "other"


def evaluate_vqa(
    predictions: Sequence[str],
    samples: Sequence[Sample],
    *,
    official: bool = True,
    types: Mapping[str, str] | None = None,
) -> VQAReport:
    """VQA accuracy per ground-truth answer type, predicted answer-type counts and rates, answer counts."""
    if len(samples) == 0:
        raise EmptyInputError("evaluate_vqa() got no samples", "pass the samples the predictions answer")
    _same_length(predictions, samples, "predictions and samples")
    scores = [vqa_accuracy(p, s.answers, official) for p, s in zip(predictions, samples, strict=True)]
    by_type: dict[str, list[float]] = {}
    for s, sc in zip(samples, scores, strict=True):
        by_type.setdefault(sample_answer_type(s), []).append(sc)
    order = [t for t in ANSWER_TYPES if t in by_type] + sorted(t for t in by_type if t not in ANSWER_TYPES)
    acc_by_type = {t: sum(by_type[t]) / len(by_type[t]) for t in order}
    predicted = Counter(answer_type(p, types) for p in predictions)
    pred_types = {t: predicted.get(t, 0) for t in ANSWER_TYPES} | {
        t: c for t, c in predicted.items() if t not in ANSWER_TYPES
    }
    n = len(samples)
    return VQAReport(
        n=n,
        accuracy=sum(scores) / n,
        macro_accuracy=sum(acc_by_type.values()) / len(acc_by_type),
        accuracy_by_type=acc_by_type,
        samples_by_type={t: len(by_type[t]) for t in order},
        predicted_types=pred_types,
        predicted_type_rates=_rates(pred_types, n),
        answer_counts=answer_counts(predictions),
        official=official,
        scores=scores,
    )


@dataclass
class VQAComparison:
    """Steered vs unsteered VQA answers on the same samples (`compare_vqa`; formerly ``SteeringReport``).

    ``source_counts`` / ``target_counts`` are ``(before, after)`` counts of answers equal (after normalisation)
    to one of the source / target answers; ``untouched_accuracy`` maps each answer type that the steering is
    not meant to touch to ``{"before", "after", "delta"}`` accuracies; ``changed`` counts answers that differ;
    ``turned`` counts samples answered with a source answer before and with a target answer after.
    """

    before: VQAReport
    after: VQAReport
    source: list[str]
    target: list[str]
    source_counts: tuple[int, int]
    target_counts: tuple[int, int]
    type_rates: dict[str, tuple[float, float]]
    untouched_accuracy: dict[str, dict[str, float]]
    changed: int
    turned: int = 0

    @property
    def changed_rate(self) -> float:
        """Share of answers that changed."""
        return self.changed / self.before.n if self.before.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "source": self.source,
            "target": self.target,
            "source_counts": {"before": self.source_counts[0], "after": self.source_counts[1]},
            "target_counts": {"before": self.target_counts[0], "after": self.target_counts[1]},
            "type_rates": {t: {"before": b, "after": a} for t, (b, a) in self.type_rates.items()},
            "untouched_accuracy": self.untouched_accuracy,
            "changed": self.changed,
            "changed_rate": self.changed_rate,
            "turned": self.turned,
        }


def _check_compare_args(
    before: Any, after: Any, samples: Any, answers: tuple[Any, Any, Any], official: Any, types: Any
) -> None:
    """`compare_vqa`'s arguments of the right kinds, before any work."""
    from nnshift.arguments import check_flag, check_mapping, check_strings

    for name, x in (("before", before), ("after", after)):
        if not isinstance(x, (list, tuple)) or not all(isinstance(a, str) for a in x):
            raise ArgumentError(f"{name} must be a list of answers (str), got {x!r:.60}", "pass ns.generate's output")
    if not isinstance(samples, (list, tuple)) or not all(isinstance(s, Sample) for s in samples):
        raise ArgumentError(f"samples must be a list of ns.Sample, got {samples!r:.60}", "pass the samples answered")
    for name, x in zip(("source", "target", "touched"), answers, strict=True):
        check_strings(x, name, optional=True)
    check_flag(official, "official"), check_mapping(types, "types")


def compare_vqa(
    before: Sequence[str],
    after: Sequence[str],
    samples: Sequence[Sample],
    *,
    source: str | Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    touched: str | Sequence[str] | None = None,
    official: bool = True,
    types: Mapping[str, str] | None = None,
) -> VQAComparison:
    """Compare unsteered (``before``) and steered (``after``) answers of the same samples.

    ``source`` / ``target``: the answer(s) steered from / to (e.g. "yes" -> "no"), counted before and after.
    ``touched``: the ground-truth answer types the steering aims at; accuracy is reported as kept or not on
    every other type (default: the types of the source and target answers, or none).
    """
    _check_compare_args(before, after, samples, (source, target, touched), official, types)
    _same_length(before, after)
    rb = evaluate_vqa(before, samples, official=official, types=types)
    ra = evaluate_vqa(after, samples, official=official, types=types)
    src, tgt = _as_list(source), _as_list(target)
    touched_types = {answer_type(a, types) for a in src + tgt} if touched is None else set(_as_list(touched))
    untouched = {
        t: {
            "before": rb.accuracy_by_type[t],
            "after": ra.accuracy_by_type[t],
            "delta": ra.accuracy_by_type[t] - rb.accuracy_by_type[t],
        }
        for t in rb.accuracy_by_type
        if t not in touched_types
    }
    types_all = list(dict.fromkeys([*rb.predicted_type_rates, *ra.predicted_type_rates]))
    return VQAComparison(
        before=rb,
        after=ra,
        source=src,
        target=tgt,
        source_counts=(sum(_matches(a, src) for a in before), sum(_matches(a, src) for a in after)),
        target_counts=(sum(_matches(a, tgt) for a in before), sum(_matches(a, tgt) for a in after)),
        type_rates={t: (rb.predicted_type_rates.get(t, 0.0), ra.predicted_type_rates.get(t, 0.0)) for t in types_all},
        untouched_accuracy=untouched,
        changed=count_changed(before, after),
        turned=sum(_matches(b, src) and _matches(a, tgt) for b, a in zip(before, after, strict=True)),
    )


# ---------------------------------------------------------------------------- captions

#: keyword sets of caption styles (lower case; a caption has the style when it contains any keyword as a word)
STYLE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "colors": (
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "pink",
        "brown",
        "black",
        "white",
        "gray",
        "grey",
        "violet",
        "golden",
        "silver",
        "beige",
        "tan",
        "colorful",
        "colourful",
    ),
    "places": (
        "kitchen",
        "bathroom",
        "bedroom",
        "living room",
        "room",
        "office",
        "street",
        "road",
        "city",
        "park",
        "beach",
        "ocean",
        "sea",
        "water",
        "lake",
        "river",
        "field",
        "grass",
        "forest",
        "mountain",
        "snow",
        "sky",
        "sand",
        "desert",
        "airport",
        "station",
        "restaurant",
        "market",
        "garden",
        "yard",
        "farm",
        "zoo",
        "stadium",
        "court",
        "track",
        "harbor",
        "shop",
        "store",
    ),
    "sentiments": (
        "happy",
        "sad",
        "beautiful",
        "lovely",
        "cute",
        "nice",
        "pretty",
        "ugly",
        "angry",
        "calm",
        "peaceful",
        "scary",
        "lonely",
        "joyful",
        "cheerful",
        "gloomy",
        "delicious",
        "amazing",
        "wonderful",
        "terrible",
    ),
}


def _keyword_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    words = sorted({k.strip().lower() for k in keywords if k.strip()}, key=len, reverse=True)
    if not words:
        raise DataFormatError("a caption style has no keywords", "give at least one keyword per style")
    alts = "|".join(r"\s+".join(re.escape(p) for p in w.split()) for w in words)
    return re.compile(rf"(?<![a-z0-9])(?:{alts})(?![a-z0-9])")


def has_style(caption: str, keywords: Iterable[str]) -> bool:
    """Whether ``caption`` contains any of ``keywords`` as a whole word (case-insensitive; phrases allowed)."""
    return bool(_keyword_pattern(keywords).search(caption.lower()))


def _styles(styles: Mapping[str, Iterable[str]] | Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    if styles is None:
        return dict(STYLE_KEYWORDS)
    if isinstance(styles, Mapping):
        return {k: tuple(v) for k, v in styles.items()}
    unknown = [s for s in styles if s not in STYLE_KEYWORDS]
    if unknown:
        raise DataFormatError(
            f"unknown caption styles {unknown}", f"use {sorted(STYLE_KEYWORDS)} or pass a dict style -> keywords"
        )
    return {s: STYLE_KEYWORDS[s] for s in styles}


def caption_style_rates(
    captions: Sequence[str], styles: Mapping[str, Iterable[str]] | Sequence[str] | None = None
) -> dict[str, float]:
    """Share of captions in each style (containing any keyword of the style), in [0, 1]."""
    return caption_report(captions, styles).rates


@dataclass
class CaptionReport:
    """Caption style statistics of one run: per style, the count and share of captions containing a keyword."""

    n: int
    counts: dict[str, int]
    rates: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def caption_report(
    captions: Sequence[str], styles: Mapping[str, Iterable[str]] | Sequence[str] | None = None
) -> CaptionReport:
    """Counts and rates of caption styles (default styles: `STYLE_KEYWORDS`)."""
    if len(captions) == 0:
        raise EmptyInputError("no captions to evaluate", "pass at least one caption")
    pats = {name: _keyword_pattern(kw) for name, kw in _styles(styles).items()}
    counts = {name: sum(bool(p.search(c.lower())) for c in captions) for name, p in pats.items()}
    return CaptionReport(n=len(captions), counts=counts, rates=_rates(counts, len(captions)))


@dataclass
class CaptionComparison:
    """Steered vs unsteered captions (`compare_captions`; formerly ``CaptionSteeringReport``).

    Style rates before and after, how many captions changed, and (when references were given) the CIDEr-D of
    each run against them.
    """

    before: CaptionReport
    after: CaptionReport
    changed: int
    cider: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "changed": self.changed,
            "cider": list(self.cider) if self.cider is not None else None,
        }


def compare_captions(
    before: Sequence[str],
    after: Sequence[str],
    styles: Mapping[str, Iterable[str]] | Sequence[str] | None = None,
    references: Sequence[Sequence[str]] | None = None,
) -> CaptionComparison:
    """Caption style rates before and after steering, the number of changed captions, and with ``references``
    (one list of reference captions per caption) the CIDEr-D of both runs, ``(before, after)``."""
    _same_length(before, after, "caption lists")
    cider = None
    if references is not None:
        _same_length(before, references, "captions and reference lists")
        cider = (cider_d(before, references).score, cider_d(after, references).score)
    return CaptionComparison(
        before=caption_report(before, styles),
        after=caption_report(after, styles),
        changed=sum(a.strip() != b.strip() for a, b in zip(before, after, strict=True)),
        cider=cider,
    )


#: former names, kept as aliases
SteeringReport = VQAComparison
CaptionSteeringReport = CaptionComparison
