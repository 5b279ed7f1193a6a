"""Matplotlib figures: concept grids, matching matrix, recovery, correlations, α sweeps, steering before / after.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, no GUI backend,
nothing shown): display it in a notebook, or ``fig.savefig("out.png")``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Int
from matplotlib.figure import Figure
from torch import Tensor

from nnshift.errors import ConceptError, DataFormatError, EmptyInputError, ImageReadError

if TYPE_CHECKING:
    from nnshift.shift import AlphaSweep, ShiftReport

__all__ = [
    "BeforeAfter",
    "plot_alpha_sweep",
    "plot_before_after",
    "plot_concept_comparison",
    "plot_concept_grid",
    "plot_dynamics",
    "plot_gain_vs",
    "plot_recovery",
    "plot_report_concepts",
    "plot_similarity_matrix",
]

ImageSource = Sequence[Any] | Callable[[int], Any]
"""Images of the samples, indexed by activation row: a sequence (PIL images, paths, arrays or `Sample`s) or a callable."""

_COLORS = {"original": "#7f7f7f", "shifted": "#d62728", "finetuned": "#1f77b4"}
_DYN_COLORS = {"refined": "#2ca02c", "changed": "#ff7f0e", "vanished": "#7f7f7f", "new": "#9467bd"}


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _np(t: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / list."""
    if isinstance(t, Tensor):
        return t.detach().float().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def _thumb(item: Any, size: int) -> np.ndarray:
    """An RGB ``[size, size, 3]`` float array from a PIL image, a path, an array or a `Sample`."""
    from PIL import Image

    if hasattr(item, "load_image"):
        item = item.load_image()
    if isinstance(item, (str, Path)):
        try:
            with Image.open(item) as im:
                item = im.convert("RGB")
        except OSError as exc:
            raise ImageReadError(f"cannot read image {str(item)!r}: {exc}", "pass existing image files") from exc
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
        if item.ndim == 3 and item.shape[0] in (1, 3) and item.shape[-1] not in (1, 3):
            item = item.transpose(1, 2, 0)
    if isinstance(item, np.ndarray):
        arr = item.astype(np.float64)
        arr = arr / 255.0 if arr.max() > 1.0 else arr
        item = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8).squeeze())
    if item is None:
        return np.ones((size, size, 3))
    if not isinstance(item, Image.Image):
        raise ImageReadError(f"cannot show an image of type {type(item).__name__}", "pass PIL images, paths or arrays")
    return np.asarray(item.convert("RGB").resize((size, size)), dtype=np.float64) / 255.0


def _strip(images: ImageSource, rows: Sequence[int], size: int, gap: int = 2) -> np.ndarray:
    """The thumbnails of ``rows`` side by side on a white background."""
    get = images if callable(images) else images.__getitem__
    thumbs = [_thumb(get(int(r)), size) for r in rows]
    out = np.ones((size, len(thumbs) * (size + gap) - gap, 3))
    for i, t in enumerate(thumbs):
        out[:, i * (size + gap) : i * (size + gap) + size] = t
    return out


def _words_text(words: Sequence[str] | None, max_words: int, width: int) -> str:
    if words is None:
        return "(no text grounding)"
    if not words:
        return "(no word)"
    return textwrap.fill(", ".join(list(words)[:max_words]), width=width)


def _draw_cell(
    ax: Any,
    title: str,
    words: Sequence[str] | None,
    images: ImageSource | None,
    rows: Sequence[int] | None,
    *,
    max_words: int,
    n_images: int,
    thumb: int,
    color: str = "black",
) -> None:
    """One concept: its title, a strip of top images (when given) and its grounding words."""
    ax.set_title(title, fontsize=9, color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    text = _words_text(words, max_words, width=34)
    if images is not None and rows is not None and len(rows):
        ax.imshow(_strip(images, list(rows)[:n_images], thumb))
        ax.set_xlabel(text, fontsize=8)
    else:
        for side in ax.spines.values():
            side.set_visible(False)
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes, wrap=True)


def _grid_axes(fig: Figure, n: int, ncols: int) -> list[Any]:
    nrows = max(1, math.ceil(n / ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


# ----------------------------------------------------------------------------------------------------------------------
# concept grids


def plot_concept_grid(
    words: Sequence[Sequence[str]] | None = None,
    images: ImageSource | None = None,
    mas: Int[Tensor, "k n"] | Sequence[Sequence[int]] | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int = 4,
    max_words: int = 8,
    n_images: int = 3,
    thumb: int = 64,
) -> Figure:
    """A grid of concepts: per concept its grounding words and the images of its most-activating samples."""
    rows = mas.tolist() if isinstance(mas, Tensor) else (None if mas is None else [list(r) for r in mas])
    k = len(words) if words is not None else len(rows) if rows is not None else len(labels or [])
    if k == 0:
        raise ConceptError("nothing to plot: no words, no most-activating samples, no labels", "pass at least one")
    ncols = max(1, min(ncols, k))
    nrows = math.ceil(k / ncols)
    cell_h = 1.9 if images is not None and rows is not None else 1.2
    fig = Figure(figsize=(3.2 * ncols, cell_h * nrows + (0.4 if title else 0)), layout="constrained")
    for i, ax in enumerate(_grid_axes(fig, k, ncols)):
        _draw_cell(
            ax,
            labels[i] if labels is not None else f"concept {i}",
            words[i] if words is not None else None,
            images,
            rows[i] if rows is not None else None,
            max_words=max_words,
            n_images=n_images,
            thumb=thumb,
        )
    if title:
        fig.suptitle(title)
    return fig


def plot_report_concepts(
    report: ShiftReport,
    which: str = "original",
    images: ImageSource | None = None,
    **kwargs: Any,
) -> Figure:
    """The grid of the original, shifted or fine-tuned concepts of a report (``which``), with their MAS images."""
    k = report.k
    if which == "original":
        words, mas = report.words_original, report.mas_original
        labels = [
            f"u^a {i}  (|A|={int(c)}, {d})"
            for i, (c, d) in enumerate(zip(report.counts.tolist(), report.dynamics, strict=True))
        ]
    elif which == "shifted":
        words, mas = report.words_shifted, report.mas_shifted
        labels = [
            f"u^s {i}  (cos to u^b {int(j)}: {float(r):.2f})"
            for i, (j, r) in enumerate(zip(report.matching.tolist(), report.recovery_shifted.tolist(), strict=True))
        ]
    elif which in ("finetuned", "fine-tuned"):
        new = set(report.new.tolist())
        words, mas = report.words_finetuned, report.mas_finetuned
        labels = [f"u^b {j}" + ("  (new)" if j in new else "") for j in range(k)]
    else:
        raise ConceptError(f"unknown concept set {which!r}", "use 'original', 'shifted' or 'finetuned'")
    return plot_concept_grid(words, images, mas, labels=labels, title=f"{which} concepts", **kwargs)


def plot_concept_comparison(
    report: ShiftReport,
    images: ImageSource | None = None,
    concepts: Sequence[int] | None = None,
    *,
    max_words: int = 8,
    n_images: int = 3,
    thumb: int = 56,
) -> Figure:
    """One row per original concept k: u^a_k | u^s_k | its matched fine-tuned concept u^b_{m(k)}, side by side."""
    idx = list(range(report.k)) if concepts is None else [int(i) for i in concepts]
    if not idx:
        raise ConceptError("no concept selected", "pass concepts=None for all, or a non-empty list")
    cell_h = 1.8 if images is not None else 1.15
    fig = Figure(figsize=(10.5, cell_h * len(idx) + 0.5), layout="constrained")
    axes = fig.subplots(len(idx), 3, squeeze=False)
    t_o, t_s = report.t_overlap_original, report.t_overlap_shifted
    for row, k in enumerate(idx):
        j = int(report.matching[k])
        extra_o = f", T {float(t_o[k]):.0f}%" if t_o is not None else ""
        extra_s = f", T {float(t_s[k]):.0f}%" if t_s is not None else ""
        cells = [
            (f"u^a {k} [{report.dynamics[k]}] cos {float(report.recovery_original[k]):.2f}{extra_o}",
             report.words_original, report.mas_original[k], "original"),
            (f"u^s {k}  cos {float(report.recovery_shifted[k]):.2f}{extra_s}",
             report.words_shifted, report.mas_shifted[k], "shifted"),
            (f"u^b {j} (matched)", report.words_finetuned, report.mas_finetuned[j], "finetuned"),
        ]  # fmt: skip
        for col, (title, words, mas, kind) in enumerate(cells):
            _draw_cell(
                axes[row, col],
                title,
                None if words is None else words[j if kind == "finetuned" else k],
                images,
                mas.tolist(),
                max_words=max_words,
                n_images=n_images,
                thumb=thumb,
                color=_COLORS[kind],
            )
    fig.suptitle(f"original → shifted (α = {report.alpha:g}) → fine-tuned concepts")
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# matching, recovery, correlations, dynamics


def plot_similarity_matrix(report: ShiftReport, reorder: bool = True) -> Figure:
    """Cosine matrix ``S_ij = cos(u^a_i, u^b_j)``; columns ordered by the matching so matched pairs lie on the diagonal.

    Squares mark the bijective (Hungarian) matching, dots the greedy nearest fine-tuned concept.
    """
    s = _np(report.similarity)
    k = s.shape[0]
    order = report.matching.cpu().numpy() if reorder else np.arange(k)
    col_of = np.empty(k, dtype=int)
    col_of[order] = np.arange(k)  # fine-tuned concept j is drawn in column col_of[j]
    fig = Figure(figsize=(2.0 + 0.34 * k, 1.4 + 0.34 * k), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(s[:, order], cmap="viridis", vmin=min(0.0, float(s.min())), vmax=1.0)
    fig.colorbar(im, ax=ax, label="cosine similarity", shrink=0.8)
    ax.set_xticks(range(k), [str(j) for j in order], fontsize=7)
    ax.set_yticks(range(k), [str(i) for i in range(k)], fontsize=7)
    ax.set_xlabel("fine-tuned concept j" + (" (ordered by matching)" if reorder else ""))
    ax.set_ylabel("original concept i")
    match = report.matching.cpu().numpy()
    greedy = report.greedy_matching.cpu().numpy()
    ax.scatter(col_of[match], np.arange(k), marker="s", s=70, facecolors="none", edgecolors="red", label="Hungarian")
    ax.scatter(col_of[greedy], np.arange(k), marker="o", s=12, color="white", edgecolors="black", label="greedy")
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    ax.set_title("cos(u^a_i, u^b_j)")
    return fig


def _recovery_pair(report: ShiftReport, metric: str) -> tuple[np.ndarray, np.ndarray, str]:
    if metric == "cosine":
        return _np(report.recovery_original), _np(report.recovery_shifted), "cosine with matched u^b"
    if metric == "mas":
        return _np(report.mas_overlap_original), _np(report.mas_overlap_shifted), "MAS overlap with matched u^b (%)"
    if metric in ("t_overlap", "text"):
        if report.t_overlap_original is None or report.t_overlap_shifted is None:
            raise ConceptError(
                "this report has no text grounding, so no T-Overlap",
                "run ns.shift.analyze(..., vlm=model) (or ground=...) to ground the concepts in words",
            )
        return _np(report.t_overlap_original), _np(report.t_overlap_shifted), "T-Overlap with matched u^b (%)"
    raise ConceptError(f"unknown recovery metric {metric!r}", "use 'cosine', 't_overlap' or 'mas'")


def plot_recovery(report: ShiftReport, metric: str = "cosine") -> Figure:
    """Per concept: similarity of the original vs the shifted concept to its matched fine-tuned concept."""
    orig, shifted, ylabel = _recovery_pair(report, metric)
    k = len(orig)
    x = np.arange(k)
    fig = Figure(figsize=(max(5.0, 0.42 * k + 1.5), 3.4), layout="constrained")
    ax = fig.subplots()
    w = 0.4
    ax.bar(x - w / 2, orig, w, color=_COLORS["original"], label=f"original u^a (mean {np.nanmean(orig):.3g})")
    ax.bar(x + w / 2, shifted, w, color=_COLORS["shifted"], label=f"shifted u^s (mean {np.nanmean(shifted):.3g})")
    for e in report.empty.cpu().tolist():
        ax.axvspan(e - 0.5, e + 0.5, color="0.9", zorder=0)
    ax.set_xticks(x, [str(i) for i in range(k)], fontsize=7)
    ax.set_xlabel("original concept k (grey: no sample assigned)")
    ax.set_ylabel(ylabel)
    if metric == "cosine":
        lo = float(np.nanmin(np.concatenate([orig, shifted])))
        ax.set_ylim(min(0.0, lo - 0.05), 1.02)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"concept recovery (α = {report.alpha:g})")
    return fig


_AGAINST = {
    "consistency": ("consistency", "shift consistency (mean cos(δ_m, Δ_k))"),
    "pairwise_consistency": ("pairwise_consistency", "pairwise consistency (mean cos(δ_m, δ_m'))"),
    "magnitude": ("magnitude", "shift magnitude ‖Δ_k‖"),
    "mean_sample_shift": ("mean_sample_shift", "mean sample shift ‖δ_m‖"),
}


def plot_gain_vs(
    report: ShiftReport, against: Sequence[str] = ("consistency", "magnitude"), metric: str = "cosine"
) -> Figure:
    """Scatter of the recovery gain (shifted − original) against consistency / magnitude, with Pearson r and p."""
    from nnshift.shift import correlation

    orig, shifted, ylabel = _recovery_pair(report, metric)
    gain = shifted - orig
    keep = _np(report.counts) > 0
    fig = Figure(figsize=(3.8 * len(against), 3.4), layout="constrained")
    axes = fig.subplots(1, len(against), squeeze=False)[0]
    for ax, name in zip(axes, against, strict=True):
        if name not in _AGAINST:
            raise ConceptError(f"unknown quantity {name!r}", f"use one of {sorted(_AGAINST)}")
        attr, label = _AGAINST[name]
        x = _np(getattr(report, attr))
        ok = keep & np.isfinite(x) & np.isfinite(gain)
        ax.scatter(x[ok], gain[ok], color=_COLORS["shifted"], s=22, zorder=3)
        for i in np.flatnonzero(ok):
            ax.annotate(str(i), (x[i], gain[i]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        c = correlation(x[ok], gain[ok])
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            slope, icpt = np.polyfit(x[ok], gain[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 2)
            ax.plot(xs, slope * xs + icpt, color="black", lw=1, ls="--")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"recovery gain ({ylabel.split(' with')[0]})")
        ax.set_title(f"r = {c['r']:.2f}, p = {c['p']:.2g}, n = {c['n']}", fontsize=9)
    return fig


def plot_dynamics(report: ShiftReport) -> Figure:
    """Counts of refined / changed / vanished original concepts and of new fine-tuned concepts."""
    names = ["refined", "changed", "vanished", "new"]
    counts = [report.dynamics.count(n) for n in names[:3]] + [int(report.new.numel())]
    fig = Figure(figsize=(4.2, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(names, counts, color=[_DYN_COLORS[n] for n in names])
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom", fontsize=8)
    th = report.thresholds
    ax.set_title(
        f"concept dynamics (τ_refined {th.tau_refined:g}, τ_vanish {th.tau_vanish:g}, τ_new {th.tau_new:g})",
        fontsize=8,
    )
    ax.set_ylabel("concepts")
    return fig


def plot_alpha_sweep(sweep: AlphaSweep, title: str | None = None) -> Figure:
    """Mean (± std over concepts) recovery of ``u^a + α Δ`` vs α; T-Overlap and task-keyword overlap when grounded."""
    alphas = _np(sweep.alphas)
    panels = 1 + int(sweep.t_overlap is not None or sweep.keyword_overlap is not None)
    fig = Figure(figsize=(4.2 * panels, 3.3), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]

    def band(ax: Any, values: Tensor, label: str, color: str) -> None:
        v = _np(values)
        mean, std = np.nanmean(v, axis=1), np.nanstd(v, axis=1)
        ax.plot(alphas, mean, marker="o", ms=3, color=color, label=label)
        ax.fill_between(alphas, mean - std, mean + std, color=color, alpha=0.15)

    band(axes[0], sweep.recovery, "cosine with matched u^b", _COLORS["shifted"])
    axes[0].set_ylabel("concept recovery (cosine)")
    if panels == 2:
        if sweep.t_overlap is not None:
            band(axes[1], sweep.t_overlap, "T-Overlap with matched u^b", _COLORS["finetuned"])
        if sweep.keyword_overlap is not None:
            band(axes[1], sweep.keyword_overlap, f"overlap with task keywords ({len(sweep.keywords)})", "#2ca02c")
        axes[1].set_ylabel("overlap (%)")
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("α  (u^s = u^a + α Δ; α = 0 is the original model)")
        ax.axvline(0.0, color="0.7", lw=0.8)
        if alphas.min() <= 1.0 <= alphas.max():
            ax.axvline(1.0, color="0.7", lw=0.8, ls="--")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# steering


@dataclass(frozen=True)
class BeforeAfter:
    """One panel of `plot_before_after`: a value per label, unsteered and steered."""

    title: str
    labels: Sequence[str]
    before: Sequence[float]
    after: Sequence[float]
    ylabel: str = "share"


def plot_before_after(panels: Sequence[BeforeAfter], ncols: int | None = None) -> Figure:
    """Grouped bars, unsteered vs steered, one panel per `BeforeAfter` (values written on the bars)."""
    if not panels:
        raise EmptyInputError("no panels to plot", "pass at least one BeforeAfter")
    for p in panels:
        if not (len(p.labels) == len(p.before) == len(p.after)) or not p.labels:
            raise DataFormatError(
                f"panel {p.title!r} has {len(p.labels)} labels, {len(p.before)} before and {len(p.after)} after values",
                "give one before and one after value per label",
            )
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.3 * ncols, 3.1 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, p in zip(axes, panels, strict=False):
        x = np.arange(len(p.labels))
        for off, vals, name, color in ((-0.2, p.before, "unsteered", "#8e8e93"), (0.2, p.after, "steered", "#0a84ff")):
            bars = ax.bar(x + off, vals, 0.4, label=name, color=color)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7, padding=1)
        ax.set_xticks(x, list(p.labels), rotation=15, fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(p.title, 34)), fontsize=9)
        ax.set_ylabel(p.ylabel)
        top = max([*p.before, *p.after, 1e-9])
        ax.set_ylim(0, max(1.0, top) * 1.15 if top <= 1.0 else top * 1.15)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=2, fontsize=8, frameon=False)
    return fig
