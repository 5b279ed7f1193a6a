"""Property tests (hypothesis) of nnshift.shift: α = 0, permuted fine-tuned concepts, identical models."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nnshift import shift
from nnshift.concepts import ConceptDictionary


def make_dico(u: torch.Tensor):
    """A k-means dictionary with the given centroids (activations 1/(1+distance))."""
    return ConceptDictionary.from_concepts(u, method="kmeans")


worlds = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(2, 6),  # K
    st.integers(2, 40),  # M
    st.integers(2, 8),  # D
    st.floats(0.0, 3.0),  # scale of the shifts
)


def draw_world(seed: int, k: int, m: int, d: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g) * 2
    b = a + scale * torch.randn(m, d, generator=g)
    u_a = a[torch.randperm(m, generator=g)[:k]] if m >= k else torch.randn(k, d, generator=g)
    u_b = torch.randn(k, d, generator=g) * 2
    return a, b, u_a, u_b


SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(worlds)
def test_alpha_zero_recovers_the_original(world):
    a, b, u_a, u_b = draw_world(*world)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), alpha=0.0, n_mas=3)
    assert torch.equal(rep.shifted, rep.concepts_a)
    assert torch.equal(rep.recovery_shifted, rep.recovery_original)
    assert torch.equal(rep.mas_shifted, shift.most_activating(make_dico(u_a), b, 3))
    sw = rep.alpha_sweep([0.0])
    assert torch.equal(sw.recovery[0], rep.recovery_original.float())


def _unique_optimum(sim: np.ndarray) -> bool:
    costs = sorted(sum(1 - sim[i, p[i]] for i in range(len(p))) for p in itertools.permutations(range(sim.shape[0])))
    rows = np.sort(sim, axis=1)
    return costs[1] - costs[0] > 1e-5 and bool(np.all(rows[:, -1] - rows[:, -2] > 1e-5))


@SETTINGS
@given(worlds, st.data())
def test_permuting_fine_tuned_concepts_permutes_matching(world, data):
    a, b, u_a, u_b = draw_world(*world)
    k = u_a.shape[0]
    perm = torch.tensor(data.draw(st.permutations(range(k))))
    assume(_unique_optimum(shift.cosine_matrix(u_a, u_b).double().numpy()))
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), n_mas=2)
    rep_p = shift.analyze(a, b, make_dico(u_a), make_dico(u_b[perm]), n_mas=2)
    # fine-tuned concept j' of the permuted dictionary is concept perm[j'] of the original one
    assert torch.equal(perm[rep_p.matching], rep.matching)
    assert torch.equal(perm[rep_p.greedy_matching], rep.greedy_matching)
    torch.testing.assert_close(rep_p.recovery_original, rep.recovery_original)
    torch.testing.assert_close(rep_p.recovery_shifted, rep.recovery_shifted)
    torch.testing.assert_close(rep_p.similarity, rep.similarity[:, perm])
    assert torch.equal(perm[rep_p.new].sort().values, rep.new.sort().values)
    assert rep_p.dynamics == rep.dynamics


@SETTINGS
@given(worlds)
def test_identical_models_give_zero_shift(world):
    a, _, u_a, u_b = draw_world(*world)
    rep = shift.analyze(a, a.clone(), make_dico(u_a), make_dico(u_b), n_mas=2)
    assert torch.all(rep.shift_vectors == 0) and torch.all(rep.magnitude == 0)
    assert torch.equal(rep.shifted, rep.concepts_a)
    assert torch.equal(rep.recovery_shifted, rep.recovery_original)
    nonempty = rep.counts > 0
    assert torch.all(rep.mean_sample_shift[nonempty] == 0)
    assert torch.all(rep.consistency[nonempty] == 0)  # cos with a zero vector is 0 by convention
    assert int(rep.counts.sum()) == a.shape[0]


@SETTINGS
@given(worlds, st.floats(-3.0, 3.0))
def test_shift_is_linear_in_alpha(world, alpha):
    a, b, u_a, u_b = draw_world(*world)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), alpha=alpha, n_mas=2)
    torch.testing.assert_close(rep.shifted, rep.concepts_a + alpha * rep.shift_vectors)
    # Δ_k is the mean of b − a over A_k, so the counts-weighted sum of Δ_k is the total shift
    total = (rep.shift_vectors * rep.counts[:, None]).sum(0)
    torch.testing.assert_close(total, (b - a).sum(0), atol=1e-4, rtol=1e-4)
