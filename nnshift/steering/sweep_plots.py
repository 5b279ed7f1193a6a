"""Figures of a `SweepReport` with matplotlib: the Pareto plot and heat maps over layer x alpha."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from nnshift.errors import ArgumentError

if TYPE_CHECKING:
    from nnshift.steering.sweep_report import SweepReport, SweepRow

__all__ = ["HEATMAP_METRICS", "metric_value", "plot_heatmap", "plot_pareto"]

#: metrics a heat map can show (``"accuracy:<type>"`` shows one untouched answer type's accuracy)
HEATMAP_METRICS = ("target_rate", "max_drop", "nll", "length", "toward", "away", "cider")
_LABELS = {
    "target_rate": "target rate",
    "max_drop": "max untouched accuracy drop",
    "nll": "NLL under the unsteered model (nats/token)",
    "length": "answer length (tokens)",
    "toward": "share moved toward the target",
    "away": "share moved away (anti-steerable)",
    "cider": "CIDEr-D",
}
_MARKERS = {"unsteered": "s", "steer": "o", "prompt": "^", "model": "D"}


def metric_value(row: SweepRow, metric: str) -> float:
    """A row's value of ``metric`` (NaN when it was not measured)."""
    if metric.startswith("accuracy:"):
        return float(row.untouched_accuracy.get(metric.split(":", 1)[1], math.nan))
    value = getattr(row, metric)
    return math.nan if value is None else float(value)


def _check_metric(report: SweepReport, metric: Any) -> str:
    types = {t for r in report.rows for t in r.untouched_accuracy}
    allowed = [*HEATMAP_METRICS, *(f"accuracy:{t}" for t in sorted(types))]
    if metric not in allowed:
        raise ArgumentError(f"unknown sweep metric {metric!r}", f"use one of {allowed}")
    return str(metric)


def plot_pareto(report: SweepReport, ax: Any = None) -> Any:
    """Target rate against the largest untouched accuracy drop, every row; the Pareto front joined; a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4)) if ax is None else (ax.figure, ax)
    layers = report.layers
    cmap = plt.get_cmap("viridis", max(2, len(layers)))
    for r in report.rows:
        x, y = 100 * _drop(r), 100 * r.target_rate
        if math.isnan(y):
            continue
        color = cmap(layers.index(r.layer)) if r.kind == "steer" and r.layer in layers else "black"
        ax.scatter([x], [y], marker=_MARKERS.get(r.kind, "o"), color=color, s=36, zorder=3)
        if r.kind != "steer" or r in report.pareto():
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = report.pareto()
    ax.plot([100 * _drop(r) for r in front], [100 * r.target_rate for r in front], "--", color="gray", zorder=2)
    for i, layer in enumerate(layers):
        ax.scatter([], [], color=cmap(i), marker="o", label=f"layer {layer}")
    for kind in ("unsteered", "prompt", "model"):
        if any(r.kind == kind for r in report.rows):
            ax.scatter([], [], color="black", marker=_MARKERS[kind], label=kind)
    ax.set_xlabel("largest untouched accuracy drop (points)")
    ax.set_ylabel("target rate (%)")
    ax.set_title(f"{report.target.describe()}: trade-off", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _drop(r: SweepRow) -> float:
    return 0.0 if math.isnan(r.max_drop) else r.max_drop


def plot_heatmap(report: SweepReport, metric: str = "target_rate", ax: Any = None) -> Any:
    """``metric`` over layer (rows) x alpha (columns) of the steering rows, values written in the cells; a Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    metric = _check_metric(report, metric)
    layers, alphas = report.layers, sorted(report.alphas)  # refined strengths join the grid in order
    if not layers:
        raise ArgumentError("the sweep has no steering rows to map", "run sweep() with at least one layer and alpha")
    grid = np.full((len(layers), len(alphas)), np.nan)
    for r in report.steering:
        grid[layers.index(int(r.layer or 0)), alphas.index(float(r.alpha or 0.0))] = metric_value(r, metric)
    fig, ax = (
        plt.subplots(figsize=(1.1 * len(alphas) + 2.4, 0.7 * len(layers) + 1.8)) if ax is None else (ax.figure, ax)
    )
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", aspect="auto")
    for i in range(len(layers)):
        for j in range(len(alphas)):
            if not np.isnan(grid[i, j]):
                v = grid[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v < np.nanmean(grid) else "black",
                )
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_xlabel("alpha")
    ax.set_ylabel("layer")
    base = metric_value(report.unsteered, metric)
    ax.set_title(f"{_LABELS.get(metric, metric)} (unsteered {base:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
