"""Steering sweeps, calibration and baselines on the shapes world (issue 16's "what it must show").

For four targets of shapes-base: coarse yes/no -> number (`answer_type_vector`), yes -> no (`target_answer`),
colour -> colour (fine-grained concept pairs ranked by impact, the best pair) and caption style (generic caption
mean -> shapes-colors' colour words): a sweep over 5 alphas x 2 layers beside the prompting baselines (and the
fine-tune shapes-colors for caption style), `calibrate` (max untouched drop 0.02, validation / held-out halves),
the calibrated yes -> no and yes/no -> number points on a fresh held-out set (another seed), the vectors'
pre-run diagnostics beside each target's steerable / anti-steerable shares, and the cost of a sweep vs one steered
run over the same 400 questions.

    python benchmarks/steering_sweep.py --out benchmarks/results/steering_sweep     # ~5 min on one core
    python benchmarks/steering_sweep.py --out /tmp/sweep --n 100 --n-cap 30 --repeats 1   # a quick look
    python benchmarks/steering_sweep.py --out benchmarks/results/steering_sweep --targets "" --repeats 3  # cost only

Writes ``<target>.json`` (one per target: command, machine, date, versions, sizes, the sweep, the calibration,
the fresh held-out check, the diagnostics), ``cost.json``, ``<target>-pareto.png`` / ``<target>-heatmap.png``,
``pareto.png`` (the four fronts) and ``cost.png``. `scripts/sweep_tables.py` turns them into docs tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift.steering import AnswerTypeTarget, CaptionStyle, TargetAnswer, fluency, sweeps

warnings.filterwarnings("ignore")

TARGETS = ("yesno_to_number", "yes_to_no", "colour_to_colour", "caption_style")
VQA_LAYERS = (2, 3)
CAPTION_LAYERS = (1, 2)
MAX_DROP = 0.02


@dataclass
class Spec:
    """One target: its vectors (one per layer), target, samples and baselines."""

    name: str
    vectors: dict[int, Any]
    target: Any
    samples: list[ns.Sample]
    alphas: tuple[float, ...]
    prompts: dict[str, str]
    keep: list[ns.Sample] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 4
    fresh: list[ns.Sample] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    """The command, machine, date and versions recorded in every JSON."""
    import nnsight
    import transformers

    return {
        "command": "python " + shlex.join([sys.argv[0], *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
        },
        "versions": {
            "nnshift": ns.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "nnsight": nnsight.__version__,
        },
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }


def capture_layers(vlm: Any, samples: list[ns.Sample], layers: tuple[int, ...], **kw: Any) -> dict[int, Any]:
    """`ns.capture` at several layers: ``{layer: Activations}``."""
    acts = ns.capture(vlm, samples, layer=list(layers), progress=False, **kw)
    return {vlm.layer_index(k): v for k, v in acts.items()}


def yesno_to_number(base: Any, args: argparse.Namespace) -> Spec:
    """Coarse yes/no -> number: `answer_type_vector` by reference type, at the last prompt token."""
    yesno = ns.zoo.dataset(args.n_train, task="vqa", answer_type="yes/no", seed=201)
    number = ns.zoo.dataset(args.n_train, task="vqa", answer_type="number", seed=202)
    acts = capture_layers(base, yesno + number, VQA_LAYERS, at="last_prompt")
    vecs = {k: ns.steering.answer_type_vector(a, "yes/no", "number", by="reference") for k, a in acts.items()}
    return Spec(
        "yesno_to_number",
        vecs,
        AnswerTypeTarget("yes/no", "number"),
        ns.zoo.dataset(args.n, task="vqa", seed=301),
        (0.5, 1.0, 1.5, 2.0, 3.0),
        {"prompt: Answer with a number.": "Answer with a number."},
        fresh=ns.zoo.dataset(args.n_fresh, task="vqa", seed=401),
        extra={"sample_seed": 301, "fresh_seed": 401},
    )


def yes_to_no(base: Any, args: argparse.Namespace) -> Spec:
    """Target answer yes -> no: `target_answer` on the model's own answers to yes/no questions."""
    yesno = ns.zoo.dataset(args.n_train, task="vqa", answer_type="yes/no", seed=201)
    acts = capture_layers(base, yesno, VQA_LAYERS, at="last_prompt")
    answers = ns.generate(base, yesno, max_new_tokens=4, progress=False)
    vecs = {}
    for k, a in acts.items():
        a.answers = list(answers)
        vecs[k] = ns.steering.target_answer(a, "yes", "no")
    return Spec(
        "yes_to_no",
        vecs,
        TargetAnswer("yes", "no"),
        ns.zoo.dataset(args.n, task="vqa", seed=302),
        (0.1, 0.2, 0.3, 0.5, 1.0),
        {"prompt: Answer no.": "Answer no."},
        fresh=ns.zoo.dataset(args.n_fresh, task="vqa", seed=402),
        extra={"sample_seed": 302, "fresh_seed": 402},
    )


def colour_to_colour(base: Any, args: argparse.Namespace) -> Spec:
    """Fine-grained colour -> colour: k-means concepts of colour questions, the best pair by impact (layer 3).

    The same pair at layer 2 is the difference of the two concepts' member means at layer 2 (a k-means concept
    is its members' mean, so at layer 3 this is exactly ``fine(dico, i, j)``); both get `vector_diagnostics`.
    """
    kind = {"task": "vqa", "question_kind": "color_of_shape"}
    train = ns.zoo.dataset(args.n_train, seed=13, **kind)
    acts = capture_layers(base, train, VQA_LAYERS, at="last_prompt")
    top = max(VQA_LAYERS)
    dico = ns.concepts.fit(acts[top], k=8, method="kmeans", seed=0)
    impact_set = ns.zoo.dataset(args.n_impact, seed=14, **kind)
    ranked = ns.steering.by_impact(
        base, impact_set, ns.steering.fine_all(dico), alpha=1.0, max_new_tokens=4, progress=False
    )
    best = ranked[0]
    i, j = best.key
    source = min(best.changes, key=lambda a: best.changes[a])  # the answer the pair takes away most
    assign = dico.assign(acts[top]).tolist()
    rows_i = [r for r, c in enumerate(assign) if c == i]
    rows_j = [r for r, c in enumerate(assign) if c == j]
    vecs = {
        k: ns.steering.coarse(a.select(rows_i), a.select(rows_j), name=f"concept {i} -> {j}") for k, a in acts.items()
    }
    fine = ns.steering.fine(dico, i, j)
    exact = float((fine.vector - vecs[top].vector).abs().max())
    samples = ns.zoo.dataset(args.n_colour, seed=15, **kind) + ns.zoo.dataset(args.n_colour, task="vqa", seed=303)
    tgt = best.targets[0]
    return Spec(
        "colour_to_colour",
        vecs,
        TargetAnswer(source, tgt),
        samples,
        (0.5, 1.0, 1.5, 2.0, 3.0),
        {f"prompt: Answer {tgt}.": f"Answer {tgt}."},
        extra={
            "pair": [i, j],
            "impact": [r.to_dict(top=5) for r in ranked[:3]],
            "fine_vs_member_means_max_abs_diff": exact,
            "n_colour_questions": args.n_colour,
        },
    )


def caption_style(base: Any, colors: Any, args: argparse.Namespace) -> Spec:
    """Caption style: generic caption mean of shapes-base -> shapes-colors' colour-word states; keep = VQA."""
    caps = ns.zoo.dataset(args.n_train, style="generic", task="caption", seed=204)
    c = {"max_new_tokens": 24}
    src = capture_layers(base, caps, CAPTION_LAYERS, at=ns.positions.generated(reduce="mean"), **c)
    tgt = capture_layers(colors, caps, CAPTION_LAYERS, at=ns.positions.token_of_interest(list(ns.zoo.COLORS)), **c)
    vecs = {k: ns.steering.coarse(src[k], tgt[k]) for k in src}
    return Spec(
        "caption_style",
        vecs,
        CaptionStyle("colors"),
        ns.zoo.dataset(args.n_cap, style="generic", task="caption", seed=205),
        (0.5, 1.0, 1.5, 2.0, 3.0),
        {
            "prompt: Name the colours of the shapes.": "Name the colours of the shapes.",
            "prompt: describe the color of the shapes.": "describe the color of the shapes.",
        },
        keep=ns.zoo.dataset(args.n_cap, task="vqa", seed=304),
        models={"fine-tune shapes-colors": colors},
        max_new_tokens=24,
    )


def tokens_of(vlm: Any, prompts: dict[str, str]) -> dict[str, Any]:
    """How the model's tokenizer reads each prompt (the tiny zoo model knows only its own words)."""
    tok = vlm.tokenizer
    out = {}
    for text in prompts.values():
        pieces = tok.tokenize(text)
        out[text] = {"tokens": pieces, "unknown": sum(p == tok.unk_token for p in pieces)}
    return out


def _row(r: Any) -> dict[str, Any]:
    return r.to_dict(samples=False)


def calibrate_spec(base: Any, spec: Spec, batch_size: int, refine: int | None = None) -> Any:
    """`ns.steering.calibrate` of one target over its layers and alphas (max untouched drop `MAX_DROP`).

    ``refine``: as in `calibrate` (None: its default).
    """
    return ns.steering.calibrate(
        base,
        spec.vectors,
        spec.samples,
        target=spec.target,
        alphas=spec.alphas,
        layers=sorted(spec.vectors),
        keep=spec.keep or None,
        max_untouched_drop=MAX_DROP,
        fluency=False,
        max_new_tokens=spec.max_new_tokens,
        batch_size=batch_size,
        progress=False,
        **({} if refine is None else {"refine": refine}),
    )


def run_target(base: Any, spec: Spec, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The sweep with baselines, the calibration, the fresh held-out check; a JSON-able dict and the report."""
    run = {"max_new_tokens": spec.max_new_tokens, "batch_size": args.batch_size, "progress": False}
    layers = sorted(spec.vectors)
    t0 = time.perf_counter()
    report = ns.steering.sweep(
        base,
        spec.vectors,
        spec.samples,
        target=spec.target,
        alphas=spec.alphas,
        layers=layers,
        keep=spec.keep or None,
        prompts=spec.prompts,
        models=spec.models or None,
        **run,
    )
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal = calibrate_spec(base, spec, args.batch_size)
    t_cal = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "target": spec.name,
        "describe": spec.target.describe(),
        "n_samples": len(spec.samples),
        "n_keep": len(spec.keep),
        "layers": layers,
        "alphas": list(spec.alphas),
        "max_new_tokens": spec.max_new_tokens,
        "diagnostics": {str(k): v.info.get("diagnostics") for k, v in spec.vectors.items()},
        "prompt_tokens": tokens_of(base, spec.prompts),
        "sweep": report.to_dict(samples=False),
        "sweep_seconds": round(t_sweep, 1),
        "calibration": {
            "layer": cal.layer,
            "alpha": cal.alpha,
            "met": cal.met,
            "max_untouched_drop": MAX_DROP,
            "split": cal.split,
            "seed": cal.seed,
            "summary": cal.summary(),
            "validation_n": len(cal.validation.sample_ids),
            "held_out_n": len(cal.held_out.sample_ids),
            "validation_unsteered": _row(cal.validation.unsteered),
            "validation_chosen": _row(cal.chosen),
            "validation_rows": [
                {"layer": r.layer, "alpha": r.alpha, "target_rate": r.target_rate, "max_drop": r.max_drop}
                for r in cal.validation.steering
            ],
            "held_out_unsteered": _row(cal.held_out_unsteered),
            "held_out_chosen": _row(cal.held_out_row),
            "seconds": round(t_cal, 1),
        },
        "extra": spec.extra,
    }
    if spec.fresh is not None:
        doc["fresh"] = fresh_check(base, spec, cal, run)
        grid = calibrate_spec(base, spec, args.batch_size, refine=0)  # the grid alone, for comparison
        doc["grid_only"] = {
            "layer": grid.layer,
            "alpha": grid.alpha,
            "met": grid.met,
            "held_out_chosen": _row(grid.held_out_row),
            "fresh": fresh_check(base, spec, grid, run),
        }
    return doc, report


def fresh_check(base: Any, spec: Spec, cal: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The calibrated point on a fresh set (another seed): untouched accuracy change and turned share."""
    assert spec.fresh is not None
    rep = ns.steering.sweep(
        base,
        {cal.layer: spec.vectors[cal.layer]},
        spec.fresh,
        target=spec.target,
        alphas=[cal.alpha],
        layers=[cal.layer],
        fluency=False,
        **run,
    )
    un, st = rep.unsteered, rep.row(cal.layer, cal.alpha)
    change = {t: st.untouched_accuracy[t] - un.untouched_accuracy[t] for t in un.untouched_accuracy}
    return {
        "n": len(spec.fresh),
        "seed": spec.extra.get("fresh_seed"),
        "n_relevant": st.n_relevant,
        "unsteered": _row(un),
        "steered": _row(st),
        "untouched_change": change,
        "turned": st.target_rate - un.target_rate,
        "within_2_points": all(abs(v) <= 0.02 + 1e-12 for v in change.values()),
        "turned_at_least_half": st.target_rate - un.target_rate >= 0.5,
    }


def unshared(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with prompt-prefix sharing switched off (the plain paths of `sweep` and of its fluency pass)."""

    def run() -> Any:
        real = sweeps.can_share_prefix, sweeps.can_split_prefix, fluency.shares_prefix
        sweeps.can_share_prefix = sweeps.can_split_prefix = fluency.shares_prefix = lambda *a: False  # type: ignore[assignment]
        try:
            return fn()
        finally:
            sweeps.can_share_prefix, sweeps.can_split_prefix, fluency.shares_prefix = real

    return run


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, process CPU) time of each function over ``repeats`` round-robin rounds, after a warm-up round.

    Round-robin, so a burst of load from other processes hits every run alike; the CPU time (one torch thread)
    is what other jobs on a shared machine disturb least. The garbage collector runs before each function, so
    one run's garbage is not collected during another's timing (it stays on while a function runs: what it
    collects of that function's own garbage is part of its cost).
    """
    for fn in fns.values():
        fn()
    best = {k: (math.inf, math.inf) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[k] = (min(best[k][0], w), min(best[k][1], c))
    return best


def cost(base: Any, spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    """A sweep of 5 alphas x 2 layers over the 400 questions vs one steered run over them (best of ``repeats``)."""
    samples = ns.zoo.dataset(args.n_cost, task="vqa", seed=305)
    layers = sorted(spec.vectors)
    run = {"max_new_tokens": 4, "batch_size": args.batch_size, "progress": False}
    patch = spec.vectors[layers[-1]].patch(alpha=spec.alphas[2])

    def sweep(fluency: bool, steerability: bool) -> Callable[[], object]:
        return lambda: ns.steering.sweep(
            base,
            spec.vectors,
            samples,
            target=spec.target,
            alphas=spec.alphas,
            layers=layers,
            fluency=fluency,
            steerability=steerability,
            **run,
        )

    fns = {
        "steer (one alpha)": lambda: ns.steer(base, samples, patch, **run),
        "generate (unsteered)": lambda: ns.generate(base, samples, **run),
        "sweep": sweep(True, True),
        "sweep, fluency off": sweep(False, True),
        "sweep, steerability off": sweep(True, False),
        "sweep, both off": sweep(False, False),
        "sweep, prefix sharing off": unshared(sweep(True, True)),
    }
    best = timed(fns, args.repeats)
    wall, cpu = best["steer (one alpha)"]
    return {
        "n_questions": len(samples),
        "alphas": list(spec.alphas),
        "layers": layers,
        "grid_points": 1 + len(spec.alphas) * len(layers),
        "batch_size": args.batch_size,
        "max_new_tokens": 4,
        "repeats": args.repeats,
        "seconds": {k: round(v[0], 3) for k, v in best.items()},
        "cpu_seconds": {k: round(v[1], 3) for k, v in best.items()},
        "ratio_to_steer": {k: round(v[0] / wall, 2) for k, v in best.items()},
        "cpu_ratio_to_steer": {k: round(v[1] / cpu, 2) for k, v in best.items()},
    }


def figures(out: Path, reports: dict[str, Any], cost_doc: dict[str, Any] | None) -> None:
    """Per-target Pareto and heat-map PNGs, the four fronts in one figure, and the cost bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, rep in reports.items():
        for kind, make in (("pareto", rep.plot_pareto), ("heatmap", rep.plot_heatmap)):
            fig = make()
            fig.savefig(out / f"{name}-{kind}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
    if len(reports) == len(TARGETS):
        fig, axes = plt.subplots(1, len(reports), figsize=(5.2 * len(reports), 4.2))
        for ax, rep in zip(list(axes.flat), reports.values(), strict=True):
            rep.plot_pareto(ax=ax)
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    if cost_doc is not None:
        secs = cost_doc["cpu_seconds"]
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        ax.barh(list(secs), list(secs.values()), color="tab:blue")
        for y, v in enumerate(secs.values()):
            ax.text(v, y, f" {v:.1f} s ({v / secs['steer (one alpha)']:.1f}x)", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"CPU seconds, {cost_doc['n_questions']} questions (best of {cost_doc['repeats']}, 1 thread)")
        ax.set_title("a 5 alphas x 2 layers sweep vs one steered run", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "cost.png", dpi=100, bbox_inches="tight")
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run every target (or ``--targets``), the cost measure, and write the JSON files and figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated among {TARGETS}; '' for none")
    ap.add_argument("--n", type=int, default=400, help="VQA questions per sweep (yes/no -> number, yes -> no)")
    ap.add_argument("--n-fresh", type=int, default=400, help="fresh held-out questions (another seed)")
    ap.add_argument("--n-train", type=int, default=100, help="samples per set the vectors are made from")
    ap.add_argument("--n-impact", type=int, default=100, help="colour questions the pairs are ranked on")
    ap.add_argument("--n-colour", type=int, default=150, help="colour questions (and as many mixed) in its sweep")
    ap.add_argument("--n-cap", type=int, default=60, help="captions (and as many kept VQA questions)")
    ap.add_argument("--n-cost", type=int, default=400, help="questions of the cost measure")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds of the cost measure (best kept)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cost", action="store_true")
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    if bad := [t for t in names if t not in TARGETS]:
        raise SystemExit(f"error: unknown targets {bad}; use {TARGETS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    info = meta(args)
    base = ns.zoo.load("shapes-base")
    colors = ns.zoo.load("shapes-colors") if "caption_style" in names else None
    makers: dict[str, Callable[[], Spec]] = {
        "yesno_to_number": lambda: yesno_to_number(base, args),
        "yes_to_no": lambda: yes_to_no(base, args),
        "colour_to_colour": lambda: colour_to_colour(base, args),
        "caption_style": lambda: caption_style(base, colors, args),
    }
    reports, specs = {}, {}
    for name in names:
        t0 = time.perf_counter()
        spec = specs[name] = makers[name]()
        doc, reports[name] = run_target(base, spec, args)
        doc["meta"] = info
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{name}: {doc['calibration']['summary']} ({doc['seconds']} s)", flush=True)
    cost_doc = None
    if not args.no_cost:
        spec = specs.get("yesno_to_number") or yesno_to_number(base, args)
        cost_doc = cost(base, spec, args) | {"meta": info}
        (args.out / "cost.json").write_text(json.dumps(cost_doc, indent=1) + "\n")
        print("cost (CPU time / one steered run):", json.dumps(cost_doc["cpu_ratio_to_steer"]), flush=True)
    figures(args.out, reports, cost_doc)


if __name__ == "__main__":
    main(sys.argv[1:])
