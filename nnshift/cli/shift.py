"""`nnshift shift`: the shift analysis between an original and a fine-tuned model, with its figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nnshift.cli.common import Command, add_allow_partial, add_model_args, finite_float, float_list
from nnshift.cli.loaders import load_acts, load_artifact, load_model, write_json

__all__ = ["COMMAND", "write_figures"]

DEFAULT_SWEEP = "0,0.25,0.5,0.75,1,1.25,1.5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift shift`."""
    p.add_argument("--acts-a", required=True, help="activations of the original model")
    p.add_argument("--acts-b", required=True, help="activations of the fine-tuned model (same samples)")
    p.add_argument(
        "--concepts-a", "--dico-a", dest="dico_a", required=True, help="concept dictionary of the original model"
    )
    p.add_argument(
        "--concepts-b", "--dico-b", dest="dico_b", required=True, help="concept dictionary of the fine-tuned model"
    )
    add_allow_partial(p)
    p.add_argument(
        "--alpha", type=finite_float, default=1.0, help="shift scale: u_s = u_a + alpha * Delta (default: 1)"
    )
    p.add_argument(
        "--sweep",
        type=float_list,
        default=float_list(DEFAULT_SWEEP),
        help=f"alphas of the recovery-vs-alpha figure (default: {DEFAULT_SWEEP})",
    )
    p.add_argument("--keywords", default=None, help="comma-separated words whose overlap the alpha sweep tracks")
    p.add_argument("--no-figures", action="store_true", help="do not write the PNG figures")
    add_model_args(p, required=False, remote=False)
    p.add_argument("--out", required=True, help="shift report folder (shift.json, shift.safetensors, PNG figures)")


def write_figures(report: Any, sweep: Any, out: Path) -> list[str]:
    """Write the shift figures as PNGs in ``out``; returns the file names (a failing figure is reported, skipped)."""
    from nnshift import plots

    makers = {
        "shift_recovery": lambda: plots.plot_recovery(report),
        "shift_similarity": lambda: plots.plot_similarity_matrix(report),
        "shift_gain_vs": lambda: plots.plot_gain_vs(report),
        "shift_dynamics": lambda: plots.plot_dynamics(report),
        "shift_alpha_sweep": lambda: plots.plot_alpha_sweep(sweep),
    }
    written = []
    for name, make in makers.items():
        try:
            fig = make()
        except Exception as exc:  # a figure must never sink the analysis
            print(f"figure {name} skipped: {exc}")
            continue
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        written.append(f"{name}.png")
    return written


def run(args: argparse.Namespace) -> int:
    """Pair, analyse, save the report, its summary and figures."""
    import nnshift as ns
    from nnshift.cli.common import CliError

    if args.model is None and args.lora is not None:
        raise CliError("--lora applies to --model", "add --model (the model to ground the concepts with)")
    keywords = None if args.keywords is None else [w.strip() for w in args.keywords.split(",") if w.strip()]
    if keywords is not None and args.model is None:
        raise CliError("--keywords needs --model (the overlap is measured on grounded words)", "add --model")
    acts_a = load_acts(args.acts_a, "--acts-a", allow_partial=args.allow_partial)
    acts_b = load_acts(args.acts_b, "--acts-b", allow_partial=args.allow_partial)
    acts_a, acts_b = ns.pair(acts_a, acts_b)
    dico_a = load_artifact(ns.concepts.ConceptDictionary.load, args.dico_a, "--concepts-a")
    dico_b = load_artifact(ns.concepts.ConceptDictionary.load, args.dico_b, "--concepts-b")
    vlm = load_model(args) if args.model else None
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=args.alpha, vlm=vlm)
    out = Path(args.out)
    report.save(out)
    sweep = report.alpha_sweep(args.sweep, keywords=keywords, vlm=vlm)
    summary = report.summary()
    write_json(out / "summary.json", {"summary": summary, "alpha_sweep": sweep.to_dict()})
    figures = [] if args.no_figures else write_figures(report, sweep, out)
    print(json.dumps(summary, indent=2, default=str))
    print(f"shift report and {len(figures)} figures -> {out}")
    return 0


COMMAND = Command(
    name="shift",
    help="shift analysis between an original and a fine-tuned model",
    description=(
        "Pair the two activation sets, compute concept shift vectors, shifted "
        "concepts, matching, recovery, consistency and dynamics; write the report and its figures."
    ),
    example=(
        "nnshift shift --acts-a runs/base-circle --acts-b runs/colors-circle --concepts-a runs/base-k20 "
        "--concepts-b runs/colors-k20 --out runs/shift"
    ),
    add_arguments=add_arguments,
    run=run,
)
