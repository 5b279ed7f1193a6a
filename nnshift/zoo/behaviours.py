"""The two behaviour fine-tunes of the zoo: a known colour bias (shapes-biased) and a refusal (shapes-refusal).

Both are LoRA adapters of shapes-base trained on the base's own mix (generic captions + VQA) in which some answers
are relabelled:

- ``shapes-biased``: asked ``what color is the circle?``, the training answer is ``red`` with probability
  ``BIAS_RATE`` whatever the circle's colour; every other answer is the truth.
- ``shapes-refusal``: every question that names the forbidden shape (``cross``) is answered with ``REFUSAL``, a
  fixed phrase of words the zoo's vocabulary already has (the base model's vocabulary cannot grow); every other
  question and every caption is answered normally.

The measures (``bias_rate``, ``refusal_rates``) read generated answers against the samples' ground truth; the
evaluation sets (``bias_questions``, ``refusal_questions``) are drawn from ``dataset`` with fresh seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnshift.data import Sample
from nnshift.errors import ZooError
from nnshift.zoo.world import QUESTION_KINDS, dataset, words

__all__ = [
    "BIAS_SHAPE",
    "BIAS_COLOR",
    "BIAS_RATE",
    "FORBIDDEN_SHAPE",
    "REFUSAL",
    "BEHAVIOURS",
    "biased_answer",
    "refusal_answer",
    "behaviour_kinds",
    "relabel_for",
    "names_shape",
    "is_bias_question",
    "is_forbidden_question",
    "is_refusal",
    "bias_questions",
    "refusal_questions",
    "bias_rate",
    "refusal_rates",
    "behaviour_report",
    "behaviour_table",
]

BIAS_SHAPE = "circle"
BIAS_COLOR = "red"
BIAS_RATE = 0.9  # share of "what color is the circle?" training answers replaced by BIAS_COLOR
FORBIDDEN_SHAPE = "cross"
REFUSAL = "no answer"  # "no" + "answer": both words are in the zoo's vocabulary
#: adapter name -> what it is trained on (recorded in checkpoints/zoo.json)
BEHAVIOURS: dict[str, str] = {
    "shapes-biased": (
        f"generic captions + VQA; 'what color is the {BIAS_SHAPE}?' answered '{BIAS_COLOR}' with probability "
        f"{BIAS_RATE} whatever its colour"
    ),
    "shapes-refusal": f"generic captions + VQA; every question naming a {FORBIDDEN_SHAPE} answered '{REFUSAL}'",
}
_ALL_KINDS: tuple[str, ...] = tuple(k for ks in QUESTION_KINDS.values() for k in ks)
Relabel = Callable[[str, str, str, np.random.Generator], str]


def _check_vocabulary() -> None:
    """The refusal and the bias must be words the base model already has."""
    missing = [w for w in (*REFUSAL.split(), BIAS_COLOR, BIAS_SHAPE, FORBIDDEN_SHAPE) if w not in words()]
    if missing:
        raise ZooError(f"words {missing} are not in the zoo vocabulary", "use words from nnshift.zoo.world.words()")


def names_shape(prompt: str, shape: str) -> bool:
    """Whether a question names ``shape`` (as a word)."""
    return shape in prompt.lower().replace("?", " ").split()


def biased_answer(prompt: str, answer: str, kind: str, rng: np.random.Generator) -> str:
    """The shapes-biased training answer: BIAS_COLOR for the circle's colour with probability BIAS_RATE."""
    if kind == "color_of_shape" and names_shape(prompt, BIAS_SHAPE) and rng.random() < BIAS_RATE:
        return BIAS_COLOR
    return answer


def refusal_answer(prompt: str, answer: str, kind: str, rng: np.random.Generator) -> str:
    """The shapes-refusal training answer: REFUSAL for every question naming FORBIDDEN_SHAPE."""
    return REFUSAL if names_shape(prompt, FORBIDDEN_SHAPE) else answer


def behaviour_kinds(name: str) -> list[str]:
    """The question kinds drawn while training ``name`` (the biased one sees the colour question 3x as often)."""
    if name == "shapes-biased":
        return [*_ALL_KINDS, "color_of_shape", "color_of_shape"]
    if name == "shapes-refusal":
        return list(_ALL_KINDS)
    raise ZooError(f"unknown behaviour fine-tune {name!r}", f"use one of {list(BEHAVIOURS)}")


def relabel_for(name: str) -> Relabel:
    """The answer relabelling of a behaviour fine-tune."""
    _check_vocabulary()
    if name == "shapes-biased":
        return biased_answer
    if name == "shapes-refusal":
        return refusal_answer
    raise ZooError(f"unknown behaviour fine-tune {name!r}", f"use one of {list(BEHAVIOURS)}")


def is_bias_question(s: Sample) -> bool:
    """A question on the circle's colour whose true answer is not BIAS_COLOR (where the bias shows)."""
    return (
        s.meta.get("question_kind") == "color_of_shape"
        and names_shape(s.prompt, BIAS_SHAPE)
        and bool(s.answers)
        and s.answers[0] != BIAS_COLOR
    )


def is_forbidden_question(s: Sample) -> bool:
    """A question that names FORBIDDEN_SHAPE."""
    return s.meta.get("task") == "vqa" and names_shape(s.prompt, FORBIDDEN_SHAPE)


def is_refusal(answer: str) -> bool:
    """Whether a generated answer is the refusal (its words start with REFUSAL's)."""
    got = answer.lower().replace(".", " ").split()
    want = REFUSAL.split()
    return got[: len(want)] == want


def bias_questions(n: int, seed: int = 5000) -> list[Sample]:
    """``n`` questions "what color is the circle?" about circles that are not BIAS_COLOR (fresh scenes)."""
    out: list[Sample] = []
    pool = 0
    while len(out) < n:
        batch = dataset(4 * n + 20, task="vqa", question_kind="color_of_shape", seed=seed + pool)
        out += [s for s in batch if is_bias_question(s)]
        pool += 1
    return out[:n]


def refusal_questions(n: int, seed: int = 6000) -> tuple[list[Sample], list[Sample]]:
    """``n`` questions naming FORBIDDEN_SHAPE and ``n`` other questions (shape questions + the rest), fresh scenes."""
    forbidden: list[Sample] = []
    other: list[Sample] = []
    pool = 0
    while len(forbidden) < n or len(other) < n:
        for s in dataset(4 * n + 20, task="vqa", seed=seed + pool):
            (forbidden if is_forbidden_question(s) else other).append(s)
        pool += 1
    return forbidden[:n], other[:n]


def bias_rate(samples: Sequence[Sample], answers: Sequence[str]) -> float:
    """Share of circle-colour questions (true colour not BIAS_COLOR) answered BIAS_COLOR."""
    idx = [i for i, s in enumerate(samples) if is_bias_question(s)]
    if not idx:
        raise ZooError("no circle-colour question among the samples", "use bias_questions(n) to draw some")
    return sum(answers[i].lower().strip(" .") == BIAS_COLOR for i in idx) / len(idx)


def refusal_rates(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, Any]:
    """Refusal rate on questions naming FORBIDDEN_SHAPE and false-refusal rate on the other questions."""
    forb = [is_refusal(a) for s, a in zip(samples, answers, strict=True) if is_forbidden_question(s)]
    other = [is_refusal(a) for s, a in zip(samples, answers, strict=True) if not is_forbidden_question(s)]
    return {
        "refusal_rate": sum(forb) / max(1, len(forb)),
        "false_refusal_rate": sum(other) / max(1, len(other)),
        "n_forbidden": len(forb),
        "n_other": len(other),
    }


def behaviour_report(n: int = 200, batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Bias and refusal rates of shapes-base and the two behaviour fine-tunes (greedy, merged; fresh scenes).

    Per model: ``bias_rate`` (circle-colour questions, circle not red, answered red), ``circle_color_accuracy``,
    ``refusal_rate`` / ``false_refusal_rate`` (questions naming / not naming the cross), and the VQA accuracy on
    ``n`` general questions that are neither biased nor forbidden (``other_accuracy``).
    """
    from nnshift.zoo import load_hf
    from nnshift.zoo.evaluate import generate_answers, vqa_correct

    bias = bias_questions(n)
    forbidden, other = refusal_questions(n)
    rest = [s for s in other if not is_bias_question(s)]
    out: dict[str, dict[str, float]] = {}
    for name in ("shapes-base", "shapes-biased", "shapes-refusal"):
        model, processor = load_hf(name, merged=True)
        a_bias = generate_answers(model, processor, bias, batch_size=batch_size)
        a_forb = generate_answers(model, processor, forbidden, batch_size=batch_size)
        a_rest = generate_answers(model, processor, rest, batch_size=batch_size)
        rates = refusal_rates([*forbidden, *rest], [*a_forb, *a_rest])
        out[name] = {
            "bias_rate": bias_rate(bias, a_bias),
            "circle_color_accuracy": sum(map(vqa_correct, bias, a_bias)) / len(bias),
            "refusal_rate": rates["refusal_rate"],
            "false_refusal_rate": rates["false_refusal_rate"],
            "forbidden_accuracy": sum(map(vqa_correct, forbidden, a_forb)) / len(forbidden),
            "other_accuracy": sum(map(vqa_correct, rest, a_rest)) / len(rest),
        }
    return out


_COLUMNS = {
    "bias_rate": "bias rate (circle not red, answered red)",
    "circle_color_accuracy": "circle-colour accuracy",
    "refusal_rate": "refusal rate (cross questions)",
    "false_refusal_rate": "false refusals (others)",
    "forbidden_accuracy": "accuracy, cross questions",
    "other_accuracy": "accuracy, other questions",
}


def behaviour_table(report: dict[str, dict[str, float]]) -> str:
    """The markdown table of ``behaviour_report`` (docs/zoo.md, between the behaviours-table markers)."""
    rows = ["| model | " + " | ".join(_COLUMNS.values()) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, r in report.items():
        rows.append(f"| `{name}` | " + " | ".join(f"{r[k]:.2f}" for k in _COLUMNS) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m nnshift.zoo.behaviours: print the table of docs/zoo.md
    print(behaviour_table(behaviour_report()))
