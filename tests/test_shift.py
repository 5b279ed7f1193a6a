"""nnshift.shift against an independent numpy computation of every quantity (empty concepts included)."""

from __future__ import annotations

import itertools
import json
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

import nnshift as ns
from nnshift import shift
from nnshift.artifacts import seal
from nnshift.concepts import ConceptDictionary
from nnshift.errors import (
    ConceptError,
    CorruptStoreError,
    DataFormatError,
    HiddenSizeMismatchError,
    NnshiftError,
    NonFiniteError,
    PairingError,
)


class StandInDictionary:
    """A minimal object with the ConceptDictionary interface (no ``scores``): signed activations ``x @ U^T``.

    It checks that analyze only needs the documented interface, and takes ``argmax |v|`` for signed methods.
    """

    def __init__(self, concepts: torch.Tensor, method: str = "kmeans") -> None:
        self.concepts = concepts
        self.method = method

    @property
    def k(self) -> int:
        return self.concepts.shape[0]

    @property
    def dim(self) -> int:
        return self.concepts.shape[1]

    def transform(self, acts):
        x = acts.tensor if isinstance(acts, ns.Activations) else acts
        u = self.concepts.to(x)
        if self.method == "kmeans":
            return 1.0 / (1.0 + torch.cdist(x, u))
        return x @ u.T

    def assign(self, acts):
        return self.transform(acts).abs().argmax(dim=1)

    @classmethod
    def from_concepts(cls, concepts, method: str = "kmeans"):
        return cls(concepts, method)


def make_dico(u: torch.Tensor, method: str = "kmeans", **params):
    """The real k-means ConceptDictionary (activations 1/(1+distance)), or the signed stand-in for 'linear'."""
    if method == "kmeans":
        return ConceptDictionary.from_concepts(u, method="kmeans", **params)
    return StandInDictionary(u, method)


def make_world(seed: int = 0, m: int = 60, d: int = 8, k: int = 5, empty: bool = True):
    """Paired activations with per-cluster shifts; the last original concept is far away (empty) if ``empty``."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(k, d, generator=g)
    lab = torch.arange(m) % (k - 1 if empty else k)
    a = centres[lab] + 0.5 * torch.randn(m, d, generator=g)
    shifts = torch.randn(k, d, generator=g)
    b = a + shifts[lab] + 0.3 * torch.randn(m, d, generator=g)
    u_a = centres.clone()
    if empty:
        u_a[-1] = 100.0 + torch.randn(d, generator=g)
    u_b = (centres + shifts + 0.2 * torch.randn(k, d, generator=g))[torch.randperm(k, generator=g)]
    return a, b, u_a, u_b


# ---------------------------------------------------------------------------------------------------- numpy reference


def np_cos(x, y):
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return 0.0 if nx == 0 or ny == 0 else float(x @ y / (nx * ny))


def np_reference(a, b, u_a, u_b, alpha, n_mas, method="kmeans"):
    a, b, u_a, u_b = (np.asarray(t, dtype=np.float64) for t in (a, b, u_a, u_b))
    k = u_a.shape[0]

    def act(x, u):
        if method == "kmeans":
            return 1.0 / (1.0 + np.linalg.norm(x[:, None, :] - u[None, :, :], axis=2))
        return x @ u.T

    v_a = act(a, u_a)
    assign = np.abs(v_a).argmax(axis=1)
    delta = b - a
    counts = np.array([(assign == i).sum() for i in range(k)])
    vec = np.zeros_like(u_a)
    cons, pair, msh = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
    for i in range(k):
        rows = delta[assign == i]
        if len(rows) == 0:
            continue
        vec[i] = rows.mean(axis=0)
        cons[i] = np.mean([np_cos(r, vec[i]) for r in rows])
        msh[i] = np.mean(np.linalg.norm(rows, axis=1))
        if len(rows) > 1:
            pair[i] = np.mean([np_cos(rows[p], rows[q]) for p, q in itertools.combinations(range(len(rows)), 2)])
    shifted = u_a + alpha * vec
    sim = np.array([[np_cos(x, y) for y in u_b] for x in u_a])
    best = min(itertools.permutations(range(k)), key=lambda p: sum(1 - sim[i, p[i]] for i in range(k)))
    matching = np.array(best)
    greedy = sim.argmax(axis=1)
    rec_o = np.array([np_cos(u_a[i], u_b[matching[i]]) for i in range(k)])
    rec_s = np.array([np_cos(shifted[i], u_b[matching[i]]) for i in range(k)])

    def mas(v):
        return [set(np.argsort(-np.abs(v[:, j]), kind="stable")[:n_mas].tolist()) for j in range(v.shape[1])]

    mas_o, mas_b, mas_s = mas(v_a), mas(act(b, u_b)), mas(act(b, shifted))
    mas_ov_o = np.array([100 * len(mas_o[i] & mas_b[matching[i]]) / n_mas for i in range(k)])
    mas_ov_s = np.array([100 * len(mas_s[i] & mas_b[matching[i]]) / n_mas for i in range(k)])
    return dict(
        assignment=assign,
        counts=counts,
        empty=np.flatnonzero(counts == 0),
        shift_vectors=vec,
        shifted=shifted,
        similarity=sim,
        matching=matching,
        greedy_matching=greedy,
        recovery_original=rec_o,
        recovery_shifted=rec_s,
        consistency=cons,
        pairwise_consistency=pair,
        magnitude=np.linalg.norm(vec, axis=1),
        mean_sample_shift=msh,
        mas_sets=(mas_o, mas_s, mas_b),
        mas_overlap_original=mas_ov_o,
        mas_overlap_shifted=mas_ov_s,
    )


def np_pearson(x, y, counts):
    ok = np.isfinite(x) & np.isfinite(y) & (counts > 0)
    return pearsonr(x[ok], y[ok])


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", ["kmeans", "linear"])
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_analyze_matches_numpy(method, alpha):
    a, b, u_a, u_b = make_world(seed=1)
    rep = shift.analyze(a, b, make_dico(u_a, method), make_dico(u_b, method), alpha=alpha, n_mas=4)
    ref = np_reference(a, b, u_a, u_b, alpha, 4, method)
    close = dict(rtol=1e-4, atol=1e-4, equal_nan=True)
    for name in ("assignment", "counts", "empty", "matching", "greedy_matching"):
        np.testing.assert_array_equal(getattr(rep, name).numpy(), ref[name], err_msg=name)
    for name in (
        "shift_vectors",
        "shifted",
        "similarity",
        "recovery_original",
        "recovery_shifted",
        "consistency",
        "pairwise_consistency",
        "magnitude",
        "mean_sample_shift",
        "mas_overlap_original",
        "mas_overlap_shifted",
    ):
        np.testing.assert_allclose(getattr(rep, name).numpy(), ref[name], **close, err_msg=name)
    mas_o, mas_s, mas_b = ref["mas_sets"]
    assert [set(r) for r in rep.mas_original.tolist()] == mas_o
    assert [set(r) for r in rep.mas_shifted.tolist()] == mas_s
    assert [set(r) for r in rep.mas_finetuned.tolist()] == mas_b
    if method == "kmeans":  # the far-away concept gets no sample: zero shift, NaN consistencies
        assert rep.empty.tolist() == [4]
        assert torch.all(rep.shift_vectors[4] == 0) and math.isnan(rep.consistency[4])
    gain = ref["recovery_shifted"] - ref["recovery_original"]
    for key, other in (
        ("gain_vs_consistency", ref["consistency"]),
        ("gain_vs_pairwise_consistency", ref["pairwise_consistency"]),
        ("gain_vs_magnitude", ref["magnitude"]),
        ("consistency_vs_magnitude", ref["magnitude"]),
    ):
        if key == "consistency_vs_magnitude":
            r, p = np_pearson(ref["consistency"], other, ref["counts"])
            assert rep.correlations[key]["r"] == pytest.approx(r, abs=1e-3)
            continue
        r, p = np_pearson(gain, other, ref["counts"])
        assert rep.correlations[key]["r"] == pytest.approx(r, abs=1e-3), key
        assert rep.correlations[key]["p"] == pytest.approx(p, rel=1e-2, abs=1e-3), key


def test_plain_functions_agree_with_report():
    a, b, u_a, u_b = make_world(seed=2)
    acts_a = ns.Activations(a, ids=[f"s{i}" for i in range(len(a))])
    acts_b = ns.Activations(b, ids=list(acts_a.ids))
    da, db = make_dico(u_a), make_dico(u_b)
    rep = shift.analyze(acts_a, acts_b, da, db)
    assign = shift.assign_samples(da, acts_a)
    assert torch.equal(assign, rep.assignment)
    vec, counts = shift.shift_vectors(acts_a, acts_b, assign, 5)
    assert torch.allclose(vec, rep.shift_vectors) and torch.equal(counts, rep.counts)
    torch.testing.assert_close(shift.shifted_concepts(u_a, vec, 1.0), rep.shifted)
    cons = shift.consistency(acts_a, acts_b, assign, 5)
    pair = shift.consistency(acts_a, acts_b, assign, 5, pairwise=True)
    torch.testing.assert_close(cons, rep.consistency, equal_nan=True)
    torch.testing.assert_close(pair, rep.pairwise_consistency, equal_nan=True)
    torch.testing.assert_close(shift.magnitude(vec), rep.magnitude)
    torch.testing.assert_close(
        shift.mean_sample_shift(acts_a, acts_b, assign, 5), rep.mean_sample_shift, equal_nan=True
    )
    assert torch.equal(shift.match_concepts(u_a, u_b), rep.matching)
    assert torch.equal(shift.match_concepts(u_a, u_b, "greedy"), rep.greedy_matching)
    torch.testing.assert_close(shift.recovery(rep.shifted, u_b, rep.matching), rep.recovery_shifted)
    assert rep.ids == acts_a.ids
    assert rep.mas_ids("original")[0] == [acts_a.ids[i] for i in rep.mas_original[0].tolist()]
    assert set(rep.summary()) >= {"recovery_original", "recovery_shifted", "dynamics", "correlations"}


def test_exact_shift_recovers_fine_tuned_concepts():
    """Clusters moved rigidly by d_k: the shifted centroids are the fine-tuned centroids (recovery 1)."""
    g = torch.Generator().manual_seed(3)
    k, d = 4, 6
    centres = 4 * torch.randn(k, d, generator=g)
    lab = torch.arange(80) % k
    a = centres[lab] + 0.3 * torch.randn(80, d, generator=g)
    u_a = torch.stack([a[lab == i].mean(0) for i in range(k)])
    moves = 2 * torch.randn(k, d, generator=g)
    b = a + moves[lab]
    u_b = (u_a + moves)[torch.tensor([2, 0, 3, 1])]
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b))
    torch.testing.assert_close(rep.recovery_shifted, torch.ones(k), atol=1e-5, rtol=0)
    assert rep.consistency.min() > 0.999 and rep.pairwise_consistency.min() > 0.999
    assert torch.all(rep.mas_overlap_shifted >= rep.mas_overlap_original)
    assert rep.matching.tolist() == [1, 3, 0, 2]


def _ground_factory(vocab_size: int = 40, d: int = 8, top: int = 6, seed: int = 0):
    """A deterministic stand-in for text grounding: the top tokens of W u (words 'w0'...)."""
    w = torch.randn(vocab_size, d, generator=torch.Generator().manual_seed(seed))
    calls = []

    def ground(u):
        calls.append(u.shape[0])
        idx = (u.to(w) @ w.T).topk(top, dim=1).indices
        return [[f"w{i}" for i in row] for row in idx.tolist()]

    return ground, calls


def test_text_overlap_and_dynamics_with_grounding():
    a, b, u_a, u_b = make_world(seed=4)
    ground, _ = _ground_factory()
    th = shift.DynamicsThresholds(tau_refined=0.6, t_refined=30.0, tau_vanish=0.2, tau_new=0.9)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), ground=ground, thresholds=th)
    wa, ws, wb = ground(u_a), ground(rep.shifted), ground(u_b)
    assert rep.words_original == wa and rep.words_shifted == ws and rep.words_finetuned == wb
    match = rep.matching.tolist()

    def tov(x, y):
        return 100 * len(set(x) & set(y)) / len(set(x))

    np.testing.assert_allclose(rep.t_overlap_original.numpy(), [tov(wa[i], wb[j]) for i, j in enumerate(match)])
    np.testing.assert_allclose(rep.t_overlap_shifted.numpy(), [tov(ws[i], wb[j]) for i, j in enumerate(match)])
    # the documented rule, written out
    sim = rep.similarity.numpy()
    expect = []
    for i, j in enumerate(match):
        if rep.counts[i] == 0 or sim[i].max() < th.tau_vanish:
            expect.append("vanished")
        elif sim[i, j] >= th.tau_refined and rep.t_overlap_original[i] >= th.t_refined:
            expect.append("refined")
        else:
            expect.append("changed")
    assert rep.dynamics == expect
    assert rep.dynamics[4] == "vanished"  # the empty concept
    nearest = set(sim.argmax(axis=1).tolist())
    new = [j for j in range(5) if j not in nearest and sim[:, j].max() < th.tau_new]
    assert rep.new.tolist() == new
    assert "t_gain_vs_consistency" in rep.correlations


def test_classify_dynamics_handmade():
    e = torch.eye(5)
    u_a = e[:3]
    u_b = torch.stack([e[0], 0.6 * e[1] + 0.8 * e[3], e[4]])
    sim = shift.cosine_matrix(u_a, u_b)
    match = shift.match_concepts(u_a, u_b)
    labels, new = shift.classify_dynamics(sim, match, torch.tensor([3, 3, 3]))
    assert labels == ["refined", "changed", "vanished"] and new.tolist() == [2]
    labels, _ = shift.classify_dynamics(sim, match, torch.tensor([3, 0, 3]))
    assert labels[1] == "vanished"
    low_t = torch.tensor([10.0, 90.0, 90.0])
    labels, _ = shift.classify_dynamics(sim, match, torch.tensor([3, 3, 3]), t_overlap=low_t)
    assert labels[0] == "changed"  # cosine alone is not enough once groundings exist
    labels, new = shift.classify_dynamics(
        sim, match, torch.tensor([3, 3, 3]), thresholds=shift.DynamicsThresholds(tau_refined=0.5, tau_new=0.0)
    )
    assert labels[1] == "refined" and new.numel() == 0
    with pytest.raises(ConceptError, match="tau_vanish"):
        shift.DynamicsThresholds(tau_refined=0.3, tau_vanish=0.6)


def test_alpha_sweep():
    a, b, u_a, u_b = make_world(seed=5)
    ground, calls = _ground_factory()
    rep1 = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), alpha=1.0, ground=ground)
    keywords = ["w1", "W3", "w7", "w11"]
    sw = rep1.alpha_sweep([0.0, 0.5, 1.0, 2.0], keywords=keywords)
    torch.testing.assert_close(sw.recovery[0], rep1.recovery_original)
    torch.testing.assert_close(sw.recovery[2], rep1.recovery_shifted)
    rep2 = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), alpha=2.0)
    torch.testing.assert_close(sw.recovery[3], rep2.recovery_shifted)
    torch.testing.assert_close(sw.t_overlap[0], rep1.t_overlap_original)
    torch.testing.assert_close(sw.t_overlap[2], rep1.t_overlap_shifted)
    kw = {"w1", "w3", "w7", "w11"}
    for ai, alpha in enumerate([0.0, 0.5, 1.0, 2.0]):
        words = ground(u_a + alpha * rep1.shift_vectors)
        expect = [100 * len(set(w) & kw) / len(set(w)) for w in words]
        np.testing.assert_allclose(sw.keyword_overlap[ai].numpy(), expect, rtol=1e-6)
    assert sw.mean_recovery.shape == (4,)
    assert sw.to_dict()["alphas"] == [0.0, 0.5, 1.0, 2.0]
    n_before = len(calls)
    shift.alpha_sweep(u_a, rep1.shift_vectors, u_b, rep1.matching, [0.0, 1.0], ground=ground)
    assert calls[n_before:] == [10, 5]  # one batched grounding call for all alphas, one for the fine-tuned concepts
    plain = shift.alpha_sweep(u_a, rep1.shift_vectors, u_b, rep1.matching, [1.0])
    assert plain.t_overlap is None and plain.keyword_overlap is None


def test_save_load_roundtrip(tmp_path):
    a, b, u_a, u_b = make_world(seed=6)
    ground, _ = _ground_factory()
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), ground=ground)
    rep.save(tmp_path / "r")
    assert not list(tmp_path.glob("r/*.pkl"))
    back = shift.ShiftReport.load(tmp_path / "r")
    for name in shift._TENSORS:
        x, y = getattr(rep, name), getattr(back, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0)), name
    assert back.dynamics == rep.dynamics and back.ids == rep.ids and back.thresholds == rep.thresholds
    assert back.words_shifted == rep.words_shifted and back.alpha == rep.alpha
    for key, val in rep.correlations.items():
        for stat in ("r", "p", "n"):
            assert val[stat] == back.correlations[key][stat] or (
                math.isnan(val[stat]) and math.isnan(back.correlations[key][stat])
            )
    sw = back.alpha_sweep([0.0, 1.0], ground=ground)
    torch.testing.assert_close(sw.t_overlap[1], rep.t_overlap_shifted)
    # without groundings, the optional tensors stay None
    rep2 = shift.analyze(a, b, make_dico(u_a), make_dico(u_b))
    rep2.save(tmp_path / "r2")
    back2 = shift.ShiftReport.load(tmp_path / "r2")
    assert back2.t_overlap_original is None and back2.words_original is None


def test_load_errors(tmp_path):
    with pytest.raises(CorruptStoreError, match="no saved shift report"):
        shift.ShiftReport.load(tmp_path / "missing")
    a, b, u_a, u_b = make_world(seed=7)
    shift.analyze(a, b, make_dico(u_a), make_dico(u_b)).save(tmp_path / "r")
    doc = json.loads((tmp_path / "r" / "shift.json").read_text())
    (tmp_path / "r" / "shift.json").write_text(json.dumps(seal({**doc, "format_version": 99})))  # re-sealed
    with pytest.raises(DataFormatError, match="format_version 99"):
        shift.ShiftReport.load(tmp_path / "r")
    (tmp_path / "r" / "shift.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="cannot read"):
        shift.ShiftReport.load(tmp_path / "r")


# ---------------------------------------------------------------------------------------------------- bad inputs


def _raises(exc, fn, match=None):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert isinstance(info.value, NnshiftError) and info.value.hint


def test_bad_inputs():
    a, b, u_a, u_b = make_world(seed=8)
    da, db = make_dico(u_a), make_dico(u_b)
    _raises(PairingError, lambda: shift.analyze(a, b[:-1], da, db), "59")
    ids = [f"s{i}" for i in range(len(a))]
    acts_a = ns.Activations(a, ids=ids)
    _raises(PairingError, lambda: shift.analyze(acts_a, ns.Activations(b, ids=ids[::-1]), da, db), "different samples")
    other = [*ids[:-1], "zzz"]
    _raises(PairingError, lambda: shift.analyze(acts_a, ns.Activations(b, ids=other), da, db), "'zzz'")
    _raises(ConceptError, lambda: shift.analyze(a, b, da, make_dico(u_b[:4])), "K = 4")
    _raises(HiddenSizeMismatchError, lambda: shift.analyze(a, b, da, make_dico(u_b[:, :6])), "hidden size 6")
    _raises(HiddenSizeMismatchError, lambda: shift.analyze(a, b[:, :6], da, db), "hidden size")
    bad = a.clone()
    bad[3, 2] = float("nan")
    _raises(NonFiniteError, lambda: shift.analyze(bad, b, da, db), "NaN")
    bad_b = b.clone()
    bad_b[0, 0] = float("inf")
    _raises(NonFiniteError, lambda: shift.analyze(a, bad_b, da, db), "NaN or Inf")
    bad_u = u_a.clone()
    bad_u[0, 0] = float("nan")
    _raises(NonFiniteError, lambda: shift.analyze(a, b, StandInDictionary(bad_u), db), "NaN")
    _raises(NonFiniteError, lambda: shift.analyze(a, b, da, db, alpha=float("nan")), "alpha")
    _raises(ConceptError, lambda: shift.shift_vectors(a, b, torch.full((60,), 9), 5), "outside")
    _raises(ConceptError, lambda: shift.match_concepts(u_a, u_b, "nearest"), "unknown matching")


def test_half_precision_inputs_accumulate_in_float32():
    a, b, u_a, u_b = make_world(seed=9)
    rep = shift.analyze(a.half(), b.half(), make_dico(u_a), make_dico(u_b))
    assert rep.shift_vectors.dtype == torch.float32
    ref = shift.analyze(a.half().float(), b.half().float(), make_dico(u_a), make_dico(u_b))
    torch.testing.assert_close(rep.shift_vectors, ref.shift_vectors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_activations_device():
    a, b, u_a, u_b = make_world(seed=10)
    cpu = shift.analyze(a, b, make_dico(u_a), make_dico(u_b))
    gpu = shift.analyze(a.cuda(), b.cuda(), make_dico(u_a), make_dico(u_b))
    for name in ("shift_vectors", "consistency", "recovery_shifted", "matching", "assignment", "mas_overlap_shifted"):
        t = getattr(gpu, name)
        assert t.device.type == "cuda", name
        torch.testing.assert_close(t.cpu(), getattr(cpu, name), equal_nan=True, atol=1e-4, rtol=1e-4)


def test_neg_distance_kmeans_assigns_to_the_nearest_centroid():
    """With activation='neg_distance' all activations are negative: |v| would pick the farthest centroid."""
    a, b, u_a, u_b = make_world(seed=11)
    rep = shift.analyze(a, b, make_dico(u_a, activation="neg_distance"), make_dico(u_b, activation="neg_distance"))
    ref = np_reference(a, b, u_a, u_b, 1.0, 5, "kmeans")
    np.testing.assert_array_equal(rep.assignment.numpy(), ref["assignment"])
    assert [set(r) for r in rep.mas_original.tolist()] == ref["mas_sets"][0]
    assert [set(r) for r in rep.mas_shifted.tolist()] == ref["mas_sets"][1]


def test_shifted_dictionary_keeps_the_method_parameters():
    """Semi-NMF with sparsity λ: the shifted concepts' MAS use the same λ as dico_a."""
    a, b, _, _ = make_world(seed=12, m=40, d=6, k=3, empty=False)
    a, b = a.abs(), b.abs()  # Semi-NMF codes are non-negative; keep the data on one side for clear codes
    lam = 2.0
    da = ns.concepts.fit(a, k=3, method="semi_nmf", seed=0, sparsity=lam, max_iter=50)
    db = ns.concepts.fit(b, k=3, method="semi_nmf", seed=0, sparsity=lam, max_iter=50)
    rep = shift.analyze(a, b, da, db, n_mas=4)
    same_lam = ConceptDictionary.from_concepts(rep.shifted, method="semi_nmf", sparsity=lam)
    expect = same_lam.transform(b).topk(4, dim=0).indices.T
    assert [set(r) for r in rep.mas_shifted.tolist()] == [set(r) for r in expect.tolist()]
    assert torch.equal(rep.assignment, da.assign(a))


def test_fitted_dictionaries_end_to_end():
    a, b, _, _ = make_world(seed=13, m=120, d=8, k=5, empty=False)
    acts_a = ns.Activations(a, ids=[f"s{i}" for i in range(len(a))], info={"model": "a", "layer": 3})
    acts_b = ns.Activations(b, ids=list(acts_a.ids), info={"model": "b", "layer": 3})
    da = ns.concepts.fit(acts_a, k=5, method="kmeans", seed=0)
    db = ns.concepts.fit(acts_b, k=5, method="kmeans", seed=0)
    rep = shift.analyze(acts_a, acts_b, da, db)
    assert torch.equal(rep.assignment, da.assign(acts_a))
    assert int(rep.counts.sum()) == 120 and rep.empty.numel() == 0
    # the clusters move rigidly up to noise: shifting recovers the fine-tuned centroids better than not shifting
    assert float(rep.recovery_shifted.mean()) > float(rep.recovery_original.mean())
    assert rep.info["model_a"]["model"] == "a" and rep.info["method_a"] == "kmeans"


class FakeTokenizer:
    """Decodes token i to VOCAB[i]."""

    all_special_ids: tuple[int, ...] = ()

    def __init__(self, vocab):
        self.vocab = vocab

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(" " + self.vocab[i] for i in ids)


class FakeVLM:
    """What text grounding needs from a model: ``logit_lens`` (final norm + unembedding) and a tokenizer."""

    VOCAB: ClassVar[list[str]] = [
        "dog",
        "cat",
        "red",
        "blue",
        "green",
        "house",
        "water",
        "tree",
        "car",
        "road",
        "beach",
        "snow",
        "happy",
        "sad",
        "grass",
        "sky",
        "ball",
        "food",
        "bird",
        "horse",
    ]

    def __init__(self, d: int):
        self.w = torch.randn(len(self.VOCAB), d, generator=torch.Generator().manual_seed(0))
        self.tokenizer = FakeTokenizer(self.VOCAB)

    def logit_lens(self, u):
        return u.float() @ self.w.T


def test_grounding_through_a_model():
    a, b, u_a, u_b = make_world(seed=14)
    vlm = FakeVLM(8)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), vlm=vlm, top_words=4)
    assert rep.words_original == ns.concepts.ground_text(u_a, vlm, top=4)
    assert rep.words_shifted == ns.concepts.ground_text(rep.shifted, vlm, top=4)
    assert rep.words_finetuned == ns.concepts.ground_text(u_b, vlm, top=4)
    expect = [
        ns.concepts.t_overlap(rep.words_original[i], rep.words_finetuned[j])
        for i, j in enumerate(rep.matching.tolist())
    ]
    np.testing.assert_allclose(rep.t_overlap_original.numpy(), expect, rtol=1e-6)
    sw = rep.alpha_sweep([0.0, 1.0], keywords=["dog", "Beach"])
    torch.testing.assert_close(sw.t_overlap[1], rep.t_overlap_shifted)
    sw2 = shift.analyze(a, b, make_dico(u_a), make_dico(u_b)).alpha_sweep([0.0, 1.0], vlm=vlm, top_words=4)
    torch.testing.assert_close(sw2.t_overlap, sw.t_overlap)


def test_empty_grounding_gives_nan_overlap_and_no_refined_label():
    a, b, u_a, u_b = make_world(seed=15)

    def ground(u):
        return [[] if i == 0 else ["x", "y"] for i in range(u.shape[0])]

    th = shift.DynamicsThresholds(tau_refined=-1.0, tau_vanish=-1.0, t_refined=10.0)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), ground=ground, thresholds=th)
    assert math.isnan(rep.t_overlap_original[0]) and rep.t_overlap_original[1] == 100.0
    assert rep.dynamics[0] == "changed" and rep.dynamics[1] == "refined"


def test_per_concept_rows():
    """ShiftReport.per_concept: one row per concept, each value read from the report's own tensors."""
    a, b, u_a, u_b = make_world(3)
    rep = shift.analyze(a, b, make_dico(u_a), make_dico(u_b))
    rows = rep.per_concept()
    assert [r["concept"] for r in rows] == list(range(rep.k))
    for c, r in enumerate(rows):
        m = int(rep.matching[c])
        assert r["match"] == m and r["dynamics"] == rep.dynamics[c]
        assert r["cos original"] == pytest.approx(np_cos(u_a[c].numpy(), u_b[m].numpy()), abs=1e-5)
        assert r["cos shifted"] == float(rep.recovery_shifted[c])
        assert r["consistency"] == float(rep.consistency[c]) or math.isnan(float(rep.consistency[c]))
        assert r["magnitude"] == pytest.approx(float(rep.shift_vectors[c].norm()), rel=1e-5)
