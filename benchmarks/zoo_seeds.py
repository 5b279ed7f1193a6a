"""Robustness of the shapes-world findings over training seeds (issue 17): the zoo trained with seeds 0, 1, 2.

The shipped zoo is seed 0; other seeds are trained with ``python -m nnshift.zoo.train --out DIR --seed S``
(about 50 min each on one core). For each zoo folder this measures the main findings with the same code
as the docs:

- held-out quality (`nnshift.zoo.evaluate.quality_report`, 300 samples);
- the fine-tuning shift shapes-base -> shapes-colors (TOI "circle", last layer, K = 20, 400 generic
  captions, as in benchmarks/shapes_shift.py): mean recovery original / shifted, the gain, the share of
  concepts recovered, the alpha of the peak of the mean recovery, and the correlations of the gain with
  consistency and with magnitude;
- each steering target at its calibrated point (`ns.steering.calibrate`, max untouched drop 0.02, vectors
  and samples as in benchmarks/steering_sweep.py): the chosen layer and alpha, and the held-out target rate
  and untouched drop.

    python benchmarks/zoo_seeds.py --zoo 0=shipped --zoo 1=/tmp/zoo-seed1 --zoo 2=/tmp/zoo-seed2 \\
        --out benchmarks/results/zoo_seeds
    python benchmarks/zoo_seeds.py --out benchmarks/results/zoo_seeds --summary-only --update-docs

The summary (mean and spread over seeds) is written to ``summary.json`` and, with ``--update-docs``, to the
table between the ``zoo-seeds`` markers of docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steering_sweep as sw  # the same vectors and samples as the steering benchmark

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "zoo.md"
BEGIN, END = "<!-- zoo-seeds:begin -->", "<!-- zoo-seeds:end -->"
SWEEP_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
TARGETS = ("yesno_to_number", "yes_to_no", "caption_style")


def quality() -> dict[str, float]:
    """The held-out quality rows of docs/zoo.md for the zoo in `zoo.CHECKPOINTS`."""
    from nnshift.zoo.evaluate import quality_report

    rep = quality_report(n=300)
    return {
        "vqa_yes/no": rep["shapes-base/vqa"]["yes/no"],
        "vqa_number": rep["shapes-base/vqa"]["number"],
        "vqa_other": rep["shapes-base/vqa"]["other"],
        "colors_names_colours": rep["shapes-colors/caption"]["names_colors"],
    }


def shift(base: Any, colors: Any, n: int) -> dict[str, Any]:
    """Shift shapes-base -> shapes-colors at the circle, last layer, K = 20: recovery, peak, correlations."""
    samples = zoo.dataset(n, style="generic", task="caption", seed=31)
    at = ns.positions.token_of_interest("circle")
    a = ns.capture(base, samples, layer=-1, at=at, max_new_tokens=24, progress=False)
    b = ns.capture(colors, a.samples, layer=-1, at=at, max_new_tokens=24, progress=False)
    a, b = ns.pair(a, b)
    k = min(20, len(a) // 2)
    da = ns.concepts.fit(a, k=k, method="kmeans", seed=0)
    db = ns.concepts.fit(b, k=k, method="kmeans", seed=0)
    rep = ns.shift.analyze(a, b, da, db, alpha=1.0, vlm=base)
    curve = rep.alpha_sweep(SWEEP_ALPHAS, vlm=base).mean_recovery.tolist()
    s = rep.summary()
    return {
        "n_paired": len(a),
        "k": k,
        "recovery_original": s["recovery_original"],
        "recovery_shifted": s["recovery_shifted"],
        "recovery_gain": s["recovery_shifted"] - s["recovery_original"],
        "recovered_fraction": s["recovered_fraction"],
        "alpha_peak": SWEEP_ALPHAS[max(range(len(curve)), key=lambda i: curve[i])],
        "mean_recovery_by_alpha": dict(zip(map(str, SWEEP_ALPHAS), curve, strict=True)),
        "gain_vs_consistency": s["correlations"]["gain_vs_consistency"]["r"],
        "gain_vs_magnitude": s["correlations"]["gain_vs_magnitude"]["r"],
    }


def steering(base: Any, colors: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Each target calibrated on its validation half; the chosen point and its held-out numbers."""
    makers = {
        "yesno_to_number": lambda: sw.yesno_to_number(base, args),
        "yes_to_no": lambda: sw.yes_to_no(base, args),
        "caption_style": lambda: sw.caption_style(base, colors, args),
    }
    out = {}
    for name in TARGETS:
        spec = makers[name]()
        cal = sw.calibrate_spec(base, spec, args.batch_size)
        out[name] = {
            "layer": cal.layer,
            "alpha": cal.alpha,
            "met": cal.met,
            "validation_target_rate": cal.chosen.target_rate,
            "held_out_target_rate": cal.held_out_row.target_rate,
            "held_out_unsteered_rate": cal.held_out_unsteered.target_rate,
            "held_out_drop": cal.held_out_row.max_drop,
        }
    return out


def measure(seed: int, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every finding for one zoo folder."""
    zoo.CHECKPOINTS = folder
    t0 = time.perf_counter()
    base, colors = zoo.load("shapes-base"), zoo.load("shapes-colors")
    doc = {
        "seed": seed,
        "zoo": str(folder) if folder != SHIPPED else "shipped",
        "quality": quality(),
        "shift": shift(base, colors, args.n_shift),
        "steering": steering(base, colors, args),
    }
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    stages = json.loads((folder / "zoo.json").read_text()).get("stages", {})
    doc["train_seconds"] = round(sum(float(v.get("seconds", 0.0)) for v in stages.values()), 1)
    doc["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "versions": {"nnshift": ns.__version__, "torch": torch.__version__},
        "command": "python benchmarks/zoo_seeds.py " + " ".join(sys.argv[1:]),
    }
    return doc


SHIPPED = zoo.CHECKPOINTS

# (label, path in a seed's JSON, format)
ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("zoo training time (s, one core)", ("train_seconds",), "{:.0f}"),
    ("VQA accuracy, yes/no", ("quality", "vqa_yes/no"), "{:.2f}"),
    ("VQA accuracy, number", ("quality", "vqa_number"), "{:.2f}"),
    ("VQA accuracy, other", ("quality", "vqa_other"), "{:.2f}"),
    ("shapes-colors names each colour", ("quality", "colors_names_colours"), "{:.2f}"),
    ("shift: mean recovery, original", ("shift", "recovery_original"), "{:.3f}"),
    ("shift: mean recovery, shifted", ("shift", "recovery_shifted"), "{:.3f}"),
    ("shift: recovery gain", ("shift", "recovery_gain"), "{:+.3f}"),
    ("shift: share of concepts recovered", ("shift", "recovered_fraction"), "{:.2f}"),
    ("shift: alpha of the recovery peak", ("shift", "alpha_peak"), "{:g}"),
    ("shift: corr(gain, consistency)", ("shift", "gain_vs_consistency"), "{:+.2f}"),
    ("shift: corr(gain, magnitude)", ("shift", "gain_vs_magnitude"), "{:+.2f}"),
]
for _t in TARGETS:
    ROWS += [
        (f"{_t}: calibrated layer", ("steering", _t, "layer"), "{:.3g}"),
        (f"{_t}: calibrated alpha", ("steering", _t, "alpha"), "{:.3g}"),
        (f"{_t}: held-out target rate", ("steering", _t, "held_out_target_rate"), "{:.2f}"),
        (f"{_t}: held-out untouched drop", ("steering", _t, "held_out_drop"), "{:+.3f}"),
    ]


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> float:
    x: Any = doc
    for p in path:
        x = x[p]
    return float("nan") if x is None else float(x)


def summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per finding: the value per seed, the mean and the spread (max - min)."""
    out = {}
    for label, path, _ in ROWS:
        vals = [_get(d, path) for d in docs]
        ok = [v for v in vals if not math.isnan(v)]
        out[label] = {
            "values": vals,
            "mean": statistics.fmean(ok) if ok else None,
            "spread": (max(ok) - min(ok)) if ok else None,
        }
    return {"seeds": [d["seed"] for d in docs], "findings": out}


def table(s: dict[str, Any]) -> str:
    """The Markdown table of docs/zoo.md: one row per finding, one column per seed, mean and spread."""
    seeds = s["seeds"]
    head = "| finding | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | spread |"
    lines = [head, "|---|" + "---|" * (len(seeds) + 2)]
    for label, _, fmt in ROWS:
        f = s["findings"][label]
        cells = ["n/a" if math.isnan(v) else fmt.format(v) for v in f["values"]]
        mean = "n/a" if f["mean"] is None else fmt.format(f["mean"])
        spread = "n/a" if f["spread"] is None else f"{f['spread']:.3g}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {spread} |")
    return "\n".join(lines)


def _count(docs: list[dict[str, Any]], test: Any) -> str:
    n = sum(bool(test(d)) for d in docs)
    return f"{n} of {len(docs)} seeds"


def verdicts(docs: list[dict[str, Any]]) -> str:
    """Which findings hold in every seed: one computed line each (the criteria are in the lines)."""
    sh = lambda d: d["shift"]  # noqa: E731
    lines = [
        "- every original concept closer to its fine-tuned match after the shift (share recovered = 1): "
        + _count(docs, lambda d: sh(d)["recovered_fraction"] == 1.0),
        "- mean recovery highest at alpha = 1: " + _count(docs, lambda d: sh(d)["alpha_peak"] == 1.0),
        "- recovery gain correlates positively with consistency (r > 0.3): "
        + _count(docs, lambda d: sh(d)["gain_vs_consistency"] > 0.3),
        "- recovery gain correlates positively with magnitude (r > 0.3): "
        + _count(docs, lambda d: sh(d)["gain_vs_magnitude"] > 0.3),
    ]
    for name in TARGETS:
        lines.append(
            f"- {name}: the calibrated point turns at least 50 % on the held-out half within 2 points: "
            + _count(
                docs,
                lambda d, n=name: (
                    d["steering"][n]["held_out_target_rate"] >= 0.5 and d["steering"][n]["held_out_drop"] <= 0.02
                ),
            )
        )
        lines.append(
            f"- {name}: the calibrated point turns anything on the held-out half: "
            + _count(docs, lambda d, n=name: d["steering"][n]["held_out_target_rate"] > 0)
        )
    return "\n".join(lines)


def update_docs(text: str) -> None:
    """Replace the table between the markers of docs/zoo.md."""
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"error: {DOC} lacks the {BEGIN} / {END} markers")
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    """Measure the given zoo folders (``--zoo SEED=PATH``), then summarise every seed JSON in ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="append", default=[], help="SEED=PATH (PATH 'shipped' = the shipped zoo)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--n-shift", type=int, default=400)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-cap", type=int, default=60)
    ap.add_argument("--n-fresh", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for item in args.zoo:
            seed, _, where = item.partition("=")
            folder = SHIPPED if where == "shipped" else Path(where)
            doc = measure(int(seed), folder, args)
            (args.out / f"seed{seed}.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"seed {seed}: {doc['seconds']} s", json.dumps(doc["steering"]), flush=True)
    docs = sorted((json.loads(p.read_text()) for p in args.out.glob("seed*.json")), key=lambda d: d["seed"])
    if not docs:
        raise SystemExit(f"error: no seed*.json in {args.out}")
    s = summary(docs)
    (args.out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    text = table(s) + "\n\n" + verdicts(docs)
    print(text)
    if args.update_docs:
        update_docs(text)


if __name__ == "__main__":
    main(sys.argv[1:])
