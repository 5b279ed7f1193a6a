"""`calibrate`: choose a layer and strength on a validation split, then measure them on held-out samples only.

The samples (and ``keep``) are split by a seeded permutation into validation (a ``split`` share) and held-out.
`sweep` runs on validation; the chosen point is the ``(layer, alpha)`` with the highest target rate whose largest
drop of untouched accuracy is at most ``max_untouched_drop`` (ties: the smaller alpha, then the earlier layer).
If no point meets the constraint, ``met`` is False, a warning says so, and the least damaging point is chosen (the
smallest drop; ties: the higher rate, then the smaller alpha).

Refinement (``refine`` > 0): a grid brackets the selective window only coarsely, so a second validation sweep
tries ``refine`` evenly spaced strengths at the chosen layer strictly between the chosen alpha and the next grid
alpha beyond it (same sign, larger magnitude; none when the chosen alpha is the last), or, when no point met the
constraint, between 0 and the chosen alpha. The rule above then chooses again among all validation rows (the
refined rows are added to ``Calibration.validation``; its ``info["refine"]`` says what was tried). The chosen
point and the unsteered model are then run on the held-out samples, which played no part in the choice.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnshift.artifacts import write_artifact
from nnshift.data import Sample
from nnshift.errors import ArgumentError, ArtifactError
from nnshift.models.protocol import VLMLike
from nnshift.options import Remote, RunOptions, run_options
from nnshift.positions import SelectorLike
from nnshift.saved import load_saved, typed_field
from nnshift.steering.patches import Patch
from nnshift.steering.sweep_args import check_sweep_args
from nnshift.steering.sweep_report import SweepReport, SweepRow
from nnshift.steering.sweeps import DEFAULT_ALPHAS, sweep
from nnshift.steering.targets import Target, sample_task, sample_type
from nnshift.steering.vectors import SteeringVector

__all__ = ["DEFAULT_REFINE", "Calibration", "calibrate", "choose_point", "refine_alphas", "split_samples"]

_KIND = "calibration"
_VERSION = 1
_REMAKE = "the file is damaged or was edited by hand: run calibrate again and save it"
#: strengths tried between the chosen grid alpha and the next one (see the module docstring)
DEFAULT_REFINE = 3


@dataclass
class Calibration:
    """A calibrated steering point: ``layer``, ``alpha``, whether it met the constraint, and the evidence.

    ``validation``: the sweep the point was chosen on; ``held_out``: the unsteered model and the chosen point on
    the held-out samples (never used to choose); ``patch``: the `Patch` at the chosen point.
    """

    layer: int
    alpha: float
    met: bool
    max_untouched_drop: float
    validation: SweepReport
    held_out: SweepReport
    patch: Patch = field(repr=False)
    split: float = 0.5
    seed: int = 0

    @property
    def chosen(self) -> SweepRow:
        """The chosen row on validation."""
        return self.validation.row(self.layer, self.alpha)

    @property
    def held_out_row(self) -> SweepRow:
        """The chosen point on the held-out samples."""
        return self.held_out.row(self.layer, self.alpha)

    @property
    def held_out_unsteered(self) -> SweepRow:
        """The unsteered model on the held-out samples."""
        return self.held_out.unsteered

    def summary(self) -> str:
        """One line: the point, whether it met the constraint, and its held-out target rate and drop."""
        h = self.held_out_row
        status = "meets" if self.met else "NO point met"
        return (
            f"layer {self.layer}, alpha {self.alpha:g} ({status} the max untouched drop {self.max_untouched_drop:g} "
            f"on validation): held-out target rate {h.target_rate:.1%} (unsteered {self.held_out_unsteered.target_rate:.1%}),"
            f" untouched drop {_pts(h.max_drop)} points"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the point, the constraint, both reports."""
        return {
            "layer": self.layer,
            "alpha": self.alpha,
            "met": self.met,
            "max_untouched_drop": self.max_untouched_drop,
            "split": self.split,
            "seed": self.seed,
            "validation": self.validation.to_dict(),
            "held_out": self.held_out.to_dict(),
            "patch": self.patch.spec(),
        }

    def save(self, path: str | Path) -> Path:
        """Save as ``path/calibration.{json,safetensors}`` + ``validation/``, ``held_out/`` and ``patch/`` folders."""
        path = Path(path)
        self.validation.save(path / "validation")
        self.held_out.save(path / "held_out")
        self.patch.save(path / "patch")
        doc = {k: getattr(self, k) for k in ("layer", "alpha", "met", "max_untouched_drop", "split", "seed")}
        point = torch.tensor([float(self.layer), float(self.alpha)])
        return write_artifact(path, _KIND, _VERSION, {"point": point}, doc)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Load what `save` wrote (every part checked; `ArtifactError` otherwise)."""
        path = Path(path)
        tensors, doc, _ = load_saved(path, _KIND, _VERSION, "calibration", "pass the folder Calibration.save wrote")
        where = f"the calibration in {str(path)!r}"
        layer = typed_field(doc, "layer", int, where)
        alpha = float(typed_field(doc, "alpha", (int, float), where))
        if tensors["point"].tolist() != [float(layer), alpha]:
            raise ArtifactError(f"{where}: the point tensor disagrees with the document", _REMAKE)
        patch = Patch.load(path / "patch")
        if patch.layer != layer or not isinstance(patch.alpha, float) or not math.isclose(patch.alpha, alpha):
            raise ArtifactError(f"{where}: the saved patch is not at layer {layer}, alpha {alpha:g}", _REMAKE)
        return cls(
            layer=layer,
            alpha=alpha,
            met=typed_field(doc, "met", bool, where),
            max_untouched_drop=float(typed_field(doc, "max_untouched_drop", (int, float), where)),
            validation=SweepReport.load(path / "validation"),
            held_out=SweepReport.load(path / "held_out"),
            patch=patch,
            split=float(typed_field(doc, "split", (int, float), where)),
            seed=typed_field(doc, "seed", int, where),
        )


def _pts(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}"


def split_samples(samples: Sequence[Sample], split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(validation, held-out): a seeded permutation, the first ``round(split * n)`` (at least 1, at most n - 1)."""
    n = len(samples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(round(split * n), 1), n - 1)
    val = sorted(order[:k])
    held = sorted(order[k:])
    return [samples[i] for i in val], [samples[i] for i in held]


def choose_point(report: SweepReport, max_untouched_drop: float) -> tuple[SweepRow, bool]:
    """The calibrated steering row of a validation sweep and whether it met the constraint (see the module doc)."""
    layers = report.layers
    rows = [r for r in report.steering if not math.isnan(r.target_rate) and not math.isnan(r.max_drop)]
    if not rows:
        raise ArgumentError("no steering row has a measured target rate and untouched drop", _MEASURE_HINT)

    def order(r: SweepRow) -> tuple[float, int]:
        return (float(r.alpha or 0.0), layers.index(int(r.layer or 0)))

    ok = [r for r in rows if r.max_drop <= max_untouched_drop + 1e-12]
    if ok:
        best = max(ok, key=lambda r: (r.target_rate, *(-x for x in order(r))))
        return best, True
    least = min(rows, key=lambda r: (r.max_drop, -r.target_rate, *order(r)))
    return least, False


_MEASURE_HINT = "pass samples of an answer type the target does not touch, or keep= questions whose accuracy to keep"


def refine_alphas(report: SweepReport, row: SweepRow, met: bool, n: int) -> list[float]:
    """The ``n`` strengths a refinement tries at ``row``'s layer (see the module docstring); [] when none apply."""
    alpha = float(row.alpha or 0.0)
    if n <= 0 or alpha == 0.0 or (met and row.target_rate >= 1.0):  # a full rate within the limit: nothing to gain
        return []
    if met:
        sign = math.copysign(1.0, alpha)
        at_layer = [float(r.alpha) for r in report.steering if r.layer == row.layer and r.alpha is not None]
        beyond = [a for a in at_layer if a * sign > alpha * sign]
        if not beyond:
            return []
        lo, hi = alpha, min(beyond, key=lambda a: abs(a - alpha))
    else:
        lo, hi = 0.0, alpha
    done = [float(r.alpha) for r in report.steering if r.layer == row.layer and r.alpha is not None]
    points = [round(lo + (hi - lo) * i / (n + 1), 6) for i in range(1, n + 1)]
    return [a for a in dict.fromkeys(points) if a != 0.0 and not any(math.isclose(a, d) for d in done)]


def _merge(report: SweepReport, extra: SweepReport, layer: int, tried: list[float]) -> SweepReport:
    """``report`` with the steering rows of ``extra`` (a refinement at ``layer``) added, rows in (layer, alpha) order."""
    order = report.layers
    steer = sorted([*report.steering, *extra.steering], key=lambda r: (order.index(int(r.layer or 0)), r.alpha or 0.0))
    info = {**report.info, "refine": {"layer": layer, "alphas": tried}}
    rows = [r for r in report.rows if r.kind != "steer"] + steer
    return dataclasses.replace(report, rows=rows, info=info)


def _check_calibrate(max_untouched_drop: Any, split: Any, seed: Any, refine: Any = 0) -> float:
    if (
        isinstance(max_untouched_drop, bool)
        or not isinstance(max_untouched_drop, (int, float))
        or not math.isfinite(max_untouched_drop)
        or max_untouched_drop < 0
    ):
        raise ArgumentError(
            f"max_untouched_drop must be a finite number >= 0, got {max_untouched_drop!r}",
            "pass e.g. max_untouched_drop=0.02 (2 points of accuracy)",
        )
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split < 1:
        raise ArgumentError(f"split must be a number in (0, 1), got {split!r}", "pass e.g. split=0.5")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ArgumentError(f"seed must be an integer >= 0, got {seed!r}", "pass e.g. seed=0")
    if isinstance(refine, bool) or not isinstance(refine, int) or not 0 <= refine <= 20:
        raise ArgumentError(f"refine must be an integer in [0, 20], got {refine!r}", "pass e.g. refine=3 (0: off)")
    return float(max_untouched_drop)


def _check_measurable(target: Target, samples: Sequence[Sample], keep: Sequence[Sample], part: str) -> None:
    """The untouched accuracy can be measured on ``part``: an untouched-type VQA sample or a VQA keep sample."""
    if any(sample_task(s) == "vqa" for s in keep):
        return
    if any(sample_task(s) == "vqa" and sample_type(s) not in target.touched_types for s in samples):
        return
    raise ArgumentError(f"the {part} samples have no question whose accuracy the target leaves alone", _MEASURE_HINT)


def calibrate(
    vlm: VLMLike,
    vector_or_patch: SteeringVector | Patch | Mapping[int, SteeringVector],
    samples: Sequence[Sample],
    *,
    target: Target,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    layers: Sequence[int] | None = None,
    max_untouched_drop: float = 0.02,
    split: float = 0.5,
    seed: int = 0,
    refine: int = DEFAULT_REFINE,
    keep: Sequence[Sample] | None = None,
    positions: SelectorLike | None = None,
    fluency: bool = True,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool | None = None,
    remote: Remote | None = None,
    options: RunOptions | None = None,
) -> Calibration:
    """Choose ``(layer, alpha)`` on a validation split under ``max_untouched_drop``; measure it on held-out samples.

    ``samples`` and ``keep`` are split with ``seed`` (``split`` = the validation share); ``refine``: strengths
    tried, on validation, between the chosen grid alpha and the next (0: none); the other arguments are those
    of `sweep`. Every argument, and both halves, are checked before any model call. See the module docstring
    for the rule; when no point meets the constraint, ``Calibration.met`` is False and a warning is issued.
    """
    limit = _check_calibrate(max_untouched_drop, split, seed, refine)
    opts = run_options(options, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, remote=remote)
    full = check_sweep_args(
        vlm, vector_or_patch, samples, target, alphas, layers, positions, keep, None, None, fluency, True
    )
    if len(full.samples) < 2:
        raise ArgumentError(f"calibrate needs at least 2 samples, got {len(full.samples)}", "pass more samples")
    val, held = split_samples(full.samples, split, seed)
    if len(full.keep) == 1:
        raise ArgumentError("keep has 1 sample: it cannot be split into validation and held-out", "keep 2 or more")
    keep_val, keep_held = split_samples(full.keep, split, seed) if full.keep else ([], [])
    for part, (ss, kk) in (("validation", (val, keep_val)), ("held-out", (held, keep_held))):
        check_sweep_args(
            vlm, full.vectors, ss, target, full.alphas, full.layers, full.positions, kk, None, None, fluency, True
        )
        _check_measurable(target, ss, kk, part)
    common: dict[str, Any] = {"target": target, "positions": full.positions, "fluency": fluency, "options": opts}
    # a Patch goes through as it is (its op / value / gate apply at every point); vectors as {layer: vector}
    source = vector_or_patch if isinstance(vector_or_patch, Patch) else full.vectors
    report = sweep(vlm, source, val, alphas=full.alphas, layers=full.layers, keep=keep_val, **common)
    row, met = choose_point(report, limit)
    tried = refine_alphas(report, row, met, refine)
    if tried:
        at = int(row.layer or 0)
        src = vector_or_patch if isinstance(vector_or_patch, Patch) else {at: full.vectors[at]}
        extra = sweep(vlm, src, val, alphas=tried, layers=[at], keep=keep_val, **common)
        report = _merge(report, extra, at, tried)
        row, met = choose_point(report, limit)
    layer, alpha = int(row.layer or 0), float(row.alpha or 0.0)
    if not met:
        warnings.warn(
            f"calibrate: no (layer, alpha) keeps the untouched accuracy within {limit:g} on validation; "
            f"the least damaging point (layer {layer}, alpha {alpha:g}, drop {_pts(row.max_drop)} points) is returned"
            " with met=False",
            stacklevel=2,
        )
    held_source = vector_or_patch if isinstance(vector_or_patch, Patch) else {layer: full.vectors[layer]}
    held_report = sweep(vlm, held_source, held, alphas=[alpha], layers=[layer], keep=keep_held, **common)
    patch = full.patch(layer, alpha)
    return Calibration(layer, alpha, met, limit, report, held_report, patch, float(split), seed)
