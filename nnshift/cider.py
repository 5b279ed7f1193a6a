"""CIDEr-D, the caption quality score of the COCO caption benchmark (Vedantam et al., CVPR 2015).

Written from the paper's definition, in plain Python (no Java tokenizer, no download):

    g^n(s)     = tf-idf vector of the n-grams of s:  count(w, s) * (log |I| - log max(1, df(w)))
    df(w)      = number of images whose reference set contains the n-gram w
    CIDEr-D_n  = 10 / m * sum_j exp(-(l(c) - l(s_j))^2 / (2 sigma^2))
                            * <min(g^n(c), g^n(s_j)), g^n(s_j)> / (|g^n(c)| |g^n(s_j)|)
    CIDEr-D    = mean over n = 1..4 of CIDEr-D_n,   sigma = 6

``|I|`` is the number of images in the evaluated corpus (the document frequencies come from the references of
the corpus itself, as in the COCO evaluation server), ``m`` the number of references of the image and ``l`` a
length in words. Captions are lower-cased and split on anything that is not a letter or a digit. A test checks
the scores against the COCO reference implementation (pycocoevalcap 1.2) on a fixed corpus.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from nnshift.errors import EmptyInputError, NnshiftError

__all__ = ["CiderResult", "cider_d", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
N_MAX = 4
SIGMA = 6.0


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers of ``text`` (punctuation dropped)."""
    return _WORD.findall(text.lower())


def _ngrams(words: list[str]) -> list[Counter[tuple[str, ...]]]:
    """Counts of the 1- to 4-grams of ``words``."""
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, N_MAX + 1)]


@dataclass(frozen=True)
class CiderResult:
    """Corpus CIDEr-D (``score``, the mean of ``per_caption``) and the score of each candidate."""

    score: float
    per_caption: list[float]


Gram = tuple[str, ...]


def _vector(counts: Counter[Gram], idf: dict[Gram, float], log_n: float) -> dict[Gram, float]:
    """tf-idf of one caption's n-grams (an n-gram in no reference gets the largest idf, log |I|)."""
    return {g: c * idf.get(g, log_n) for g, c in counts.items()}


def _norm(v: dict[Gram, float]) -> float:
    """Euclidean norm of a sparse vector."""
    return math.sqrt(sum(x * x for x in v.values()))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> CiderResult:
    """CIDEr-D of ``candidates[i]`` against ``references[i]`` (one list of reference captions per candidate).

    The document frequencies are taken over the references of this corpus, so scores depend on the corpus:
    compare runs (steered vs unsteered) on the same references.
    """
    if len(candidates) == 0:
        raise EmptyInputError("cider_d() got no captions", "pass at least one candidate caption")
    if len(candidates) != len(references):
        raise NnshiftError(
            f"cider_d() got {len(candidates)} candidates but {len(references)} reference lists",
            "pass one list of reference captions per candidate, in the same order",
        )
    if any(len(r) == 0 for r in references):
        raise EmptyInputError("a candidate has no reference caption", "give every candidate at least one reference")
    refs = [[_ngrams(tokenize(s)) for s in rs] for rs in references]
    ref_len = [[len(tokenize(s)) for s in rs] for rs in references]
    df: Counter[tuple[str, ...]] = Counter()
    for rs in refs:
        df.update({g for r in rs for counts in r for g in counts})
    log_n = math.log(float(len(candidates)))
    idf = {g: log_n - math.log(max(1.0, float(d))) for g, d in df.items()}
    scores: list[float] = []
    for cand, rs, lens in zip(candidates, refs, ref_len, strict=True):
        words = tokenize(cand)
        c_grams = _ngrams(words)
        total = 0.0
        for n in range(N_MAX):
            vc = _vector(c_grams[n], idf, log_n)
            nc = _norm(vc)
            acc = 0.0
            for r, length in zip(rs, lens, strict=True):
                vr = _vector(r[n], idf, log_n)
                nr = _norm(vr)
                if nc == 0.0 or nr == 0.0:
                    continue
                dot = sum(min(vc.get(g, 0.0), x) * x for g, x in vr.items())
                penalty = math.exp(-((len(words) - length) ** 2) / (2 * SIGMA**2))
                acc += penalty * dot / (nc * nr)
            total += 10.0 * acc / len(rs)
        scores.append(total / N_MAX)
    return CiderResult(score=sum(scores) / len(scores), per_caption=scores)
