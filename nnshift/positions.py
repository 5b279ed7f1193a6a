"""Position selectors: which hidden states of a sequence to read (capture) or edit (steering).

One type, `Selector`, serves both capture and steering. Positions are *input* positions: the
hidden state at position ``i`` is the residual stream after reading token ``i``; its next-token
prediction is token ``i + 1``.

Prompt length ``P`` (without padding) and generated tokens ``g_0, g_1, ...``:

=====================  ================================================================
``every()``            every non-padding position: the prompt and every decode step
``prompt()``           positions ``0 .. P-1`` (the prefill pass)
``last_prompt()``      position ``P-1``: the state that produces the first answer token
``generated()``        positions ``P, P+1, ...``: every decode step (inputs are generated tokens)
``image()``            the image placeholder positions of the prompt
``text()``             the prompt positions that are not image tokens
``token_of_interest``  the state whose prediction is the first token of the TOI word in the answer
=====================  ================================================================

Selectors combine with ``|``: ``last_prompt() | generated()`` is every state that produces an
answer token. Strings are accepted as shorthands: ``"all"``, ``"prompt"``, ``"last_prompt"``,
``"generated"``, ``"image"``, ``"text"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from nnshift.errors import PositionError, TokenOfInterestError

__all__ = [
    "All",
    "Generated",
    "Image",
    "LastPrompt",
    "Prompt",
    "Selector",
    "SelectorLike",
    "Text",
    "TokenOfInterest",
    "Union",
    "as_selector",
    "every",
    "find_word_token",
    "generated",
    "image",
    "last_prompt",
    "prompt",
    "text",
    "token_of_interest",
]


@dataclass(frozen=True)
class Selector:
    """Base class: a rule that picks positions in a prompt (prefill) and in decode steps."""

    #: whether the selector needs the model's own answer (greedy generation) to be resolved
    needs_generation: bool = False
    #: whether the selector touches decode steps (a steering patch must then run at every step)
    touches_decode: bool = False

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        """Positions of the (left-padded) prompt that this selector picks."""
        raise NotImplementedError

    def decode_step(self) -> bool:
        """Whether a decode step (one new position per sample) is picked."""
        return False

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (saved in provenance)."""
        return {"kind": type(self).__name__}

    def __or__(self, other: SelectorLike) -> Union:
        return Union(parts=(self, as_selector(other)))

    def __str__(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True)
class All(Selector):
    """Every non-padding position, prompt and decode steps."""

    touches_decode: bool = True

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        return attention_mask.bool()

    def decode_step(self) -> bool:
        return True


@dataclass(frozen=True)
class Prompt(Selector):
    """Every non-padding prompt position (prefill only)."""

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        return attention_mask.bool()


@dataclass(frozen=True)
class LastPrompt(Selector):
    """The last prompt position, whose prediction is the first answer token."""

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        mask[:, -1] = True  # left padding: the last column is the last prompt token
        return mask & attention_mask.bool()


@dataclass(frozen=True)
class Generated(Selector):
    """Every decode step (positions whose input is a generated token); ``reduce="mean"`` averages them in capture."""

    reduce: Literal["mean"] | None = None
    needs_generation: bool = True
    touches_decode: bool = True

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        return torch.zeros_like(attention_mask, dtype=torch.bool)

    def decode_step(self) -> bool:
        return True

    def spec(self) -> dict[str, Any]:
        return {"kind": "Generated", "reduce": self.reduce}


@dataclass(frozen=True)
class Image(Selector):
    """The image placeholder positions of the prompt."""

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        if not bool(image_mask.any()):
            raise PositionError(
                "the image() selector found no image token in this input",
                "use a sample with an image, or select 'text' / 'all' positions for text-only prompts",
            )
        return image_mask & attention_mask.bool()


@dataclass(frozen=True)
class Text(Selector):
    """The prompt positions that are not image tokens."""

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        return attention_mask.bool() & ~image_mask


@dataclass(frozen=True)
class TokenOfInterest(Selector):
    """The state whose next-token prediction is the first token of ``word`` in the model's answer.

    Only the generated answer is searched, never the prompt. The word is matched as a whole word
    (so "red" does not match "bored", and a bare whitespace / sentencepiece marker token never
    matches); ``variants=True`` also accepts plural and capitalised forms.
    """

    word: str = ""
    variants: bool = False
    needs_generation: bool = True
    #: further words of the same class (e.g. every colour): the first occurrence of any of them is kept
    alternatives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for w in (self.word, *self.alternatives):
            if not w.strip() or re.search(r"\s", w.strip()):
                raise TokenOfInterestError(
                    f"token of interest {w!r} must be one non-empty word",
                    "pass a single word such as token_of_interest('dog'), or a list of single words",
                )

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        raise PositionError(
            "token_of_interest() is resolved on the model's answer and cannot edit a prompt",
            "for steering use 'all', 'generated' or 'last_prompt'",
        )

    def forms(self) -> list[str]:
        """The accepted surface forms of the word."""
        words = [w.strip() for w in (self.word, *self.alternatives)]
        if not self.variants:
            return sorted(set(words), key=len, reverse=True)
        base = {f for w in words for f in (w, w.lower(), w.capitalize())}
        plural = {f + ("es" if f.endswith(("s", "x", "ch", "sh")) else "s") for f in base}
        return sorted(base | plural, key=len, reverse=True)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "TokenOfInterest", "word": self.word, "variants": self.variants}
        if self.alternatives:
            spec["alternatives"] = list(self.alternatives)
        return spec

    def __str__(self) -> str:
        words = [self.word, *self.alternatives]
        return f"token_of_interest({words[0]!r})" if len(words) == 1 else f"token_of_interest({words!r})"


@dataclass(frozen=True)
class Union(Selector):
    """The union of several selectors (``a | b``)."""

    parts: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_generation", any(p.needs_generation for p in self.parts))
        object.__setattr__(self, "touches_decode", any(p.touches_decode for p in self.parts))
        if any(isinstance(p, TokenOfInterest) for p in self.parts):
            raise PositionError("token_of_interest() cannot be combined with other selectors", "capture it alone")

    def prefill_mask(self, attention_mask: Int[Tensor, "b s"], image_mask: Bool[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        out = torch.zeros_like(attention_mask, dtype=torch.bool)
        for p in self.parts:
            out |= p.prefill_mask(attention_mask, image_mask)
        return out

    def decode_step(self) -> bool:
        return any(p.decode_step() for p in self.parts)

    def spec(self) -> dict[str, Any]:
        return {"kind": "Union", "parts": [p.spec() for p in self.parts]}

    def __str__(self) -> str:
        return " | ".join(str(p) for p in self.parts)


SelectorLike = Selector | str

_SHORTHANDS: dict[str, type[Selector]] = {
    "all": All,
    "prompt": Prompt,
    "last_prompt": LastPrompt,
    "last": LastPrompt,
    "generated": Generated,
    "image": Image,
    "text": Text,
}


def as_selector(x: SelectorLike) -> Selector:
    """Turn a shorthand string (``"all"``, ``"generated"``, ...) or a `Selector` into a `Selector`."""
    if isinstance(x, Selector):
        return x
    if isinstance(x, str) and x.strip().lower().replace("-", "_") in _SHORTHANDS:
        return _SHORTHANDS[x.strip().lower().replace("-", "_")]()
    raise PositionError(
        f"unknown position selector {x!r}",
        f"use one of {sorted(_SHORTHANDS)} or ns.positions.token_of_interest('word')",
    )


def every() -> All:
    """Every non-padding position, prompt and decode steps (``"all"`` as a shorthand)."""
    return All()


def __getattr__(name: str) -> Any:
    """``positions.all`` is the former name of `every` (it shadowed the builtin); kept with a warning."""
    if name == "all":
        import warnings

        warnings.warn("nnshift.positions.all() is now nnshift.positions.every()", DeprecationWarning, stacklevel=2)
        return every
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prompt() -> Prompt:
    """Every prompt position."""
    return Prompt()


def last_prompt() -> LastPrompt:
    """The last prompt position."""
    return LastPrompt()


def generated(reduce: str | None = None) -> Generated:
    """Every decode step; in capture ``reduce="mean"`` keeps their mean (up to the end-of-answer token)."""
    if reduce not in (None, "mean"):
        raise PositionError(f"unknown reduce {reduce!r}", "use reduce=None or reduce='mean'")
    return Generated(reduce="mean" if reduce else None)


def image() -> Image:
    """The image-token positions."""
    return Image()


def text() -> Text:
    """The non-image prompt positions."""
    return Text()


def token_of_interest(word: str | Sequence[str], variants: bool = False) -> TokenOfInterest:
    """The state that produces the first token of ``word`` in the model's own answer.

    A list of words (a word class, e.g. every colour) keeps the first occurrence of any of them.
    """
    if isinstance(word, str):
        return TokenOfInterest(word=word, variants=variants)
    words = [str(w) for w in word]
    if not words:
        raise TokenOfInterestError("token_of_interest() got an empty list of words", "pass at least one word")
    return TokenOfInterest(word=words[0], variants=variants, alternatives=tuple(words[1:]))


def _decoded_len(tokenizer: Any, ids: Sequence[int]) -> int:
    """Character length of the decoded prefix ``ids``."""
    return len(tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))


def find_word_token(tokenizer: Any, answer_ids: Sequence[int], selector: TokenOfInterest) -> int | None:
    """Index in ``answer_ids`` of the token that starts the first whole-word occurrence of the TOI, or None.

    Decoded prefixes map every token to a span of characters (binary search over prefix lengths);
    the TOI word is searched in the decoded answer as a whole word, and the token that holds the
    word's first character is returned. Works for sentencepiece, byte-level BPE and word-level
    tokenizers, for multi-token words and for digits.
    """
    ids = [int(i) for i in answer_ids]
    if not ids:
        return None
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    pattern = r"(?<![A-Za-z0-9])(" + "|".join(re.escape(f) for f in selector.forms()) + r")(?![A-Za-z0-9])"
    match = re.search(pattern, text)
    if match is None:
        return None
    start = match.start(1)
    # smallest k such that decoding ids[: k + 1] reaches past `start` (prefix lengths are monotone)
    lo, hi = 0, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _decoded_len(tokenizer, ids[: mid + 1]) > start:
            hi = mid
        else:
            lo = mid + 1
    return lo
