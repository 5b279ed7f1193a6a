"""Grounding of concepts: in words (through the model's final norm + unembedding) and in samples.

* `ground_text`: the top tokens of ``W_U · norm(u_k)``, merged over sub-token and case variants,
  filtered to English words (wordfreq's offline list) and numbers, ``top`` words per concept.
* `top_samples` / `plot_top_samples`: the ``n`` most activating samples per concept, as ids and a
  matplotlib figure grid of their images.
* `t_overlap` (T-Overlap of two groundings, in %) and `dictionary_overlap` (CoX-LMM's Overlap(U) of one
  dictionary; `overlap` is its old name), both defined in `nnshift.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.arguments import renamed_keywords
from nnshift.concepts.dictionary import ConceptDictionary
from nnshift.concepts.methods import get_method
from nnshift.errors import ConceptError, EmptyInputError, HiddenSizeMismatchError
from nnshift.metrics import check_top_n, concept_matrix, dictionary_overlap, matrix, t_overlap, top_rows
from nnshift.store import Activations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "STOPWORDS",
    "TopSamples",
    "dictionary_overlap",
    "ground_text",
    "is_word",
    "normalize_token",
    "overlap",
    "plot_top_samples",
    "t_overlap",
    "top_samples",
]

#: Frequent English function words and sub-word fragments that are not useful as grounding words.
STOPWORDS: frozenset[str] = frozenset(
    [
        "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our", "out",
        "his", "has", "him", "how", "its", "may", "now", "see", "way", "who", "did", "get", "let", "put",
        "say", "she", "too", "use", "that", "with", "have", "this", "will", "your", "from", "they", "been", "were",
        "said", "each", "which", "their", "there", "what", "about", "would", "make", "like", "into", "than", "them",
        "these", "some", "could", "other", "then", "more", "also", "when", "where", "only", "over", "such", "very",
        "just", "most", "much", "many", "must", "those", "here", "both", "why", "does", "done", "being", "because",
        "while", "should", "after", "before", "under", "again", "further", "once", "same", "own", "off", "few", "nor",
        "yes", "itself", "myself", "yourself", "himself", "herself", "ourselves", "themselves", "whom", "whose",
        "between", "during", "through", "above", "below", "until", "upon", "onto", "within", "without", "against",
        "among", "across", "toward", "towards", "around", "via", "per", "etc", "isn", "aren", "wasn", "weren", "hasn",
        "haven", "hadn", "doesn", "didn", "don", "won", "wouldn", "shan", "shouldn", "can't", "couldn", "mightn",
        "mustn", "needn", "let's", "i'm", "you're", "it's", "he's", "she's", "we're", "they're", "i've", "you've",
        "we've", "they've", "i'd", "you'd", "he'd", "she'd", "we'd", "they'd", "i'll", "you'll", "he'll", "she'll",
        "we'll", "they'll", "isn't", "aren't", "wasn't", "weren't", "hasn't", "haven't", "hadn't", "doesn't", "don't",
        "didn't", "won't", "wouldn't", "shouldn't", "couldn't", "ing", "ers", "ies", "ness", "ment", "tion", "sion",
        "able", "ible", "ful", "less", "ous", "ive", "ism", "ist", "ity", "est", "ight", "ould", "oth", "ert", "ally",
        "ated", "ting", "ning", "ling", "ened", "ance", "ence",
    ]
)  # fmt: skip

_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MARKERS = ("##", "Ġ", "▁", "Ċ", "ĉ", "@@")


@lru_cache(maxsize=200_000)
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def normalize_token(text: str) -> str:
    """The word a decoded token stands for: word-boundary markers, spaces and edge punctuation removed, lowercased."""
    s = text.strip()
    changed = True
    while changed:
        changed = False
        for marker in _MARKERS:
            if s.startswith(marker):
                s = s[len(marker) :]
                changed = True
        if s.endswith("@@"):
            s, changed = s[:-2], True
    return s.strip().strip("\"'`.,;:!?()[]{}<>«»“”‘’").strip().lower()


def is_word(word: str, min_zipf: float = 2.5, stopwords: frozenset[str] = STOPWORDS, numbers: bool = True) -> bool:
    """Whether a normalized token is a grounding word: a number, or a frequent English word longer than 2 letters."""
    if _NUMBER.fullmatch(word):
        return numbers
    return len(word) > 2 and _WORD.fullmatch(word) is not None and word not in stopwords and _zipf(word) >= min_zipf


def _tokenizer(vlm: Any) -> Any:
    tok = getattr(vlm, "tokenizer", None)
    if tok is not None and not hasattr(tok, "decode") and hasattr(tok, "tokenizer"):
        tok = tok.tokenizer  # a processor
    if tok is None or not hasattr(tok, "decode"):
        raise ConceptError(
            "text grounding needs vlm.tokenizer (a Hugging Face tokenizer)",
            "pass a model loaded with nnshift.load, or an object with .tokenizer and .logit_lens",
        )
    return tok


def ground_text(
    concepts: Float[Tensor, "k d"] | ConceptDictionary,
    vlm: Any,
    top: int = 15,
    pre_top: int = 200,
    min_zipf: float = 2.5,
    stopwords: frozenset[str] | None = None,
    numbers: bool = True,
) -> list[list[str]]:
    """The ``top`` words of each concept: top ``pre_top`` tokens of ``vlm.logit_lens(U)``, merged, filtered.

    ``vlm.logit_lens(x)`` must apply the final norm then the unembedding (correct for pre-norm
    layers). Tokens that decode to the same word up to word-boundary markers and case ("Dog",
    " dog", "##dog") count once, at their best rank. Words are kept when they are numbers (if
    ``numbers``) or lowercase English words longer than 2 letters with a wordfreq Zipf frequency
    of at least ``min_zipf`` and not in ``stopwords`` (default `STOPWORDS`).
    """
    u = concept_matrix(concepts, "concepts")
    if not isinstance(top, int) or top < 1 or not isinstance(pre_top, int) or pre_top < 1:
        raise ConceptError(f"top and pre_top must be positive integers, got {top!r}, {pre_top!r}", "pass e.g. top=15")
    lens = getattr(vlm, "logit_lens", None)
    if lens is None:
        raise ConceptError(
            "text grounding needs vlm.logit_lens (final norm then unembedding)",
            "pass a model loaded with nnshift.load, or an object with .logit_lens and .tokenizer",
        )
    tok = _tokenizer(vlm)
    with torch.no_grad():
        logits = lens(u)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != u.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise HiddenSizeMismatchError(
            f"vlm.logit_lens returned {shape} for {u.shape[0]} concepts, expected [K, vocab]",
            "check that the concepts come from this model (same hidden size)",
        )
    logits = logits.detach().float()
    n_vocab = min(logits.shape[1], len(tok))
    logits = logits[:, :n_vocab]
    ids = logits.topk(min(pre_top, n_vocab), dim=1).indices.cpu().tolist()
    special = set(getattr(tok, "all_special_ids", []) or [])
    stop = STOPWORDS if stopwords is None else frozenset(stopwords)
    decoded: dict[int, str] = {}
    out: list[list[str]] = []
    for row in ids:
        words: list[str] = []
        seen: set[str] = set()
        for i in row:
            if i in special:
                continue
            if i not in decoded:
                decoded[i] = normalize_token(tok.decode([i], skip_special_tokens=True))
            w = decoded[i]
            if w in seen or not is_word(w, min_zipf=min_zipf, stopwords=stop, numbers=numbers):
                continue
            seen.add(w)
            words.append(w)
            if len(words) == top:
                break
        out.append(words)
    return out


@dataclass
class TopSamples:
    """The ``n`` most activating samples of each concept (rows ordered by decreasing score)."""

    indices: Int[Tensor, "k n"]
    activations: Float[Tensor, "k n"]
    ids: list[list[str]]
    samples: list[list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, concept: int) -> list[str]:
        return self.ids[concept]


@renamed_keywords(dico="dictionary")
def top_samples(dictionary: ConceptDictionary, acts: Activations | Float[Tensor, "m d"], n: int = 5) -> TopSamples:
    """Per concept, the ``n`` rows with the highest score ``|v_k|`` (k-means: similarity): ids + activations."""
    n_eff = check_top_n(n, matrix(acts, "acts", promote=False).shape[0])
    v = dictionary.transform(acts)
    idx = top_rows(get_method(dictionary.method).scores(v, dictionary.params), n_eff)  # [K, n], best first
    vals = rearrange(v, "m k -> k m").gather(1, idx)
    if isinstance(acts, Activations):
        ids = [[acts.ids[i] for i in row] for row in idx.cpu().tolist()]
        samples = [[acts.samples[i] for i in row] for row in idx.cpu().tolist()] if acts.samples is not None else None
    else:
        ids = [[str(i) for i in row] for row in idx.cpu().tolist()]
        samples = None
    return TopSamples(indices=idx, activations=vals, ids=ids, samples=samples)


ImageSource = Mapping[str, Any] | Callable[[str], Any] | None


def _image(top: TopSamples, images: ImageSource, k: int, j: int) -> Any:
    sid = top.ids[k][j]
    if images is None:
        if top.samples is None:
            raise ConceptError(
                "these top samples carry no Sample objects to read images from",
                "pass images= (a dict or a function id -> image), or Activations with .samples",
            )
        return top.samples[k][j].load_image()
    if isinstance(images, Mapping):
        return images.get(sid)
    return images(sid)


def plot_top_samples(
    top: TopSamples,
    images: ImageSource = None,
    words: Sequence[Sequence[str]] | None = None,
    concepts: Sequence[int] | None = None,
    cell: float = 1.6,
    n_words: int = 4,
) -> Figure:
    """A grid figure: one row per concept, its most activating samples' images (with activations).

    ``images`` maps a sample id to an image (PIL image or array), as a dict or a function; by
    default the images are read from ``top.samples``. ``words`` (e.g. from `ground_text`) label rows.
    """
    from matplotlib.figure import Figure

    rows = list(range(len(top))) if concepts is None else [int(c) for c in concepts]
    if not rows:
        raise EmptyInputError("no concept to plot", "pass concepts=None or a non-empty list of concept indices")
    n = top.indices.shape[1]
    fig = Figure(figsize=(cell * n + 1.2, cell * len(rows) + 0.3), layout="constrained")
    axes = np.atleast_2d(np.asarray(fig.subplots(len(rows), n, squeeze=False)))
    for r, k in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = _image(top, images, k, j)
            if img is None:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(np.asarray(img))
            ax.set_title(f"{top.ids[k][j]} · {float(top.activations[k, j]):.3g}", fontsize=6)
        label = f"concept {k}"
        if words is not None and k < len(words):
            label += "\n" + ", ".join(list(words[k])[:n_words])
        axes[r, 0].set_ylabel(label, fontsize=7)
    return fig


#: CoX-LMM's Overlap(U), under its old name (renamed so that it is not confused with T-Overlap)
overlap = dictionary_overlap
