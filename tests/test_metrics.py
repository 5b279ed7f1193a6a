"""nnshift.metrics against numpy references and hypothesis properties: T-Overlap, top samples, assignment, cosines,
input checks; and that concepts, shift and steering all use these single definitions."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nnshift as ns
import nnshift.concepts as nc
from nnshift import metrics
from nnshift.concepts import ConceptDictionary
from nnshift.errors import (
    ConceptError,
    EmptyInputError,
    HiddenSizeMismatchError,
    NnshiftError,
    NonFiniteError,
    SteeringError,
)
from nnshift.store import Activations

SETTINGS = settings(max_examples=60, deadline=None)
words = st.lists(st.sampled_from(["dog", "cat", "sky", "red", "ball", "park", "tree", "car"]), max_size=8)


def _raises(exc, fn, match=None):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert isinstance(info.value, NnshiftError) and info.value.hint


# ------------------------------------------------------------------------------------------------------- T-Overlap


def t_overlap_reference(a: list[str], b: list[str]) -> float:
    """numpy: 100 · |unique(a) ∩ unique(b)| / |unique(a)|, 0 for an empty a."""
    ua = np.unique(np.asarray(a, dtype=str))
    if ua.size == 0:
        return 0.0
    return 100.0 * np.intersect1d(ua, np.asarray(b, dtype=str)).size / ua.size


def test_t_overlap_examples():
    assert metrics.t_overlap(["dog", "cat", "park", "ball"], ["cat", "ball", "sky"]) == 50.0
    assert metrics.t_overlap(["dog", "dog", "cat"], ["dog"]) == 50.0  # sets: a repeated word counts once
    assert metrics.t_overlap([], ["dog"]) == 0.0  # the rule: an empty grounding shares no word
    assert metrics.t_overlap([], []) == 0.0
    assert metrics.t_overlap(["dog"], []) == 0.0


@SETTINGS
@given(words, words)
def test_t_overlap_property(a, b):
    t = metrics.t_overlap(a, b)
    assert t == pytest.approx(t_overlap_reference(a, b))
    assert not math.isnan(t) and 0.0 <= t <= 100.0
    # both directions count the same shared words: |A| T(A, B) = |B| T(B, A) = 100 |A ∩ B|
    assert len(set(a)) * t == pytest.approx(len(set(b)) * metrics.t_overlap(b, a))
    if a:
        assert metrics.t_overlap(a, a) == 100.0
        assert metrics.t_overlap(a, [*b, *a]) == 100.0


@SETTINGS
@given(st.lists(st.tuples(words, words), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_text_overlap_per_concept(pairs, rnd):
    groundings, ref = [list(p[0]) for p in pairs], [list(p[1]) for p in pairs]
    k = len(groundings)
    perm = list(range(k))
    rnd.shuffle(perm)
    got = metrics.text_overlap(groundings, ref, torch.tensor(perm))
    assert got.dtype == torch.float32 and got.shape == (k,)
    for i, j in enumerate(perm):
        if groundings[i]:
            assert float(got[i]) == pytest.approx(t_overlap_reference(groundings[i], ref[j]), abs=1e-4)
        else:
            assert math.isnan(got[i])  # not measured
    zero = metrics.text_overlap(groundings, ref, torch.tensor(perm), empty=0.0)  # T-Overlap's own value
    np.testing.assert_allclose(zero.numpy(), [metrics.t_overlap(groundings[i], ref[j]) for i, j in enumerate(perm)])
    same = metrics.text_overlap(groundings, groundings)  # identity matching: 100 wherever there are words
    assert all(float(t) == 100.0 if w else math.isnan(t) for t, w in zip(same, groundings, strict=True))


def test_text_overlap_identity_and_errors():
    got = metrics.text_overlap([["a", "b"], []], [["b"], ["c"]])
    assert got[0] == 50.0 and math.isnan(got[1])
    _raises(ConceptError, lambda: metrics.text_overlap([["a"]], [["a"]], torch.tensor([0, 0])), "matching of 2")
    _raises(ConceptError, lambda: metrics.text_overlap([["a"]], [["a"]], torch.tensor([3])), "outside")


def test_keyword_overlap_is_case_insensitive():
    got = metrics.keyword_overlap([["Dog", "cat", "sky "], ["x"], []], ["DOG", "sky"])
    np.testing.assert_allclose(got[:2].numpy(), [100 * 2 / 3, 0.0])
    assert math.isnan(got[2])
    assert metrics.keyword_overlap([[]], ["a"], empty=0.0).tolist() == [0.0]


def dictionary_overlap_reference(groups: list[list[str]]) -> float:
    k = len(groups)
    m = np.array([[t_overlap_reference(groups[i], groups[j]) for j in range(k)] for i in range(k)])
    return float((m.sum(axis=1) - np.diag(m)).sum() / (k * (k - 1)) / 100.0)


@SETTINGS
@given(st.lists(words, min_size=2, max_size=5))
def test_dictionary_overlap_against_numpy(groups):
    assert metrics.dictionary_overlap(groups) == pytest.approx(dictionary_overlap_reference(groups))
    assert metrics.dictionary_overlap(groups, percent=True) == pytest.approx(100 * dictionary_overlap_reference(groups))


def test_dictionary_overlap_is_the_old_overlap():
    assert nc.overlap is nc.dictionary_overlap is metrics.dictionary_overlap  # old name kept as an alias
    assert metrics.dictionary_overlap([["a", "b"], ["a", "b"]]) == 1.0
    assert metrics.dictionary_overlap([["a"], ["b"], []]) == 0.0
    _raises(ConceptError, lambda: metrics.dictionary_overlap([["a"]]), "at least 2")


# ------------------------------------------------------------------------------------------- samples and concepts


def test_top_rows_against_argsort():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(30, 4, generator=g)
    top = metrics.top_rows(s, 5)
    ref = np.argsort(-s.numpy(), axis=0, kind="stable")[:5].T
    assert top.shape == (4, 5) and top.dtype == torch.int64
    np.testing.assert_array_equal(top.numpy(), ref)
    assert metrics.top_rows(s, 100).shape == (4, 30)  # n is capped at M


@SETTINGS
@given(
    st.integers(1, 25),
    st.integers(1, 5),
    st.integers(1, 30),
    st.integers(0, 2**31 - 1),
)
def test_top_rows_property(m, k, n, seed):
    s = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    top = metrics.top_rows(s, n)
    n_eff = min(n, m)
    assert top.shape == (k, n_eff)
    for j in range(k):
        rows = top[j].tolist()
        assert len(set(rows)) == n_eff  # distinct samples
        vals = s[rows, j]
        assert torch.all(vals[:-1] >= vals[1:])  # best first
        rest = [i for i in range(m) if i not in rows]
        if rest:
            assert float(vals.min()) >= float(s[rest, j].max())  # nothing left out scores higher


def test_check_top_n():
    assert metrics.check_top_n(5, 3) == 3 and metrics.check_top_n(np.int64(2), 10) == 2
    for bad in (0, -1, True, 2.5, "3"):
        _raises(ConceptError, lambda bad=bad: metrics.check_top_n(bad, 10), "positive integer")


class SignedDictionary:
    """No ``scores``: concept_scores must take ``|transform|``."""

    method = "linear"

    def __init__(self, u: torch.Tensor) -> None:
        self.concepts = u

    @property
    def k(self) -> int:
        return self.concepts.shape[0]

    @property
    def dim(self) -> int:
        return self.concepts.shape[1]

    def transform(self, x):
        return x @ self.concepts.T


def test_assignment_and_most_activating_against_numpy():
    g = torch.Generator().manual_seed(1)
    x, u = torch.randn(40, 6, generator=g), torch.randn(4, 6, generator=g)
    v = np.abs(x.numpy() @ u.numpy().T)
    dico = SignedDictionary(u)
    np.testing.assert_array_equal(metrics.assign_samples(dico, x).numpy(), v.argmax(axis=1))
    np.testing.assert_array_equal(
        metrics.most_activating(dico, x, 3).numpy(), np.argsort(-v, axis=0, kind="stable")[:3].T
    )
    np.testing.assert_allclose(metrics.concept_scores(dico, x).numpy(), v, rtol=1e-5, atol=1e-6)
    assert torch.equal(metrics.assign(torch.tensor([[0.1, 0.9], [2.0, -3.0]])), torch.tensor([1, 0]))


def test_kmeans_assignment_is_the_nearest_centroid():
    """With activation='neg_distance' every activation is negative: |v| would pick the farthest centroid."""
    g = torch.Generator().manual_seed(2)
    x, u = torch.randn(50, 5, generator=g), torch.randn(6, 5, generator=g)
    dico = ConceptDictionary.from_concepts(u, method="kmeans", activation="neg_distance")
    nearest = torch.cdist(x, u).argmin(dim=1)
    assert torch.equal(metrics.assign_samples(dico, x), nearest)
    assert torch.equal(dico.assign(x), nearest)
    assert torch.equal(ns.shift.assign_samples(dico, Activations(x, ids=[str(i) for i in range(50)])), nearest)
    top = metrics.most_activating(dico, x, 2)
    assert torch.equal(top[:, 0], torch.cdist(x, u).argmin(dim=0))
    assert torch.equal(nc.top_samples(dico, x, n=2).indices, top)  # concepts and shift: one definition


def test_concept_scores_checks():
    class Bad(SignedDictionary):
        def transform(self, x):
            return torch.ones(x.shape[0] + 1, 2)

    class NaN(SignedDictionary):
        def transform(self, x):
            return torch.full((x.shape[0], 2), math.nan)

    x = torch.randn(3, 4)
    _raises(ConceptError, lambda: metrics.concept_scores(Bad(torch.ones(2, 4)), x), "shape")
    _raises(NonFiniteError, lambda: metrics.concept_scores(NaN(torch.ones(2, 4)), x), "NaN")
    _raises(HiddenSizeMismatchError, lambda: metrics.assign_samples(SignedDictionary(torch.ones(2, 5)), x), "5")


# --------------------------------------------------------------------------------------------------------- cosines


def test_cosine_matrix_against_numpy():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 7, generator=g), torch.randn(3, 7, generator=g)
    x[2] = 0.0
    xn, yn = x.numpy(), y.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (xn @ yn.T) / np.linalg.norm(xn, axis=1)[:, None] / np.linalg.norm(yn, axis=1)[None]
    ref = np.nan_to_num(ref, nan=0.0)  # a zero vector has cosine 0 with everything
    np.testing.assert_allclose(metrics.cosine_matrix(x, y).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(metrics.cosine_rows(x[:3], y).numpy(), np.diag(ref[:3]), atol=1e-6)
    assert metrics.cosine_matrix(x.double(), y).dtype == torch.float64
    assert metrics.cosine_matrix(x.half(), y.half()).dtype == torch.float32
    _raises(HiddenSizeMismatchError, lambda: metrics.cosine_matrix(x, torch.ones(2, 6)), "hidden size 6")


# ---------------------------------------------------------------------------------------------------- input checks


def test_matrix_checks():
    x = torch.randn(4, 3, dtype=torch.float16)
    assert metrics.matrix(x).dtype == torch.float32 and metrics.matrix(x, promote=False).dtype == torch.float16
    assert metrics.matrix(x.double()).dtype == torch.float64
    acts = Activations(torch.ones(2, 3), ids=["a", "b"])
    assert torch.equal(metrics.matrix(acts), torch.ones(2, 3))
    _raises(ConceptError, lambda: metrics.matrix(torch.ones(3), "acts"), r"acts must be an \[M, D\]")
    _raises(ConceptError, lambda: metrics.matrix("nope"), "str")
    _raises(EmptyInputError, lambda: metrics.matrix(torch.ones(0, 3)), "empty")
    _raises(NonFiniteError, lambda: metrics.matrix(torch.tensor([[1.0, math.inf]])), "NaN or Inf")


def test_concept_matrix_checks():
    u = torch.randn(3, 4, dtype=torch.float16)
    assert metrics.concept_matrix(u).dtype == torch.float32
    dico = ConceptDictionary.from_concepts(u.float(), method="kmeans")
    assert torch.equal(metrics.concept_matrix(dico), dico.concepts)
    assert metrics.concept_matrix(SignedDictionary(u.double())).dtype == torch.float64
    assert metrics.concept_matrix(u, dtype=torch.float64).dtype == torch.float64
    _raises(ConceptError, lambda: metrics.concept_matrix(object()), "got object")
    _raises(SteeringError, lambda: metrics.concept_matrix(object(), error=SteeringError), "got object")
    _raises(ConceptError, lambda: metrics.concept_matrix(torch.ones(3)), r"\[K, D\]")
    _raises(EmptyInputError, lambda: metrics.concept_matrix(torch.ones(0, 3)), "K = 0")
    _raises(NonFiniteError, lambda: metrics.concept_matrix(torch.tensor([[math.nan]])), "NaN")


# ------------------------------------------------------------------------------------------------ single definitions


def test_one_definition_everywhere():
    from nnshift.steering import vectors

    assert nc.t_overlap is metrics.t_overlap
    for name in ("text_overlap", "keyword_overlap", "cosine_matrix", "assign_samples", "most_activating"):
        assert getattr(ns.shift, name) is getattr(metrics, name), name
    _raises(SteeringError, lambda: vectors.fine(object(), 0, 1))
    u = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(vectors._concepts_of(u), metrics.concept_matrix(u))


def test_shift_package_keeps_its_names():
    old = [
        "AlphaSweep", "ConceptDictionaryLike", "DynamicsThresholds", "ShiftReport", "alpha_sweep", "analyze",
        "assign_samples", "classify_dynamics", "consistency", "correlation", "cosine_matrix", "keyword_overlap",
        "magnitude", "mas_overlap", "match_concepts", "mean_sample_shift", "most_activating", "recovery",
        "shift_vectors", "shifted_concepts", "text_overlap",
    ]  # fmt: skip
    assert sorted(ns.shift.__all__) == sorted(old)
    assert all(callable(getattr(ns.shift, n)) for n in old)
    assert "shift_vectors" in ns.shift._TENSORS and ns.shift.FORMAT_VERSION == 2


def _long_functions(path: Path, limit: int = 80) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_shift_and_metrics_modules_are_small():
    root = Path(metrics.__file__).parent
    files = [root / "metrics.py", *sorted((root / "shift").glob("*.py"))]
    assert len(files) == 6
    assert [f.name for f in files if len(f.read_text().splitlines()) >= 500] == []
    assert [f for path in files for f in _long_functions(path)] == []
