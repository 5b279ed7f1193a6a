"""`SweepReport`: the rows of a steering sweep (unsteered, steering at each layer x alpha, baselines), saved and read.

Each `SweepRow` holds the row's metrics and its per-sample values (over the sweep's samples, not ``keep``):
``sample_nll`` (mean NLL in nats/token of the answer under the unsteered model, NaN for an empty answer or when
fluency was not measured), ``sample_length`` (answer length in tokens), ``sample_margin`` (VQA targets: the
log-probability margin of the target answers' first tokens over the source answers' at the first answer position,
NaN for captions) and ``sample_moved`` (+1 moved toward the target, -1 moved away, 0 neither or not relevant;
see `nnshift.steering.sweep`). Saved as an artifact of kind ``sweep`` (`nnshift.artifacts`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnshift.artifacts import write_artifact
from nnshift.errors import ArtifactError, NnshiftError
from nnshift.saved import check_finite, load_saved, typed_field
from nnshift.steering.targets import Target, target_from_spec

__all__ = ["FORMAT_VERSION", "ROW_KINDS", "SweepReport", "SweepRow"]

FORMAT_VERSION = 1
_KIND = "sweep"
_REMAKE = "the file is damaged or was edited by hand: run the sweep again and save it"
#: what a row is: the model as it is, a steering point, a prompting baseline, another model
ROW_KINDS = ("unsteered", "steer", "prompt", "model")
_PER_SAMPLE = ("sample_nll", "sample_length", "sample_margin", "sample_moved")
_NAN = float("nan")


@dataclass
class SweepRow:
    """One row of a sweep: what was run (``kind``, ``name``, ``layer``, ``alpha``) and what it did.

    ``target_rate`` over ``n_relevant`` samples; ``untouched_accuracy`` per answer type (official VQA accuracy on
    the samples of types the target does not touch, plus ``keep``); ``max_drop`` = the largest drop of those
    accuracies vs the unsteered row (NaN when there is no untouched sample); ``cider`` = CIDEr-D on the caption
    samples with references (None without); ``nll`` / ``length`` = mean fluency and answer length; ``toward`` /
    ``away`` = shares of the relevant samples moved toward / away from the target.
    """

    kind: str
    name: str
    layer: int | None = None
    alpha: float | None = None
    target_rate: float = _NAN
    n_relevant: int = 0
    untouched_accuracy: dict[str, float] = field(default_factory=dict)
    max_drop: float = _NAN
    cider: float | None = None
    nll: float = _NAN
    length: float = _NAN
    toward: float = _NAN
    away: float = _NAN
    answers: list[str] = field(default_factory=list, repr=False)
    keep_answers: list[str] = field(default_factory=list, repr=False)
    sample_nll: list[float] = field(default_factory=list, repr=False)
    sample_length: list[int] = field(default_factory=list, repr=False)
    sample_margin: list[float] = field(default_factory=list, repr=False)
    sample_moved: list[int] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """A short label: ``unsteered``, ``L3 a=0.5``, or the baseline's name."""
        if self.kind == "steer":
            return f"L{self.layer} a={self.alpha:g}"
        return self.name

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-able dict (answers and per-sample values only with ``samples=True``; NaN as None)."""
        d = asdict(self)
        if not samples:
            for k in ("answers", "keep_answers", *_PER_SAMPLE):
                d.pop(k)
        return _json_safe(d)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _num(x: Any) -> float:
    return _NAN if x is None else float(x)


@dataclass
class SweepReport:
    """A steering sweep: the target, one `SweepRow` per run, the samples' ids and how it was made (``info``)."""

    target: Target
    rows: list[SweepRow]
    sample_ids: list[str]
    keep_ids: list[str] = field(default_factory=list)
    threshold: float = 0.1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def unsteered(self) -> SweepRow:
        """The unsteered row."""
        return next(r for r in self.rows if r.kind == "unsteered")

    @property
    def steering(self) -> list[SweepRow]:
        """The steering rows (layer x alpha), in grid order."""
        return [r for r in self.rows if r.kind == "steer"]

    @property
    def layers(self) -> list[int]:
        """The layers swept, in order."""
        return list(dict.fromkeys(int(r.layer) for r in self.steering if r.layer is not None))

    @property
    def alphas(self) -> list[float]:
        """The strengths swept, in order."""
        return list(dict.fromkeys(float(r.alpha) for r in self.steering if r.alpha is not None))

    def row(self, layer: int, alpha: float) -> SweepRow:
        """The steering row at ``(layer, alpha)`` (`KeyError` if it was not swept)."""
        for r in self.steering:
            if r.layer == layer and r.alpha is not None and math.isclose(r.alpha, alpha):
                return r
        raise KeyError((layer, alpha))

    def pareto(self) -> list[SweepRow]:
        """The rows on the front of target rate (higher is better) vs ``max_drop`` (lower is better), by rate.

        A row is on the front when no other row has a rate at least as high and a drop at least as low, one of
        them strictly. A NaN drop (no untouched samples) counts as 0; rows with a NaN rate are left out.
        """
        pts = [(r, r.target_rate, 0.0 if math.isnan(r.max_drop) else r.max_drop) for r in self.rows]
        pts = [p for p in pts if not math.isnan(p[1])]
        front = []
        for r, rate, drop in pts:
            dominated = any(
                (q_rate >= rate and q_drop <= drop) and (q_rate > rate or q_drop < drop) for _, q_rate, q_drop in pts
            )
            if not dominated:
                front.append((rate, r))
        return [r for _, r in sorted(front, key=lambda x: x[0])]

    def table(self) -> str:
        """The rows as a markdown table (percentages for rates and accuracies, drop in points)."""
        types = list(dict.fromkeys(t for r in self.rows for t in r.untouched_accuracy))
        head = ["row", "kind", "target rate", *[f"acc {t}" for t in types], "max drop (pts)"]
        head += ["CIDEr-D", "NLL (nats/tok)", "length", "toward", "away", "pareto"]
        front = {id(r) for r in self.pareto()}
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.label, r.kind, _pct(r.target_rate), *[_pct(r.untouched_accuracy.get(t, _NAN)) for t in types]]
            cells += [_fmt(100 * r.max_drop, "+.1f"), _fmt(r.cider, ".3f"), _fmt(r.nll, ".3f"), _fmt(r.length, ".2f")]
            cells += [_pct(r.toward), _pct(r.away), "*" if id(r) in front else ""]
            lines.append("| " + " | ".join(cells) + " |")
        title = f"{self.target.describe()}: {len(self.sample_ids)} samples"
        if self.keep_ids:
            title += f" (+ {len(self.keep_ids)} kept)"
        diag = self.info.get("diagnostics")
        if isinstance(diag, dict) and diag:
            title += "; vector diagnostics: " + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in diag.items())
        return f"{title}\n\n" + "\n".join(lines) + "\n"

    def plot_pareto(self, ax: Any = None) -> Any:
        """Target rate vs the largest untouched accuracy drop for every row, the Pareto front joined (a Figure)."""
        from nnshift.steering.sweep_plots import plot_pareto

        return plot_pareto(self, ax)

    def plot_heatmap(self, metric: str = "target_rate", ax: Any = None) -> Any:
        """A heat map of ``metric`` over layer x alpha (`sweep_plots.HEATMAP_METRICS` or ``"accuracy:<type>"``)."""
        from nnshift.steering.sweep_plots import plot_heatmap

        return plot_heatmap(self, metric, ax)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-able dict: target, rows (per-sample values with ``samples=True``), the Pareto front, info."""
        front = self.pareto()
        return _json_safe(
            {
                "target": self.target.spec(),
                "threshold": self.threshold,
                "sample_ids": list(self.sample_ids),
                "keep_ids": list(self.keep_ids),
                "rows": [r.to_dict(samples) for r in self.rows],
                "pareto": [self.rows.index(r) for r in front],
                "info": self.info,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Save as ``path/sweep.safetensors`` (per-sample values, ``[rows, samples]``) + ``path/sweep.json``."""
        tensors = {
            "nll": torch.tensor([r.sample_nll for r in self.rows], dtype=torch.float32),
            "length": torch.tensor([r.sample_length for r in self.rows], dtype=torch.int64),
            "margin": torch.tensor([r.sample_margin for r in self.rows], dtype=torch.float32),
            "moved": torch.tensor([r.sample_moved for r in self.rows], dtype=torch.int8),
        }
        tensors = {k: v.reshape(len(self.rows), len(self.sample_ids)) for k, v in tensors.items()}
        doc = self.to_dict(samples=False)
        for d, r in zip(doc["rows"], self.rows, strict=True):
            d["answers"], d["keep_answers"] = list(r.answers), list(r.keep_answers)
        return write_artifact(path, _KIND, FORMAT_VERSION, tensors, doc)

    @classmethod
    def load(cls, path: str | Path) -> SweepReport:
        """Load what `save` wrote, checking checksums, shapes and every field (`ArtifactError` otherwise)."""
        path = Path(path)
        tensors, doc, _ = load_saved(
            path, _KIND, FORMAT_VERSION, "sweep report", "pass the folder SweepReport.save wrote", finite=False
        )
        where = f"the sweep report in {str(path)!r}"
        try:
            return _from_doc(tensors, doc, where)
        except ArtifactError:
            raise
        except (NnshiftError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"{where} is invalid: {exc}", _REMAKE) from exc


def _from_doc(tensors: dict[str, torch.Tensor], doc: dict[str, Any], where: str) -> SweepReport:
    ids = typed_field(doc, "sample_ids", list, where)
    rows_doc = typed_field(doc, "rows", list, where)
    shape = [len(rows_doc), len(ids)]
    for name in ("nll", "length", "margin", "moved"):
        t = tensors.get(name)
        if t is None or list(t.shape) != shape:
            raise ArtifactError(f"{where}: tensor {name!r} is missing or not of shape {shape}", _REMAKE)
        check_finite(t, name, where, allow_nan=torch.isnan(t) if t.is_floating_point() else False)
    rows = []
    for i, d in enumerate(rows_doc):
        kind = typed_field(d, "kind", str, f"{where}, row {i}")
        if kind not in ROW_KINDS:
            raise ArtifactError(f"{where}, row {i}: unknown kind {kind!r}", _REMAKE)
        at = f"{where}, row {i}"
        rows.append(
            SweepRow(
                kind=kind,
                name=typed_field(d, "name", str, at),
                layer=typed_field(d, "layer", (int, type(None)), at, None),
                alpha=typed_field(d, "alpha", (int, float, type(None)), at, None),
                target_rate=_num(d.get("target_rate")),
                n_relevant=int(d.get("n_relevant", 0)),
                untouched_accuracy={k: _num(v) for k, v in (d.get("untouched_accuracy") or {}).items()},
                max_drop=_num(d.get("max_drop")),
                cider=d.get("cider"),
                nll=_num(d.get("nll")),
                length=_num(d.get("length")),
                toward=_num(d.get("toward")),
                away=_num(d.get("away")),
                answers=[str(a) for a in typed_field(d, "answers", list, at)],
                keep_answers=[str(a) for a in typed_field(d, "keep_answers", list, at)],
                sample_nll=tensors["nll"][i].tolist(),
                sample_length=[int(x) for x in tensors["length"][i].tolist()],
                sample_margin=tensors["margin"][i].tolist(),
                sample_moved=[int(x) for x in tensors["moved"][i].tolist()],
            )
        )
        if len(rows[-1].answers) != len(ids):
            raise ArtifactError(f"{where}, row {i}: {len(rows[-1].answers)} answers for {len(ids)} samples", _REMAKE)
    if sum(r.kind == "unsteered" for r in rows) != 1:
        raise ArtifactError(f"{where} does not have exactly one unsteered row", _REMAKE)
    return SweepReport(
        target=target_from_spec(typed_field(doc, "target", dict, where)),
        rows=rows,
        sample_ids=[str(x) for x in ids],
        keep_ids=[str(x) for x in typed_field(doc, "keep_ids", list, where, [])],
        threshold=float(typed_field(doc, "threshold", (int, float), where)),
        info=typed_field(doc, "info", dict, where, {}),
    )


def _fmt(x: float | int | None, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"
