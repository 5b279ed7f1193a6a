"""Answer normalisation and answer types (VQAv2): the low-level rules every answer comparison uses.

`normalize_answer` is the EvalAI-style normalisation (lower case, punctuation, number words -> digits, articles
dropped, common contractions restored); `answer_type` gives ``"yes/no"``, ``"number"`` or ``"other"``.
Re-exported by `nnshift.evaluate`; imported directly by lower layers (steering) that must not import evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["ANSWER_TYPES", "answer_type", "normalize_answer"]

#: VQAv2's three answer types
ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")

# ---------------------------------------------------------------------------- normalisation

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# apostrophe-less spellings restored to the form annotators mostly typed
_CONTRACTIONS = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "ive": "i've",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
}
_PUNCT = ';/[]"{}()=+\\_-><@`,?!:*#%&^$~|'
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def normalize_answer(text: str) -> str:
    """EvalAI-style answer normalisation: ``"Two dogs."`` -> ``"2 dogs"``, ``"Yes!"`` -> ``"yes"``.

    Punctuation next to a space (or anywhere, when the answer holds a digit-comma-digit group) is deleted,
    elsewhere it splits words; periods are kept only inside numbers; words are lower-cased, number words up to
    ten become digits, articles are dropped and apostrophe-less contractions are restored.
    """
    s = str(text).replace("\n", " ").replace("\t", " ").strip()
    glued = bool(_DIGIT_COMMA.search(s))
    for p in _PUNCT:
        if p not in s:
            continue
        s = s.replace(p, "") if (glued or f"{p} " in s or f" {p}" in s) else s.replace(p, " ")
    s = _LONE_PERIOD.sub("", s)
    words = []
    for w in s.lower().split():
        w = _NUMBER_WORDS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def answer_type(answer: str, types: Mapping[str, str] | None = None) -> str:
    """The answer type of one answer: ``"yes/no"``, ``"number"`` or ``"other"`` (after normalisation).

    ``types`` maps normalised answers to a type and wins when it knows the answer (like the reference's
    answer -> type dictionary); otherwise "yes"/"no" are yes/no, a numeral (digits, number words up to ten)
    is a number, and anything else (including an empty answer) is "other".
    """
    a = normalize_answer(answer)
    if types is not None and a in types:
        return types[a]
    if a in ("yes", "no"):
        return "yes/no"
    if _NUMBER.match(a):
        return "number"
    return "other"
