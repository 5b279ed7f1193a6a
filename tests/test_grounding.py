"""Grounding: text (fake VLM with a tiny in-code tokenizer), top samples and their figure, overlaps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nnshift.concepts as nc
from nnshift.concepts.dictionary import ConceptDictionary
from nnshift.concepts.grounding import STOPWORDS, is_word, normalize_token
from nnshift.data import Sample
from nnshift.errors import ConceptError, HiddenSizeMismatchError
from nnshift.store import Activations

WORDPIECE_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]",
    "dog", "Dog", "##dog", "DOG", "cat", "##s", "the", "and", "xqz", "frisbee",
    "123", "7", "ball", "Ball", "##ball", "grass", "park", "ing", "##ing", "run", "ab", "zzzt", "hot",
]  # fmt: skip

BPE_VOCAB = ["<unk>", "<s>", "Ġdog", "dog", "ĠDog", "Ġcat", "cat", "Ġthe", "Ġfrisbee", "Ġ42", "Ġqzx", "Ġpark", "Ġab"]


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(WORDPIECE_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(BPE_VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


class FakeVLM:
    """logit_lens = RMS-normalize, scale by gamma, then a linear unembedding with orthonormal rows."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, d: int = 48, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, len(tokenizer), generator=g))
        self.w_u = q.t().contiguous()  # [V, D], orthonormal rows
        self.gamma = torch.ones(d)
        self.calls = 0

    def logit_lens(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = x / x.pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt() * self.gamma
        return x @ self.w_u.t()

    def concept(self, tokenizer_vocab: list[str], weights: dict[str, float]) -> torch.Tensor:
        """A direction whose logits rank the given tokens by ``weights`` (others 0)."""
        return sum(w * self.w_u[tokenizer_vocab.index(t)] for t, w in weights.items())


def test_wordpiece_merge_filter_and_order():
    vlm = FakeVLM(wordpiece_tokenizer())
    v = WORDPIECE_VOCAB
    c0 = vlm.concept(
        v,
        {"[CLS]": 20, "Dog": 10, "the": 9.5, "dog": 9, "##dog": 8.5, "xqz": 8, "frisbee": 7, "##s": 6.5,
         "123": 6, "DOG": 5.5, "ab": 5, "ing": 4.5, "grass": 4, "park": 3},
    )  # fmt: skip
    c1 = vlm.concept(v, {"ball": 10, "Ball": 9, "##ball": 8, "cat": 7, "7": 6, "hot": 5})
    words = nc.ground_text(torch.stack([c0, c1]), vlm, top=5, pre_top=20)
    # case and sub-token variants merged at their best rank; special tokens, stopwords,
    # non-words, fragments and short tokens dropped; numbers kept; `top` words at most
    assert words[0] == ["dog", "frisbee", "123", "grass", "park"]
    assert words[1][:4] == ["ball", "cat", "7", "hot"]
    assert vlm.calls == 1


def test_pre_top_limits_candidates_and_top_limits_output():
    vlm = FakeVLM(wordpiece_tokenizer())
    c = vlm.concept(WORDPIECE_VOCAB, {"the": 10, "and": 9, "xqz": 8, "dog": 7, "cat": 6, "park": 5})
    assert nc.ground_text(c[None], vlm, top=15, pre_top=3) == [[]]
    assert nc.ground_text(c[None], vlm, top=15, pre_top=5) == [["dog", "cat"]]
    assert nc.ground_text(c[None], vlm, top=1, pre_top=27) == [["dog"]]


def test_bytelevel_bpe_variants():
    vlm = FakeVLM(bpe_tokenizer())
    v = BPE_VOCAB
    c = vlm.concept(
        v, {"<s>": 11, "ĠDog": 10, "dog": 9, "Ġdog": 8, "Ġthe": 7, "Ġqzx": 6, "Ġ42": 5, "Ġcat": 4, "cat": 3}
    )
    assert nc.ground_text(c[None], vlm, top=15, pre_top=9) == [["dog", "42", "cat"]]


def test_ground_text_via_dictionary_and_norm_scale_invariance():
    vlm = FakeVLM(wordpiece_tokenizer())
    c = vlm.concept(WORDPIECE_VOCAB, {"park": 3, "grass": 2, "frisbee": 1})
    d = ConceptDictionary.from_concepts(torch.stack([c, 50 * c]), method="kmeans")
    words = d.ground_text(vlm, top=3)
    assert words[0] == words[1] == ["park", "grass", "frisbee"]


def test_ground_text_errors():
    class NoLens:
        tokenizer = wordpiece_tokenizer()

    with pytest.raises(ConceptError, match="logit_lens"):
        nc.ground_text(torch.randn(2, 48), NoLens())

    class BadLens(FakeVLM):
        def logit_lens(self, x):
            return torch.randn(3)

    with pytest.raises(HiddenSizeMismatchError):
        nc.ground_text(torch.randn(2, 48), BadLens(wordpiece_tokenizer()))
    with pytest.raises(ConceptError):
        nc.ground_text(torch.randn(2, 48), FakeVLM(wordpiece_tokenizer()), top=0)


def test_word_filter():
    assert normalize_token(" Dog") == "dog" and normalize_token("##ing") == "ing" and normalize_token("▁Cat,") == "cat"
    assert is_word("dog") and is_word("frisbee") and is_word("42") and is_word("3.5")
    assert not is_word("the") and not is_word("ab") and not is_word("xqzv") and not is_word("ing")
    assert not is_word("42", numbers=False)
    assert "the" in STOPWORDS


# ----------------------------------------------------------------------------------- top samples


def _acts_with_images(m: int = 12, d: int = 6) -> Activations:
    g = torch.Generator().manual_seed(0)
    z = torch.rand(m, d, generator=g) * 3
    samples = [
        Sample(id=f"s{i}", prompt="describe", image=Image.new("RGB", (8, 8), (20 * i % 255, 0, 0))) for i in range(m)
    ]
    return Activations(z, ids=[s.id for s in samples], samples=samples)


def test_top_samples_against_argsort():
    acts = _acts_with_images()
    d = nc.fit(acts, k=3, method="semi_nmf", seed=0, max_iter=30)
    top = d.top_samples(acts, n=4)
    v = d.transform(acts).numpy()
    for k in range(3):
        ref = np.argsort(-np.abs(v[:, k]), kind="stable")[:4]
        np.testing.assert_allclose(np.sort(np.abs(v[ref, k])), np.sort(np.abs(top.activations[k].numpy())), rtol=1e-6)
        assert top.ids[k] == [acts.ids[i] for i in top.indices[k].tolist()]
        assert all(top.samples[k][j].id == top.ids[k][j] for j in range(4))
    assert top.activations.shape == (3, 4) and top.indices.shape == (3, 4)
    big = nc.top_samples(d, acts.tensor, n=50)  # n larger than M: all rows, ids are row numbers
    assert big.indices.shape == (3, 12) and big.ids[0][0] == str(int(big.indices[0, 0])) and big.samples is None


def test_top_samples_kmeans_is_nearest():
    acts = _acts_with_images(20)
    d = nc.fit(acts, k=4, method="kmeans", seed=0, activation="neg_distance")
    top = d.top_samples(acts, n=1)
    dist = torch.cdist(acts.tensor, d.concepts)
    assert top.indices[:, 0].tolist() == dist.argmin(dim=0).tolist()


def test_plot_top_samples():
    acts = _acts_with_images()
    d = nc.fit(acts, k=3, method="kmeans", seed=0)
    top = d.top_samples(acts, n=2)
    fig = nc.plot_top_samples(top, words=[["red", "dark"], ["x"], []])
    assert len(fig.axes) == 6
    assert fig.axes[0].get_ylabel().startswith("concept 0\nred, dark")
    assert len(fig.axes[0].images) == 1
    fig2 = nc.plot_top_samples(top, images={top.ids[0][0]: np.zeros((4, 4, 3))}, concepts=[0])
    assert len(fig2.axes) == 2 and len(fig2.axes[1].images) == 0  # missing image: placeholder text
    fig3 = nc.plot_top_samples(top, images=lambda sid: Image.new("RGB", (4, 4)), concepts=[2, 1])
    assert len(fig3.axes) == 4
    bare = nc.top_samples(d, acts.tensor, n=2)
    with pytest.raises(ConceptError, match="images="):
        nc.plot_top_samples(bare)


# ----------------------------------------------------------------------------------- overlaps


def test_t_overlap_examples():
    assert nc.t_overlap(["dog", "cat", "park", "ball"], ["cat", "ball", "sky"]) == 50.0
    assert nc.t_overlap(["a"], ["a"]) == 100.0
    assert nc.t_overlap([], ["a"]) == 0.0


def _overlap_reference(groups: list[list[str]]) -> float:
    k = len(groups)
    vals = []
    for i in range(k):
        ti = set(groups[i])
        row = [len(ti & set(groups[j])) / len(ti) if ti else 0.0 for j in range(k) if j != i]
        vals.append(np.mean(row))
    return float(np.mean(vals))


words_st = st.lists(st.sampled_from(["dog", "cat", "park", "ball", "sky", "red", "car", "tree"]), max_size=6)


@settings(max_examples=60, deadline=None)
@given(a=words_st, b=words_st)
def test_t_overlap_property(a, b):
    t = nc.t_overlap(a, b)
    assert 0.0 <= t <= 100.0
    if a:
        assert nc.t_overlap(a, a) == 100.0
        assert t == pytest.approx(100.0 * len(set(a) & set(b)) / len(set(a)))
    if set(a).isdisjoint(b):
        assert t == 0.0


@settings(max_examples=40, deadline=None)
@given(groups=st.lists(words_st, min_size=2, max_size=6))
def test_overlap_matches_reference(groups):
    assert nc.dictionary_overlap(groups) == pytest.approx(_overlap_reference(groups))
    assert nc.dictionary_overlap(groups, percent=True) == pytest.approx(100 * _overlap_reference(groups))


def test_overlap_extremes_and_errors():
    same = [["dog", "cat"]] * 4
    assert nc.dictionary_overlap(same) == 1.0
    disjoint = [[w] for w in ["a1", "b2", "c3"]]
    assert nc.dictionary_overlap(disjoint) == 0.0
    assert all(nc.t_overlap(x, y) == 0 for x, y in itertools.permutations(disjoint, 2))
    with pytest.raises(ConceptError, match="at least 2"):
        nc.dictionary_overlap([["dog"]])


# ----------------------------------------------------------------------------------- with a real (tiny) model


def test_ground_text_with_tiny_model_logit_lens():
    import nnshift as ns
    from nnshift.models.testing import cached_tiny

    vlm = ns.load(str(cached_tiny("llama")))
    tok = vlm.tokenizer
    dog = tok.convert_tokens_to_ids("dog")
    w_u = vlm._unembed.weight.detach().float()  # [V, D], the unembedding
    g = torch.Generator().manual_seed(0)
    u = torch.cat([w_u[dog][None], torch.randn(3, w_u.shape[1], generator=g)])
    d = ConceptDictionary.from_concepts(u, method="kmeans")
    words = d.ground_text(vlm, top=5, pre_top=100)
    assert len(words) == 4 and all(len(w) <= 5 for w in words)
    assert "dog" in words[0]
    assert all(is_word(w) and w == w.lower() for ws in words for w in ws)
