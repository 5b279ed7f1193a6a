"""Concept dictionaries: methods against independent computations, persistence, bad inputs, properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jaxtyping import TypeCheckError
from scipy.optimize import nnls

import nnshift.concepts as nc
from nnshift.concepts import _solvers as S
from nnshift.concepts.dictionary import ConceptDictionary, matrix
from nnshift.concepts.methods import ConceptMethod, FitResult
from nnshift.errors import (
    ConceptError,
    CorruptStoreError,
    EmptyInputError,
    HiddenSizeMismatchError,
    NnshiftError,
    NonFiniteError,
)
from nnshift.store import Activations

METHODS = ["kmeans", "semi_nmf", "sparse_semi_nmf", "pca", "nmf"]


def hidden_like(m: int = 120, d: int = 24, rank: int = 6, seed: int = 0) -> torch.Tensor:
    """Small hidden-state-like data: positive offset + sparse non-negative low-rank part + noise."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.rand(d, generator=g) * 3.0
    atoms = torch.randn(rank, d, generator=g)
    codes = torch.rand(m, rank, generator=g) * (torch.rand(m, rank, generator=g) < 0.4) * 4.0
    return offset + codes @ atoms + 0.1 * torch.randn(m, d, generator=g)


def np_sparse_objective(z, v, u, lam):
    z, v, u = (np.asarray(x, dtype=np.float64) for x in (z, v, u))
    return 0.5 * np.sum((z - v @ u) ** 2) + lam * np.abs(v).sum()


# ----------------------------------------------------------------------------------- k-means


def test_kmeans_matches_sklearn_inertia_from_same_init():
    from sklearn.cluster import KMeans

    z = hidden_like(300, 32, seed=1)
    init = z[torch.randperm(300, generator=torch.Generator().manual_seed(3))[:8]].clone()
    d = nc.fit(z, k=8, method="kmeans", init=init, max_iter=300, tol=1e-4)
    sk = KMeans(n_clusters=8, init=init.numpy().astype(np.float64), n_init=1, max_iter=300, tol=1e-4).fit(
        z.numpy().astype(np.float64)
    )
    zn = z.numpy().astype(np.float64)

    def inertia(c):
        d2 = ((zn[:, None, :] - np.asarray(c, dtype=np.float64)[None]) ** 2).sum(-1)
        return d2.min(1).sum()

    ours, theirs = inertia(d.concepts.numpy()), inertia(sk.cluster_centers_)
    assert abs(ours - theirs) <= 0.01 * theirs
    assert d.diagnostics["inertia"] == pytest.approx(ours, rel=1e-4)


def test_kmeans_plusplus_quality_close_to_sklearn():
    from sklearn.cluster import KMeans

    z = hidden_like(400, 16, seed=2)
    ours = nc.fit(z, k=10, method="kmeans", seed=0, n_init=3).diagnostics["inertia"]
    theirs = KMeans(n_clusters=10, n_init=3, random_state=0).fit(z.numpy().astype(np.float64)).inertia_
    assert ours <= 1.05 * theirs


def test_kmeans_activations_and_assignment_independent():
    z = hidden_like(80, 10, seed=4)
    d = nc.fit(z, k=5, method="kmeans", seed=0)
    zn, cn = z.numpy().astype(np.float64), d.concepts.numpy().astype(np.float64)
    dist = np.sqrt(((zn[:, None] - cn[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d.transform(z).numpy(), 1.0 / (1.0 + dist), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(d.assign(z).numpy(), dist.argmin(1))
    # the documented alternatives keep "largest activation = most similar centroid"
    neg = ConceptDictionary.from_concepts(d.concepts, method="kmeans", activation="neg_distance")
    np.testing.assert_allclose(neg.transform(z).numpy(), -dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(neg.assign(z).numpy(), dist.argmin(1))
    cos = ConceptDictionary.from_concepts(d.concepts, method="kmeans", activation="cosine")
    ref = (zn / np.linalg.norm(zn, axis=1, keepdims=True)) @ (cn / np.linalg.norm(cn, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cos.transform(z).numpy(), ref, atol=1e-5)
    # reconstruct = nearest centroid
    np.testing.assert_allclose(d.reconstruct(z).numpy(), cn[dist.argmin(1)], atol=1e-5)


def test_kmeans_is_seeded():
    z = hidden_like(100, 12, seed=5)
    a = nc.fit(z, k=6, method="kmeans", seed=7)
    b = nc.fit(z, k=6, method="kmeans", seed=7)
    assert torch.equal(a.concepts, b.concepts)


def test_kmeans_handles_duplicate_points():
    z = torch.cat([torch.zeros(5, 4), torch.ones(5, 4)])
    d = nc.fit(z, k=3, method="kmeans", seed=0)
    assert torch.isfinite(d.concepts).all()
    assert d.diagnostics["inertia"] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------- Semi-NMF


def numpy_semi_nmf(z: np.ndarray, v0: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Ding, Li & Jordan (2010) Semi-NMF in float64: X ≈ F Gᵀ with X = Zᵀ, F = Uᵀ, G = V."""
    x = z.T.astype(np.float64)
    g = v0.astype(np.float64).copy()
    f = None
    for _ in range(n_iter):
        f = x @ g @ np.linalg.pinv(g.T @ g)
        xtf = x.T @ f
        ftf = f.T @ f
        pos = lambda a: (np.abs(a) + a) / 2  # noqa: E731
        neg = lambda a: (np.abs(a) - a) / 2  # noqa: E731
        g = g * np.sqrt((pos(xtf) + g @ neg(ftf)) / np.maximum(neg(xtf) + g @ pos(ftf), 1e-20))
    return f.T, g


def test_semi_nmf_monotone_and_matches_numpy():
    z = hidden_like(150, 20, seed=6)
    v0 = torch.nn.functional.one_hot(torch.arange(150) % 5, 5).float() + 0.2
    d = nc.fit(z, k=5, method="semi_nmf", init=v0, max_iter=200, tol=0.0)
    loss = np.array(d.diagnostics["loss"])
    assert len(loss) == 201
    assert np.all(np.diff(loss) <= 1e-5 * loss[:-1])  # monotone non-increasing (float32 noise allowed)
    u_np, v_np = numpy_semi_nmf(z.numpy(), v0.numpy(), 200)
    err_np = np.linalg.norm(z.numpy() - v_np @ u_np) / np.linalg.norm(z.numpy())
    err = d.diagnostics["reconstruction_error"]
    assert err <= err_np * (1 + 1e-3)
    assert err == pytest.approx(err_np, rel=0.02)
    assert (d.codes >= 0).all()
    assert torch.allclose(d.concepts.norm(dim=1), torch.ones(5), atol=1e-5)


def test_semi_nmf_transform_is_nnls():
    z = hidden_like(60, 16, seed=7)
    d = nc.fit(z, k=4, method="semi_nmf", seed=0)
    v = d.transform(z).numpy()
    u = d.concepts.numpy().astype(np.float64)
    for i in range(0, 60, 7):
        ref, _ = nnls(u.T, z[i].numpy().astype(np.float64))
        np.testing.assert_allclose(v[i], ref, atol=1e-3 * max(1.0, ref.max()))


@pytest.mark.parametrize("method", ["semi_nmf", "sparse_semi_nmf", "nmf", "pca", "kmeans"])
def test_transform_of_training_data_reproduces_codes(method):
    z = hidden_like(100, 16, seed=8)
    if method == "nmf":
        z = z.clamp(min=0)
    d = nc.fit(z, k=5, method=method, seed=0)
    v = d.transform(z)
    assert d.codes is not None
    scale = float(d.codes.abs().max())
    assert torch.allclose(v, d.codes, atol=2e-3 * scale, rtol=1e-3)


def test_sparse_semi_nmf_constraints_and_sklearn_objective():
    from sklearn.decomposition import DictionaryLearning

    z = hidden_like(120, 16, seed=9)
    lam = 1.0
    d = nc.fit(z, k=5, method="sparse_semi_nmf", seed=0)
    assert d.params["sparsity"] == lam
    assert (d.concepts.norm(dim=1) <= 1 + 1e-5).all()
    assert (d.codes >= 0).all()
    ours = np_sparse_objective(z.numpy(), d.codes.numpy(), d.concepts.numpy(), lam)
    assert d.diagnostics["objective"] == pytest.approx(ours, rel=1e-4)
    dl = DictionaryLearning(
        n_components=5,
        positive_code=True,
        fit_algorithm="cd",
        transform_algorithm="lasso_cd",
        alpha=lam,
        max_iter=300,
        random_state=0,
    )
    v = dl.fit_transform(z.numpy().astype(np.float64))
    theirs = np_sparse_objective(z.numpy(), v, dl.components_, lam)
    assert ours <= theirs * 1.02
    hist = np.array(d.diagnostics["loss"])
    assert hist[-1] <= hist[:-1].min() * (1 + 1e-6)  # extrapolated: the best iterate is kept
    plain = np.array(nc.fit(z, k=5, method="sparse_semi_nmf", extrapolate=False).diagnostics["loss"])
    assert np.all(np.diff(plain) <= 1e-5 * plain[:-1])  # without extrapolation: monotone


def test_sparse_transform_matches_sklearn_lasso():
    from sklearn.linear_model import Lasso

    z = hidden_like(40, 16, seed=10)
    lam = 2.0
    d = nc.fit(z, k=4, method="semi_nmf", sparsity=lam, seed=0)
    v = d.transform(z).numpy()
    u = d.concepts.numpy().astype(np.float64)
    for i in range(0, 40, 5):
        ref = Lasso(alpha=lam / 16, positive=True, fit_intercept=False, tol=1e-10, max_iter=100_000)
        ref.fit(u.T, z[i].numpy().astype(np.float64))
        np.testing.assert_allclose(v[i], ref.coef_, atol=2e-3 * max(1.0, ref.coef_.max()))


def test_relative_sparsity_scales_with_norm():
    z = hidden_like(80, 12, seed=11)
    d = nc.fit(z, k=3, method="semi_nmf", relative_sparsity=0.05, seed=0, max_iter=20)
    assert d.params["sparsity"] == pytest.approx(0.05 * float(z.norm(dim=1).median()), rel=1e-6)
    with pytest.raises(ConceptError, match="relative_sparsity"):
        ConceptDictionary.from_concepts(d.concepts, method="semi_nmf", relative_sparsity=0.1)


def test_more_sparsity_gives_sparser_codes():
    z = hidden_like(100, 16, seed=12)
    dens = [
        nc.fit(z, k=6, method="semi_nmf", sparsity=lam, seed=0, max_iter=50).diagnostics["code_density"]
        for lam in (0.5, 20.0)
    ]
    assert dens[1] < dens[0]


# ----------------------------------------------------------------------------------- PCA, NMF


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    z = hidden_like(200, 30, seed=13)
    d = nc.fit(z, k=4, method="pca")
    sk = PCA(n_components=4).fit(z.numpy().astype(np.float64))
    cos = np.abs((d.concepts.numpy() * sk.components_).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    np.testing.assert_allclose(d.diagnostics["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-4)
    signs = np.sign((d.concepts.numpy() * sk.components_).sum(1))
    np.testing.assert_allclose(d.transform(z).numpy(), sk.transform(z.numpy()) * signs, atol=1e-3)


def test_pca_randomized_path_large():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 700, generator=g) + 5 * torch.randn(600, 3, generator=g) @ torch.randn(3, 700, generator=g)
    d = nc.fit(z, k=3, method="pca")
    zc = (z - z.mean(0)).double()
    _, _, vt = torch.linalg.svd(zc, full_matrices=False)
    cos = (d.concepts.double() * vt[:3]).sum(1).abs()
    assert torch.allclose(cos, torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_nmf_nonnegative_and_shift():
    z = hidden_like(100, 16, seed=14)
    with pytest.raises(ConceptError, match="shift='min'"):
        nc.fit(z - 5, k=4, method="nmf")
    d = nc.fit(z - 5, k=4, method="nmf", shift="min", seed=0)
    assert (d.concepts >= 0).all() and (d.codes >= 0).all()
    off = (z - 5).min(0).values.clamp(max=0)
    assert torch.allclose(d.state["offset"], off)
    loss = np.array(d.diagnostics["loss"])
    assert np.all(np.diff(loss) <= 1e-5 * loss[:-1])
    from sklearn.decomposition import NMF

    x = (z - 5 - off).numpy().astype(np.float64)
    sk = NMF(n_components=4, init="nndsvda", max_iter=1000, random_state=0).fit(x)
    err_sk = np.linalg.norm(x - sk.transform(x) @ sk.components_) / np.linalg.norm(x)
    err = np.linalg.norm(x - d.codes.numpy() @ d.concepts.numpy()) / np.linalg.norm(x)
    assert err <= err_sk * 1.05


# ----------------------------------------------------------------------------------- dictionary


@pytest.mark.parametrize("method", METHODS)
def test_save_load_roundtrip(method, tmp_path):
    z = hidden_like(60, 12, seed=15).clamp(min=0)
    acts = Activations(z, ids=[f"s{i}" for i in range(60)], info={"model": "toy", "layer": 3})
    d = nc.fit(acts, k=4, method=method, seed=0)
    d.save(tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "concepts.json").read_text())["doc"]  # the manifest's own fields
    assert doc["method"] == method and doc["info"]["activations"]["layer"] == 3
    e = ConceptDictionary.load(tmp_path / "d")
    assert torch.equal(e.concepts, d.concepts) and torch.equal(e.codes, d.codes)
    assert e.params == json.loads(json.dumps(d.params))
    assert torch.allclose(e.transform(acts), d.transform(acts))
    assert set(e.state) == set(d.state)
    assert not list((tmp_path / "d").glob("*.pkl"))


def test_load_errors(tmp_path):
    with pytest.raises(CorruptStoreError, match="no saved concept dictionary"):
        ConceptDictionary.load(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "concepts.json").write_text("{not json")
    (tmp_path / "bad" / "concepts.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptStoreError):
        ConceptDictionary.load(tmp_path / "bad")


def test_from_concepts_transform_like_fitted():
    z = hidden_like(90, 14, seed=16)
    fitted = nc.fit(z, k=5, method="kmeans", seed=0)
    given = ConceptDictionary.from_concepts(fitted.concepts.clone(), method="kmeans")
    assert torch.allclose(given.transform(z), fitted.transform(z))
    assert given.k == 5 and given.dim == 14 and given.codes is None
    p = nc.fit(z, k=3, method="pca")
    gp = ConceptDictionary.from_concepts(p.concepts, method="pca", mean=p.state["mean"])
    assert torch.allclose(gp.transform(z), p.transform(z), atol=1e-5)
    s = nc.fit(z, k=3, method="sparse_semi_nmf", seed=0, max_iter=30)
    gs = ConceptDictionary.from_concepts(s.concepts, method="sparse_semi_nmf")
    assert torch.allclose(gs.transform(z), s.transform(z), atol=1e-4)
    shifted = ConceptDictionary.from_concepts(fitted.concepts + 0.5, method="kmeans")
    assert shifted.transform(z).shape == (90, 5)


def test_assign_is_argmax_abs():
    z = hidden_like(70, 10, seed=17)
    d = nc.fit(z, k=4, method="pca")
    v = d.transform(z)
    assert torch.equal(d.assign(z), v.abs().argmax(1))


def test_reconstruct_pca_full_rank_is_exact():
    z = hidden_like(30, 6, seed=18)
    d = nc.fit(z, k=6, method="pca")
    assert torch.allclose(d.reconstruct(z), z, atol=1e-4)
    assert d.diagnostics["reconstruction_error"] < 1e-5


def test_provenance_and_device():
    z = hidden_like(50, 8, seed=19)
    acts = Activations(z.to(torch.bfloat16), ids=[str(i) for i in range(50)], info={"model": "m"})
    d = nc.fit(acts, k=3, method="kmeans")
    assert d.concepts.dtype == torch.float32 and d.codes.dtype == torch.float32
    assert d.info["input_dtype"] == "bfloat16" and d.info["activations"] == {"model": "m"}
    assert d.info["n_samples"] == 50 and len(d.info["sample_ids_sha1"]) == 40
    assert "kmeans" in repr(d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_gpu(method):
    z = hidden_like(200, 32, seed=20).clamp(min=0).cuda()
    d = nc.fit(z, k=5, method=method, seed=0)
    assert d.concepts.is_cuda and d.transform(z).is_cuda
    cpu = nc.fit(z.cpu(), k=5, method=method, seed=0)
    assert d.diagnostics["reconstruction_error"] == pytest.approx(cpu.diagnostics["reconstruction_error"], rel=0.1)


# ----------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    z = hidden_like(10, 6)
    with pytest.raises(ConceptError, match="k=11 concepts from 10 samples") as ei:
        nc.fit(z, k=11)
    assert ei.value.hint
    bad = z.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        nc.fit(bad, k=2)
    bad[3, 2] = float("inf")
    with pytest.raises(NonFiniteError):
        nc.fit(bad, k=2)
    with pytest.raises(EmptyInputError):
        nc.fit(torch.zeros(0, 6), k=2)
    d = nc.fit(z, k=2)
    with pytest.raises(HiddenSizeMismatchError, match="hidden size 7"):
        d.transform(torch.zeros(4, 7))
    with pytest.raises(NonFiniteError):
        d.transform(bad)
    with pytest.raises(ConceptError, match="unknown concept method"):
        nc.fit(z, k=2, method="ica")
    with pytest.raises(ConceptError, match="no parameter"):
        nc.fit(z, k=2, method="kmeans", sparsity=1.0)
    with pytest.raises(ConceptError):
        nc.fit(z, k=0)
    with pytest.raises(ConceptError, match="activation"):
        nc.fit(z, k=2, activation="softmax")
    with pytest.raises(ConceptError, match="PCA"):
        nc.fit(torch.randn(10, 3), k=5, method="pca")
    with pytest.raises(NnshiftError):
        ConceptDictionary.from_concepts(torch.full((2, 3), float("nan")))
    with pytest.raises(ConceptError, match=r"\[M, D\]"):
        matrix(torch.randn(10))
    # a 1-D input: jaxtyping's check in tests, ConceptError without the import hook
    with pytest.raises((ConceptError, TypeCheckError)):
        nc.fit(torch.randn(10), k=2)
    with pytest.raises((ConceptError, TypeCheckError)):
        d.transform(torch.randn(6))


# ----------------------------------------------------------------------------------- registry, estimator


class _RandomRows(ConceptMethod):
    name = "random_rows_test"
    defaults = {"scale": 1.0}  # noqa: RUF012

    def fit(self, z, k, seed, params):
        idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:k]
        u = z[idx] * params["scale"]
        return FitResult(concepts=u, codes=z @ u.t(), params=dict(params), diagnostics={"loss": []})

    def transform(self, concepts, z, params, state):
        return z @ concepts.t()


def test_register_custom_method(tmp_path):
    if "random_rows_test" not in nc.available_methods():
        nc.register_method(_RandomRows())
    with pytest.raises(ConceptError, match="already registered"):
        nc.register_method(_RandomRows())
    z = hidden_like(30, 5)
    d = nc.fit(z, k=3, method="random_rows_test", scale=2.0)
    assert d.params["scale"] == 2.0
    d.save(tmp_path / "c")
    assert torch.allclose(ConceptDictionary.load(tmp_path / "c").transform(z), d.transform(z))


def test_estimator_sklearn_style():
    from sklearn.base import clone

    x = hidden_like(80, 10, seed=21).numpy()
    est = nc.ConceptEstimator(k=4, method="semi_nmf", seed=1, max_iter=50)
    assert est.get_params() == {"k": 4, "method": "semi_nmf", "seed": 1, "max_iter": 50}
    v = est.fit_transform(x)
    assert isinstance(v, np.ndarray) and v.shape == (80, 4) and (v >= 0).all()
    np.testing.assert_allclose(est.transform(x), v, atol=1e-3 * v.max())
    assert est.components_.shape == (4, 10)
    assert est.inverse_transform(v).shape == (80, 10)
    c = clone(est)
    assert c.get_params() == est.get_params() and c.dictionary_ is None
    with pytest.raises(ConceptError, match="not fitted"):
        c.transform(x)


# ----------------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(2, 30),
    d=st.integers(1, 12),
    k=st.integers(1, 6),
    method=st.sampled_from(METHODS),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    seed=st.integers(0, 3),
)
def test_shapes_and_dtypes_property(m, d, k, method, dtype, seed):
    k = min(k, m, d) if method == "pca" else min(k, m)
    z = hidden_like(m, d, rank=2, seed=seed).abs().to(dtype)
    kw = {} if method == "pca" else {"max_iter": 20}
    dico = nc.fit(z, k=k, method=method, seed=seed, **kw)
    assert dico.concepts.shape == (k, d) and dico.concepts.dtype == torch.float32
    v = dico.transform(z)
    assert v.shape == (m, k) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert dico.reconstruct(z).shape == (m, d)
    a = dico.assign(z)
    assert a.shape == (m,) and int(a.min()) >= 0 and int(a.max()) < k
    if method in ("semi_nmf", "sparse_semi_nmf", "nmf"):
        assert (v >= 0).all()


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 20), k=st.integers(1, 5), lam=st.floats(0.0, 3.0), seed=st.integers(0, 100))
def test_nonneg_lasso_kkt_property(m, k, lam, seed):
    """The codes satisfy the KKT conditions of min_{v>=0} 0.5‖z - vU‖² + λ‖v‖₁."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(k, 8, generator=g)
    z = torch.randn(m, 8, generator=g) * 3
    v = S.nonneg_lasso(z, u, lam, tol=1e-9, max_sweeps=5000)
    grad = (v @ u - z) @ u.t() + lam  # gradient of the smooth part + λ
    assert (v >= 0).all()
    scale = 1e-3 * (1 + float(z.abs().max()) * float(u.abs().max()))
    assert (grad >= -scale).all()  # stationarity on the inactive set
    assert (grad[v > 1e-4].abs() <= scale * 10).all()  # zero gradient on the active set


def test_jaxtyping_checks_are_active():
    with pytest.raises(Exception, match=r"(?i)type|shape|dim"):
        S.sq_distances(torch.zeros(3, 4), torch.zeros(2, 5))


# ----------------------------------------------------------------------------------- typed configs, saved files


def test_configs_are_frozen_typed_and_validated():
    import dataclasses

    from nnshift.concepts.methods import (
        KMeansConfig,
        KMeansMethod,
        NMFConfig,
        PCAConfig,
        SemiNMFConfig,
        SparseSemiNMFConfig,
    )

    cfg = KMeansConfig(n_init=3)
    assert (cfg.n_init, cfg.max_iter, cfg.activation) == (3, 300, "inverse_distance")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_init = 4  # type: ignore[misc]
    assert SparseSemiNMFConfig().sparsity == 1.0 and SemiNMFConfig().sparsity == 0.0
    assert KMeansMethod.defaults == {
        "activation": "inverse_distance",
        "init": "k-means++",
        "n_init": 1,
        "max_iter": 300,
        "tol": 1e-4,
    }
    bad = [
        (KMeansConfig, {"n_init": 0}, "n_init"),
        (KMeansConfig, {"activation": "softmax"}, "activation"),
        (KMeansConfig, {"init": "kmeans||"}, "init"),
        (SemiNMFConfig, {"sparsity": -1.0}, "sparsity"),
        (SemiNMFConfig, {"relative_sparsity": -0.1}, "relative_sparsity"),
        (SemiNMFConfig, {"inner_sweeps": 0}, "inner_sweeps"),
        (PCAConfig, {"n_iter": -1}, "n_iter"),
        (NMFConfig, {"shift": "mean"}, "shift"),
        (NMFConfig, {"tol": -1e-3}, "tol"),
    ]
    for cls, kw, word in bad:
        with pytest.raises(ConceptError, match=word) as ei:
            cls(**kw)
        assert ei.value.hint, (cls, kw)
    # wrong types: jaxtyping's hook in the tests, ConceptError without it
    for cls, kw in [(SemiNMFConfig, {"extrapolate": "yes"}), (PCAConfig, {"n_iter": 1.5}), (NMFConfig, {"tol": True})]:
        with pytest.raises((ConceptError, TypeCheckError)):
            cls(**kw)


def test_fit_params_become_the_config():
    from nnshift.concepts.methods import KMeansConfig, SemiNMFConfig

    z = hidden_like(60, 8, seed=22)
    d = nc.fit(z, k=3, method="kmeans", seed=1, n_init=2, max_iter=50)
    assert d.config == KMeansConfig(n_init=2, max_iter=50)
    assert d.params == {"activation": "inverse_distance", "init": "k-means++", "n_init": 2, "max_iter": 50, "tol": 1e-4}
    s = nc.fit(z, k=3, method="semi_nmf", relative_sparsity=0.1, max_iter=10)
    assert isinstance(s.config, SemiNMFConfig) and s.config.sparsity == pytest.approx(s.params["sparsity"])
    init = z[:3].clone()
    t = nc.fit(z, k=3, method="kmeans", init=init)
    assert t.params["init"] == "<tensor [3, 8]>" and t.config.init == "<tensor [3, 8]>"
    assert torch.allclose(t.transform(z), t.codes, atol=1e-5)  # the record of a tensor init is a valid config
    with pytest.raises(ConceptError, match="record of a tensor"):
        nc.fit(z, k=3, method="kmeans", init="<tensor [3, 8]>")


OLD_KMEANS_JSON = {
    "format_version": 1,
    "method": "kmeans",
    "params": {"activation": "neg_distance", "init": "k-means++", "n_init": 1, "max_iter": 300, "tol": 0.0001},
    "diagnostics": {"loss": [1.0], "reconstruction_error": 0.5},
    "info": {"k": 2},
}


def _write_saved(path, doc, tensors):
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "concepts.json").write_text(json.dumps(doc))
    save_file(tensors, str(path / "concepts.safetensors"))


def test_load_a_file_written_before_typed_configs(tmp_path):
    from nnshift.concepts.methods import KMeansConfig

    u = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    _write_saved(tmp_path / "old", OLD_KMEANS_JSON, {"concepts": u, "codes": torch.zeros(5, 2)})
    d = ConceptDictionary.load(tmp_path / "old")
    assert d.config == KMeansConfig(activation="neg_distance")
    z = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    # -distance to each centroid: an independent computation
    assert torch.allclose(d.transform(z), torch.tensor([[0.0, -5.0], [-5.0, 0.0]]), atol=1e-5)
    d.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "concepts.json").read_text())["doc"]["params"] == OLD_KMEANS_JSON["params"]


def test_load_checks_state_and_shapes(tmp_path):
    pca = {**OLD_KMEANS_JSON, "method": "pca", "params": {"n_iter": 6}}
    _write_saved(tmp_path / "pca", pca, {"concepts": torch.eye(3)[:2]})
    with pytest.raises(CorruptStoreError, match=r"needs its state \['mean'\]") as ei:
        ConceptDictionary.load(tmp_path / "pca")
    assert "state.mean" in ei.value.hint
    given = {**pca, "diagnostics": {"fitted": False}}  # from_concepts without mean: still loads
    _write_saved(tmp_path / "given", given, {"concepts": torch.eye(3)[:2]})
    assert ConceptDictionary.load(tmp_path / "given").k == 2
    _write_saved(tmp_path / "codes", OLD_KMEANS_JSON, {"concepts": torch.eye(3)[:2], "codes": torch.zeros(5, 3)})
    with pytest.raises(CorruptStoreError, match=r"codes have shape \(5, 3\) but there are K = 2"):
        ConceptDictionary.load(tmp_path / "codes")
    nmf = {**OLD_KMEANS_JSON, "method": "nmf", "params": {"shift": "min", "max_iter": 5, "tol": 0.0}}
    _write_saved(tmp_path / "nmf", nmf, {"concepts": torch.eye(3)[:2], "state.offset": torch.zeros(4)})
    with pytest.raises(CorruptStoreError, match="hidden size D = 3"):
        ConceptDictionary.load(tmp_path / "nmf")
    badp = {**OLD_KMEANS_JSON, "params": {"activation": "softmax"}}
    _write_saved(tmp_path / "badp", badp, {"concepts": torch.eye(3)[:2]})
    with pytest.raises(CorruptStoreError, match="activation"):
        ConceptDictionary.load(tmp_path / "badp")
    with pytest.raises((ConceptError, TypeCheckError)):
        ConceptDictionary(concepts=torch.eye(3)[:2], method="kmeans", codes=torch.zeros(4, 1))


def test_old_import_paths_still_work():
    from nnshift.concepts.methods import (  # noqa: F401
        ConceptMethod,
        FitResult,
        KMeansMethod,
        NMFMethod,
        PCAMethod,
        SemiNMFMethod,
        SparseSemiNMFMethod,
        available_methods,
        get_method,
        register_method,
    )

    assert isinstance(get_method("sparse_semi_nmf"), SemiNMFMethod)
    assert set(METHODS) <= set(available_methods())


def test_docs_tables_are_well_formed():
    """Every markdown table of docs/concepts.md has a header, a separator and rows of the same width."""
    from pathlib import Path

    lines = (Path(__file__).parents[1] / "docs" / "concepts.md").read_text().splitlines()
    tables: list[list[str]] = []
    in_code = False
    for i, line in enumerate(lines):
        in_code ^= line.startswith("```")
        if not in_code and line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            tables.append([])
        if not in_code and line.startswith("|"):
            tables[-1].append(line)
    assert len(tables) >= 4
    for t in tables:
        width = [len(r.replace("\\|", "").strip().strip("|").split("|")) for r in t]
        assert len(t) >= 3 and set(t[1].replace("|", "").strip()) <= {"-", ":"}, t[:2]
        assert len(set(width)) == 1, t[0]


def test_custom_method_with_a_typed_config(tmp_path):
    from dataclasses import dataclass

    from nnshift.concepts import MethodConfig

    @dataclass(frozen=True)
    class ScaledRowsConfig(MethodConfig):
        scale: float = 1.0

        def __post_init__(self):
            if self.scale <= 0:
                raise ConceptError(f"scale must be positive, got {self.scale}", "pass scale=1.0")

    class ScaledRows(ConceptMethod):
        name = "scaled_rows_test"
        config_class = ScaledRowsConfig

        def fit(self, z, k, seed, params):
            cfg = self.config(params)
            assert isinstance(cfg, ScaledRowsConfig)
            u = z[:k] * cfg.scale
            return FitResult(concepts=u, codes=z @ u.t(), params=cfg.to_params())

        def transform(self, concepts, z, params, state):
            return z @ concepts.t()

    assert ScaledRows.defaults == {"scale": 1.0}
    nc.register_method(ScaledRows(), overwrite=True)
    z = hidden_like(20, 5)
    d = nc.fit(z, k=2, method="scaled_rows_test", scale=3.0)
    assert d.params == {"scale": 3.0} and d.config == ScaledRowsConfig(scale=3.0)
    assert torch.allclose(d.concepts, z[:2] * 3.0)
    with pytest.raises(ConceptError, match="scale must be positive"):
        nc.fit(z, k=2, method="scaled_rows_test", scale=-1.0)
    with pytest.raises(ConceptError, match="no parameter"):
        nc.fit(z, k=2, method="scaled_rows_test", sparsity=1.0)
    d.save(tmp_path / "s")
    assert ConceptDictionary.load(tmp_path / "s").config == ScaledRowsConfig(scale=3.0)
