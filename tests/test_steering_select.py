"""Choosing steering vectors: exact 1-D k-means, impact scores relative to the unsteered run, proximity ranking."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

import nnshift as ns
from nnshift.errors import EmptyInputError, HiddenSizeMismatchError, SteeringError
from nnshift.generation import generate
from nnshift.steering import (
    SteeringVector,
    answer_changes,
    by_impact,
    by_proximity,
    cluster_changes,
    kmeans_1d,
    rank_impact,
    steer,
    word_direction,
)
from nnshift.steering.select import ImpactScore

warnings.filterwarnings("ignore")


def _sse(values, labels):
    out = 0.0
    for lab in set(labels):
        group = [v for v, g in zip(values, labels, strict=True) if g == lab]
        m = sum(group) / len(group)
        out += sum((v - m) ** 2 for v in group)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=2, max_size=7))
def test_kmeans_1d_is_the_exact_optimum(values):
    labels = kmeans_1d(values)
    assert len(labels) == len(values)
    if len(set(values)) == 1:
        assert labels == [1] * len(values)
        return
    assert labels[values.index(max(values))] == 1 and 0 in labels  # primary holds the max; two clusters
    best = min(_sse(values, lab) for lab in itertools.product([0, 1], repeat=len(values)) if 0 < sum(lab) < len(values))
    assert _sse(values, labels) == pytest.approx(best, abs=1e-9)
    # never worse than scikit-learn's k-means (k = 2), the reference's solver
    km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(np.array(values, dtype=float).reshape(-1, 1))
    assert _sse(values, labels) <= km.inertia_ + 1e-6


def test_cluster_changes_example():
    changes = {"no": 40, "yes": -38, "2": 1, "3": 0, "red": 0, "blue": -1}
    score, primary, secondary = cluster_changes(changes, top=5)
    assert primary == ["no"] and set(secondary) == {"2", "3", "red", "blue"}  # "yes" (-38) is not in the top 5
    assert score == 40 - 1
    # two answers steered together ("3 and 4")
    score2, primary2, _ = cluster_changes({"3": 20, "4": 18, "2": 1, "1": 0, "red": -2})
    assert primary2 == ["3", "4"] and score2 == 18 - 1
    assert cluster_changes({}) == (0.0, [], [])
    with pytest.raises(SteeringError):
        cluster_changes(changes, top=0)


def test_changes_are_relative_to_the_unsteered_run():
    baseline = ["yes"] * 6 + ["no"] * 2 + ["2"]
    # a vector that changes nothing scores 0, however frequent an answer is (the reference's bug used absolute counts)
    assert all(c == 0 for c in answer_changes(baseline, baseline).values())
    assert cluster_changes(answer_changes(baseline, baseline))[0] == 0.0
    steered = ["yes"] * 3 + ["No."] * 5 + ["2"]
    changes = answer_changes(baseline, steered)
    assert changes == {"no": 3, "2": 0, "yes": -3}
    score, primary, _ = cluster_changes(changes)
    assert primary == ["no"] and score == 3
    with pytest.raises(SteeringError):
        answer_changes(["a"], ["a", "b"])


def test_rank_impact_filters_sorts_and_keeps_distinct_targets():
    patch = SteeringVector(torch.ones(2), layer=0).patch()

    def s(key, score, targets):
        return ImpactScore(key, float(score), targets, [], {}, patch=patch)

    scores = [s("a", 5, ["no"]), s("b", 9, ["no"]), s("c", 7, ["3", "4"]), s("d", 1, ["red"]), s("e", 3, ["black"])]
    ranked = rank_impact(scores)
    assert [x.key for x in ranked] == ["b", "e", "d"]
    assert [x.key for x in rank_impact(scores, max_targets=None, distinct=False, keep=3)] == ["b", "c", "a"]


def test_by_impact_on_a_tiny_model(llama):
    samples = [ns.Sample(id=str(i), prompt=p) for i, p in enumerate(["what color", "how many dogs", "is it red", "a"])]
    d = llama.hidden_size
    g = torch.Generator().manual_seed(1)
    candidates = {
        "weak": SteeringVector(torch.randn(d, generator=g) * 1e-6, layer=-1),
        "strong": SteeringVector(torch.randn(d, generator=g) * 8.0, layer=-1),
        "strong2": SteeringVector(torch.randn(d, generator=g) * 8.0, layer=1),
    }
    baseline = generate(llama, samples, max_new_tokens=3, progress=False)
    ranked = by_impact(llama, samples, candidates, max_new_tokens=3, max_targets=None, distinct=False, progress=False)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    by_key = {r.key: r for r in ranked}
    assert by_key["weak"].score == 0.0 and by_key["weak"].answers == baseline
    for r in ranked:  # the evidence is exactly what steering gives, relative to the unsteered answers
        assert r.answers == steer(llama, samples, candidates[r.key].patch(1.0), 3, progress=False)
        assert r.changes == answer_changes(baseline, r.answers)
        assert (r.score, r.targets) == cluster_changes(r.changes)[:2]
    strong = by_key["strong"]
    assert strong.score > 0 and strong.targets and strong.vector is candidates["strong"]
    assert strong.to_dict()["patch"]["layer"] == -1
    with pytest.raises(EmptyInputError):
        by_impact(llama, samples, {}, progress=False)


def test_by_proximity_finds_the_pair_between_source_and_target():
    u = torch.eye(5, 8) * 3.0
    src = u[1] + 0.1 * torch.randn(8)
    tgt = ns.Activations(torch.stack([u[4] + 0.1, u[4] - 0.1]), ["x", "y"])  # the mean is used
    ranked = by_proximity(u, src, tgt)
    best = ranked[0]
    assert best.pair == (1, 4) and torch.allclose(best.vector.vector, u[4] - u[1])
    assert best.score == pytest.approx(best.source_similarity + best.target_similarity)
    assert len(ranked) == 5 * 4 and all(a.score >= b.score for a, b in itertools.pairwise(ranked))
    assert by_proximity(u, src, tgt, keep=3)[0].pair == (1, 4)
    with pytest.raises(HiddenSizeMismatchError):
        by_proximity(u, torch.ones(3), tgt)


def test_by_proximity_with_words_uses_the_unembedding(llama):
    w_yes, w_no = word_direction(llama, "yes"), word_direction(llama, "no")
    weight = llama.hf.get_output_embeddings().weight
    tok = llama.tokenizer.encode(" yes", add_special_tokens=False)
    assert any(torch.equal(w_yes, weight[t].float()) for t in tok)
    concepts = torch.stack([torch.randn(llama.hidden_size), w_yes, torch.randn(llama.hidden_size), w_no])
    ranked = by_proximity(concepts, "yes", "no", vlm=llama)
    assert ranked[0].pair == (1, 3)
    with pytest.raises(SteeringError):
        by_proximity(concepts, "yes", "no")  # words need the model
