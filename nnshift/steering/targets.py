"""What a steering sweep aims at: an answer type, target answers, or a caption style (frozen dataclasses).

Each target knows the task of its samples (``"vqa"`` or ``"caption"``), which ground-truth answer types it
touches (accuracy on every other type must be kept), which samples count in its rate (`relevant`), when an answer
reaches it (`hit`), and, for VQA targets, the answers whose first tokens define the log-probability margin used
to call a sample "moved" (`margins_words`):

* `AnswerTypeTarget` ``("yes/no" -> "number")``: rate = share of the samples whose ground-truth type is a source
  type that are answered with an answer of the target type (`nnshift.evaluate.answer_type`);
* `TargetAnswer` ``("yes" -> "no")``: rate = share of the samples answered with a source answer by the unsteered
  model that are answered with a target answer by the steered one (answers compared after `normalize_answer`);
* `CaptionStyle` ``("colors")``: rate = share of the answers (captions) having the style
  (`nnshift.evaluate.has_style`; keywords from `nnshift.evaluate.STYLE_KEYWORDS` unless given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nnshift.answers import ANSWER_TYPES, answer_type, normalize_answer
from nnshift.data import Sample
from nnshift.errors import ArgumentError, SteeringError
from nnshift.evaluate import STYLE_KEYWORDS, has_style, sample_answer_type

__all__ = [
    "DEFAULT_TYPE_WORDS",
    "AnswerTypeTarget",
    "CaptionStyle",
    "Target",
    "TargetAnswer",
    "sample_task",
    "sample_type",
    "target_from_spec",
]

#: answers tried for an answer type's side of the margin (with the samples' own reference answers of that type)
DEFAULT_TYPE_WORDS: dict[str, tuple[str, ...]] = {
    "yes/no": ("yes", "no"),
    "number": tuple(str(i) for i in range(11)),
    "other": (),
}


def sample_task(sample: Sample) -> str:
    """``"caption"`` for a caption sample (``meta["task"] == "caption"``), else ``"vqa"``."""
    return "caption" if sample.meta.get("task") == "caption" else "vqa"


#: the ground-truth answer type of a VQA sample (one rule with `nnshift.evaluate.evaluate_vqa`)
sample_type = sample_answer_type


def _strings(value: Any, name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise ArgumentError(
            f"{name} must be a non-empty string or list of strings, got {value!r:.80}", f"pass {name}='yes'"
        )
    return tuple(items)


def _check_types(types: Sequence[str], name: str) -> None:
    bad = [t for t in types if t not in ANSWER_TYPES]
    if bad:
        raise ArgumentError(f"unknown answer type(s) {bad} in {name}", f"use {list(ANSWER_TYPES)}")


def _refs_of_type(samples: Sequence[Sample], types: Sequence[str]) -> list[str]:
    return [normalize_answer(s.answers[0]) for s in samples if s.answers and sample_type(s) in types]


@dataclass(frozen=True)
class AnswerTypeTarget:
    """Steer questions of the ``source`` answer type(s) to be answered with an answer of the ``target`` type."""

    source: str | Sequence[str]
    target: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _strings(self.source, "source"))
        _strings(self.target, "target")
        _check_types([*self.source, self.target], "the target")
        if self.target in self.source:
            raise SteeringError(f"the target type {self.target!r} is also a source type", "give two different types")

    task = "vqa"

    @property
    def touched_types(self) -> frozenset[str]:
        """The answer types this target moves: the source types and the target type."""
        return frozenset([*self.source, self.target])

    def relevant(self, samples: Sequence[Sample], before: Sequence[str]) -> list[bool]:
        """Samples counted in the rate: those whose ground-truth type is a source type."""
        return [sample_type(s) in self.source for s in samples]

    def hit(self, answer: str) -> bool:
        """Whether ``answer`` is of the target type."""
        return answer_type(answer) == self.target

    def margin_words(self, samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
        """(source answers, target answers) whose first tokens define the margin: defaults + the samples' answers."""
        src = {w for t in self.source for w in DEFAULT_TYPE_WORDS.get(t, ())} | set(_refs_of_type(samples, self.source))
        tgt = set(DEFAULT_TYPE_WORDS.get(self.target, ())) | set(_refs_of_type(samples, [self.target]))
        return sorted(src - tgt), sorted(tgt)

    def describe(self) -> str:
        """A short label, e.g. ``answer type yes/no -> number``."""
        return f"answer type {'|'.join(self.source)} -> {self.target}"

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (read back by `target_from_spec`)."""
        return {"kind": "answer_type", "source": list(self.source), "target": self.target}


@dataclass(frozen=True)
class TargetAnswer:
    """Steer samples answered with a ``source`` answer (unsteered) to be answered with a ``target`` answer."""

    source: str | Sequence[str]
    target: str | Sequence[str]

    def __post_init__(self) -> None:
        src = tuple(normalize_answer(a) for a in _strings(self.source, "source"))
        tgt = tuple(normalize_answer(a) for a in _strings(self.target, "target"))
        if set(src) & set(tgt):
            raise SteeringError(
                f"source and target share answers {sorted(set(src) & set(tgt))}", "give two different answers"
            )
        object.__setattr__(self, "source", src)
        object.__setattr__(self, "target", tgt)

    task = "vqa"

    @property
    def touched_types(self) -> frozenset[str]:
        """The answer types of the source and target answers."""
        return frozenset(answer_type(a) for a in (*self.source, *self.target))

    def relevant(self, samples: Sequence[Sample], before: Sequence[str]) -> list[bool]:
        """Samples counted in the rate: those the unsteered model answers with a source answer."""
        return [normalize_answer(a) in self.source for a in before]

    def hit(self, answer: str) -> bool:
        """Whether ``answer`` is a target answer (after normalisation)."""
        return normalize_answer(answer) in self.target

    def margin_words(self, samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
        """(source answers, target answers) whose first tokens define the margin."""
        return list(self.source), list(self.target)

    def describe(self) -> str:
        """A short label, e.g. ``answer yes -> no``."""
        return f"answer {'|'.join(self.source)} -> {'|'.join(self.target)}"

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (read back by `target_from_spec`)."""
        return {"kind": "target_answer", "source": list(self.source), "target": list(self.target)}


@dataclass(frozen=True)
class CaptionStyle:
    """Steer captions to have a ``style``: contain one of its ``keywords`` (default `STYLE_KEYWORDS[style]`)."""

    style: str
    keywords: Sequence[str] | None = None

    def __post_init__(self) -> None:
        _strings(self.style, "style")
        if self.keywords is None:
            if self.style not in STYLE_KEYWORDS:
                raise ArgumentError(
                    f"unknown caption style {self.style!r} and no keywords given",
                    f"use one of {sorted(STYLE_KEYWORDS)} or pass keywords=[...]",
                )
            object.__setattr__(self, "keywords", tuple(STYLE_KEYWORDS[self.style]))
        else:
            object.__setattr__(self, "keywords", _strings(self.keywords, "keywords"))

    task = "caption"

    @property
    def touched_types(self) -> frozenset[str]:
        """None: a caption style touches no VQA answer type (questions in ``keep`` must all keep their accuracy)."""
        return frozenset()

    def relevant(self, samples: Sequence[Sample], before: Sequence[str]) -> list[bool]:
        """Every caption counts."""
        return [True] * len(samples)

    def hit(self, answer: str) -> bool:
        """Whether the caption has the style."""
        return has_style(answer, self.keywords or ())

    def margin_words(self, samples: Sequence[Sample]) -> None:
        """None: a caption's move is the discrete style flag, not a first-token margin."""
        return None

    def describe(self) -> str:
        """A short label, e.g. ``caption style colors``."""
        return f"caption style {self.style}"

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (read back by `target_from_spec`)."""
        return {"kind": "caption_style", "style": self.style, "keywords": list(self.keywords or ())}


#: any of the three targets
Target = AnswerTypeTarget | TargetAnswer | CaptionStyle


def target_from_spec(spec: Any) -> Target:
    """The target a `spec()` dict describes (`ArgumentError` for an unknown kind)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "answer_type":
        return AnswerTypeTarget(spec["source"], spec["target"])
    if kind == "target_answer":
        return TargetAnswer(spec["source"], spec["target"])
    if kind == "caption_style":
        return CaptionStyle(spec["style"], spec.get("keywords"))
    raise ArgumentError(
        f"unknown target spec {spec!r:.80}", "use a spec written by AnswerTypeTarget/TargetAnswer/CaptionStyle"
    )
