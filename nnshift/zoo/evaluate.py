"""Held-out quality of the shapes models: greedy generation with plain HF ``generate`` and the world's scoring rules.

These are the zoo's own, simpler rules (exact match of lower-case words), not `nnshift.evaluate`'s VQA scoring:
`normalize_zoo_answer`, `generate_answers` (plain Hugging Face, no nnsight) and `zoo_vqa_accuracy` (per answer
type and question kind) are named apart from `nnshift.evaluate.normalize_answer`, `nnshift.generate` and
`nnshift.evaluate.vqa_accuracy`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import torch

from nnshift.data import Sample
from nnshift.errors import EmptyInputError
from nnshift.zoo.world import BACKGROUNDS, COLORS, SHAPES, dataset

__all__ = [
    "EVAL_SEED",
    "words_of",
    "normalize_zoo_answer",
    "generate_answers",
    "vqa_correct",
    "names_every_shape",
    "names_colors",
    "names_background",
    "zoo_vqa_accuracy",
    "caption_rates",
    "quality_report",
]

EVAL_SEED = 777  # held-out scenes: training draws its scenes from other seed streams


def words_of(text: str) -> list[str]:
    """Lower-case words of a text (letters and digits)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def normalize_zoo_answer(text: str) -> str:
    """A VQA answer as compared with the reference: lower-case words joined by single spaces."""
    return " ".join(words_of(text))


def generate_answers(
    model: Any, processor: Any, samples: Sequence[Sample], max_new_tokens: int = 40, batch_size: int = 100
) -> list[str]:
    """Greedy answers of a Hugging Face LLaVA-style model to samples (chat template, left padding, eos stops)."""
    if not samples:
        raise EmptyInputError("no samples to generate for", "pass at least one sample")
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            texts, images = [], []
            for s in chunk:
                img = s.load_image()
                content: list[dict[str, str]] = [{"type": "image"}] if img is not None else []
                content.append({"type": "text", "text": s.prompt})
                texts.append(
                    processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
                )
                if img is not None:
                    images.append(img)
            if images and len(images) != len(chunk):
                raise EmptyInputError(
                    "a batch mixes samples with and without images", "generate text-only samples in their own call"
                )
            inputs = processor(images=images or None, text=texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            new = out[:, inputs["input_ids"].shape[1] :]
            outputs.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
    return outputs


def vqa_correct(sample: Sample, output: str) -> bool:
    """The normalised output equals one of the sample's reference answers."""
    return normalize_zoo_answer(output) in {normalize_zoo_answer(a) for a in sample.answers}


def names_every_shape(sample: Sample, output: str) -> bool:
    """The caption names every shape of the image."""
    w = set(words_of(output))
    return all(o["shape"] in w for o in sample.meta["objects"])


def names_colors(sample: Sample, output: str) -> bool:
    """The caption names each object with its correct colour ("red circle")."""
    w = words_of(output)
    bigrams = set(itertools.pairwise(w))
    return all((o["color"], o["shape"]) in bigrams for o in sample.meta["objects"])


def names_background(sample: Sample, output: str) -> bool:
    """The caption names the correct background and no other."""
    w = set(words_of(output))
    named = {b for b in BACKGROUNDS if b in w}
    return named == {sample.meta["background"]}


def _rate(flags: Sequence[bool]) -> float:
    """Share of True."""
    return float(sum(flags)) / len(flags) if flags else float("nan")


def zoo_vqa_accuracy(samples: Sequence[Sample], outputs: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per VQAv2 answer type and per question kind (keys ``kind:<name>``), and overall."""
    res: dict[str, list[bool]] = {}
    for s, o in zip(samples, outputs, strict=True):
        ok = vqa_correct(s, o)
        for key in ("all", s.meta["answer_type"], f"kind:{s.meta['question_kind']}"):
            res.setdefault(key, []).append(ok)
    return {k: _rate(v) for k, v in res.items()}


def caption_rates(samples: Sequence[Sample], outputs: Sequence[str]) -> dict[str, float]:
    """Shares of captions naming every shape, every object's colour, the background; mean colour words per caption."""
    colors = set(COLORS)
    return {
        "names_every_shape": _rate([names_every_shape(s, o) for s, o in zip(samples, outputs, strict=True)]),
        "names_colors": _rate([names_colors(s, o) for s, o in zip(samples, outputs, strict=True)]),
        "names_background": _rate([names_background(s, o) for s, o in zip(samples, outputs, strict=True)]),
        "no_extra_shape": _rate(
            [
                set(words_of(o)) & set(SHAPES) <= {ob["shape"] for ob in s.meta["objects"]}
                for s, o in zip(samples, outputs, strict=True)
            ]
        ),
        "color_words": sum(sum(w in colors for w in words_of(o)) for o in outputs) / max(1, len(outputs)),
    }


def quality_report(n: int = 300, seed: int = EVAL_SEED, batch_size: int = 150) -> dict[str, dict[str, float]]:
    """The issue's held-out measurements on the shipped checkpoints (loaded with transformers + PEFT, merged)."""
    from nnshift.zoo import load_hf

    vqa = dataset(n, task="vqa", seed=seed)
    caps = dataset(n, style="generic", task="caption", seed=seed)
    report: dict[str, dict[str, float]] = {}
    model, processor = load_hf("shapes-base")
    report["shapes-base/vqa"] = zoo_vqa_accuracy(vqa, generate_answers(model, processor, vqa, batch_size=batch_size))
    report["shapes-base/caption"] = caption_rates(caps, generate_answers(model, processor, caps, batch_size=batch_size))
    for name in ("shapes-colors", "shapes-places"):
        model, processor = load_hf(name, merged=True)
        report[f"{name}/caption"] = caption_rates(caps, generate_answers(model, processor, caps, batch_size=batch_size))
    return report


_FORMER_NAMES = {
    "normalize_answer": "normalize_zoo_answer",
    "generate": "generate_answers",
    "vqa_accuracy": "zoo_vqa_accuracy",
}


def __getattr__(name: str) -> Any:
    """The former names (which shadowed `nnshift.evaluate`'s and `nnshift.generate`), with a DeprecationWarning."""
    if name in _FORMER_NAMES:
        import warnings

        new = _FORMER_NAMES[name]
        warnings.warn(f"nnshift.zoo.evaluate.{name} is now {new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
