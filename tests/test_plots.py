"""nnshift.plots: every figure builds without pyplot, shows the report's numbers, and saves to PNG."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from nnshift import plots, shift
from nnshift.concepts import ConceptDictionary
from nnshift.data import Sample
from nnshift.errors import ConceptError


def make_dico(u: torch.Tensor):
    """A k-means dictionary with the given centroids (activations 1/(1+distance))."""
    return ConceptDictionary.from_concepts(u, method="kmeans")


K, M, D = 6, 48, 8


def _ground(u):
    w = torch.randn(30, u.shape[1], generator=torch.Generator().manual_seed(0))
    return [[f"word{i}" for i in row] for row in (u.float() @ w.T).topk(5, dim=1).indices.tolist()]


@pytest.fixture(scope="module")
def world():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(K, D, generator=g)
    lab = torch.arange(M) % (K - 1)
    a = centres[lab] + 0.5 * torch.randn(M, D, generator=g)
    b = a + torch.randn(K, D, generator=g)[lab] + 0.3 * torch.randn(M, D, generator=g)
    u_a = centres.clone()
    u_a[-1] += 50.0  # an empty concept
    u_b = (centres + torch.randn(K, D, generator=g))[torch.randperm(K, generator=g)]
    grounded = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), ground=_ground, n_mas=4)
    plain = shift.analyze(a, b, make_dico(u_a), make_dico(u_b), n_mas=4)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(M)]
    return grounded, plain, images


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    return data


def test_no_pyplot_state(world):
    grounded, _, images = world
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = [
        plots.plot_similarity_matrix(grounded),
        plots.plot_recovery(grounded),
        plots.plot_concept_comparison(grounded, images),
        plots.plot_alpha_sweep(grounded.alpha_sweep([0, 1])),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert plt.get_fignums() == before  # built without pyplot: nothing to close, nothing shown
    assert matplotlib.get_backend()  # untouched, whatever it is


def test_similarity_matrix_shows_matched_pairs_on_the_diagonal(world):
    rep = world[0]
    fig = plots.plot_similarity_matrix(rep)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    expect = rep.similarity[:, rep.matching].numpy()
    np.testing.assert_allclose(shown, expect, rtol=1e-6)
    hung, greedy = fig.axes[0].collections[:2]
    np.testing.assert_array_equal(hung.get_offsets()[:, 0], np.arange(K))  # matched pairs on the diagonal
    col_of = torch.argsort(rep.matching).numpy()
    np.testing.assert_array_equal(greedy.get_offsets()[:, 0], col_of[rep.greedy_matching.numpy()])
    raw = plots.plot_similarity_matrix(rep, reorder=False)
    np.testing.assert_allclose(np.asarray(raw.axes[0].images[0].get_array()), rep.similarity.numpy(), rtol=1e-6)
    _png(fig)


@pytest.mark.parametrize("metric", ["cosine", "mas", "t_overlap"])
def test_recovery_bars(world, metric):
    rep = world[0]
    fig = plots.plot_recovery(rep, metric)
    bars = fig.axes[0].patches
    heights = np.array([p.get_height() for p in bars])
    orig, shifted = {
        "cosine": (rep.recovery_original, rep.recovery_shifted),
        "mas": (rep.mas_overlap_original, rep.mas_overlap_shifted),
        "t_overlap": (rep.t_overlap_original, rep.t_overlap_shifted),
    }[metric]
    np.testing.assert_allclose(heights[:K], orig.numpy(), rtol=1e-6)
    np.testing.assert_allclose(heights[K : 2 * K], shifted.numpy(), rtol=1e-6)
    _png(fig)


def test_recovery_without_grounding_says_what_to_do(world):
    with pytest.raises(ConceptError, match="no text grounding") as info:
        plots.plot_recovery(world[1], "t_overlap")
    assert "vlm" in info.value.hint
    with pytest.raises(ConceptError, match="unknown recovery metric"):
        plots.plot_recovery(world[1], "l2")


def test_gain_vs_consistency_and_magnitude(world):
    rep = world[0]
    fig = plots.plot_gain_vs(rep, against=("consistency", "magnitude", "pairwise_consistency"))
    assert len(fig.axes) == 3
    nonempty = (rep.counts > 0).numpy()
    gain = rep.recovery_gain.numpy()[nonempty]
    for ax, name in zip(fig.axes, ("consistency", "magnitude", "pairwise_consistency"), strict=True):
        pts = ax.collections[0].get_offsets()
        np.testing.assert_allclose(pts[:, 0], getattr(rep, name).numpy()[nonempty], rtol=1e-6)
        np.testing.assert_allclose(pts[:, 1], gain, rtol=1e-5, atol=1e-7)
    r = shift.correlation(rep.consistency[rep.counts > 0], rep.recovery_gain[rep.counts > 0])["r"]
    assert f"r = {r:.2f}" in fig.axes[0].get_title()
    _png(plots.plot_gain_vs(rep, against=("magnitude",), metric="t_overlap"))
    with pytest.raises(ConceptError, match="unknown quantity"):
        plots.plot_gain_vs(rep, against=("speed",))


def test_alpha_sweep_plot(world):
    rep = world[0]
    sw = rep.alpha_sweep([0.0, 0.5, 1.0, 1.5], keywords=["word1", "word2", "word3"])
    fig = plots.plot_alpha_sweep(sw, title="sweep")
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), sw.mean_recovery.numpy(), rtol=1e-6)
    assert len(fig.axes[1].lines) >= 2  # T-Overlap and keyword overlap
    plain = plots.plot_alpha_sweep(world[1].alpha_sweep([0.0, 1.0]))
    assert len(plain.axes) == 1
    _png(fig)


def test_concept_grids_with_images_paths_and_samples(world, tmp_path):
    rep, plain, images = world
    fig = plots.plot_concept_comparison(rep, images, concepts=[0, 1])
    assert len(fig.axes) == 6
    assert sum(len(ax.images) for ax in fig.axes) == 6
    first = fig.axes[2]
    j = int(rep.matching[0])
    assert first.get_title().startswith(f"u^b {j}") and "word" in first.get_xlabel()
    _png(fig)
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"{i}.png"
        im.save(p)
        paths.append(p)
    for which, src in (
        ("original", paths),
        ("shifted", [Sample(id=str(i), prompt="", image=p) for i, p in enumerate(paths)]),
        ("finetuned", images),
    ):
        g = plots.plot_report_concepts(rep, which, src, ncols=3)
        assert sum(ax.get_visible() for ax in g.axes) == K
        assert sum(len(ax.images) for ax in g.axes) == K
        _png(g)
    no_img = plots.plot_report_concepts(plain, "original")  # no groundings, no images: text cells only
    assert "(no text grounding)" in [t.get_text() for t in no_img.axes[0].texts]
    with pytest.raises(ConceptError, match="unknown concept set"):
        plots.plot_report_concepts(rep, "other")


def test_concept_grid_generic_and_dynamics(world):
    words = [["a", "b"], [], ["c"]]
    fig = plots.plot_concept_grid(words, labels=["x", "y", "z"], ncols=2, title="t")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["x", "y", "z"]
    assert visible[1].texts[0].get_text() == "(no word)"
    with pytest.raises(ConceptError):
        plots.plot_concept_grid()
    rep = world[0]
    dyn = plots.plot_dynamics(rep)
    heights = [p.get_height() for p in dyn.axes[0].patches]
    assert heights == [rep.dynamics.count(n) for n in ("refined", "changed", "vanished")] + [rep.new.numel()]
    _png(dyn)


def test_before_after_bars_show_both_runs():
    import pytest

    from nnshift.errors import DataFormatError, EmptyInputError
    from nnshift.plots import BeforeAfter, plot_before_after

    panels = [
        BeforeAfter("effect", ["number"], [0.0], [0.92]),
        BeforeAfter("untouched accuracy", ["other", "number"], [0.99, 1.0], [0.985, 1.0], "accuracy"),
    ]
    fig = plot_before_after(panels, ncols=3)
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 2
    heights = [round(p.get_height(), 3) for p in axes[1].patches]
    assert heights == [0.99, 1.0, 0.985, 1.0]  # unsteered bars, then steered bars
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["unsteered", "steered"]
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["other", "number"]
    with pytest.raises(EmptyInputError):
        plot_before_after([])
    with pytest.raises(DataFormatError):
        plot_before_after([BeforeAfter("x", ["a"], [0.1, 0.2], [0.3])])
