"""CIDEr-D against the COCO reference implementation, and its properties."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnshift.cider import cider_d, tokenize
from nnshift.errors import EmptyInputError, NnshiftError
from nnshift.zoo import dataset, world

# Expected scores computed by pycocoevalcap 1.2 (`pycocoevalcap.cider.cider.Cider().compute_score`), the COCO
# caption benchmark's implementation, on the same corpus with every caption passed through `tokenize` first
# (the COCO pipeline removes punctuation with its PTB tokenizer before scoring).
COCO_CORPUS_SCORE = 1.0017084887680634
COCO_PER_CAPTION = [
    0.6999703756, 0.6789231671, 0.8512158459, 1.0502339486, 0.239144931, 0.0,
    0.9626043763, 5.1258508857, 0.1614590304, 1.0327488769, 0.237972866, 0.9803775617,
]  # fmt: skip


def _corpus() -> tuple[list[str], list[list[str]]]:
    samples = dataset(12, style="colors", task="caption", seed=3)
    cands = [s.answers[0] for s in samples]
    refs = [[world.caption(s.meta, "generic"), world.caption(s.meta, "places")] for s in samples]
    cands[5] = ""  # an empty candidate scores 0
    cands[7] = refs[7][0]  # a candidate equal to a reference
    return cands, refs


def test_matches_the_coco_reference_implementation():
    cands, refs = _corpus()
    assert cands[0] == "an orange circle, a red square, a blue triangle and a yellow cross"  # the fixed corpus
    res = cider_d(cands, refs)
    assert res.score == pytest.approx(COCO_CORPUS_SCORE, abs=1e-9)
    assert res.per_caption == pytest.approx(COCO_PER_CAPTION, abs=1e-8)


def test_tokenize_drops_punctuation_and_case():
    assert tokenize("A Red circle, on the grass.") == ["a", "red", "circle", "on", "the", "grass"]


def test_bad_inputs():
    with pytest.raises(EmptyInputError):
        cider_d([], [])
    with pytest.raises(NnshiftError, match="reference lists"):
        cider_d(["a circle"], [["a circle"], ["a square"]])
    with pytest.raises(EmptyInputError, match="no reference"):
        cider_d(["a circle", "a square"], [["a circle"], []])


words = st.sampled_from(["a", "red", "circle", "square", "on", "the", "grass", "and", "blue"])
caption = st.lists(words, min_size=1, max_size=10).map(" ".join)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(caption, st.lists(caption, min_size=1, max_size=3)), min_size=2, max_size=6))
def test_properties(corpus):
    cands = [c for c, _ in corpus]
    refs = [r for _, r in corpus]
    res = cider_d(cands, refs)
    assert len(res.per_caption) == len(cands)
    assert all(x >= 0 for x in res.per_caption)
    assert res.score == pytest.approx(sum(res.per_caption) / len(cands))
    # order invariance: the corpus statistics do not depend on the order of the images
    rev = cider_d(cands[::-1], refs[::-1])
    assert rev.per_caption[::-1] == pytest.approx(res.per_caption)
