"""`nnshift sweep`: a steering vector over layers x strengths beside the unsteered model and baselines (or calibrated)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nnshift.cli.common import (
    CliError,
    Command,
    add_data_args,
    add_generation_args,
    add_model_args,
    add_vector_args,
    finite_float,
    float_list,
    layer_list,
    name_list,
    require,
)
from nnshift.cli.loaders import load_artifact, load_data, load_model, load_vector, write_json

__all__ = ["COMMAND", "parse_target"]

_TARGETS = "answer_type:yes/no->number | answer:yes->no (comma lists allowed) | style:colors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift sweep`."""
    add_model_args(p)
    add_data_args(p)
    g = add_vector_args(p, "the steering vector (one of)")
    g.add_argument("--vectors", default=None, help="a save_vectors folder keyed by layer: one vector per layer")
    p.add_argument("--target", required=True, help=f"what the steering aims at: {_TARGETS}")
    p.add_argument("--keywords", type=name_list, default=None, help="with style:NAME: the style's keywords, a,b,c")
    p.add_argument("--alphas", type=float_list, default=None, help="strengths, e.g. 0.25,0.5,1 (default: 0.25..2)")
    p.add_argument("--layers", type=layer_list, default=None, help="layers, e.g. 2,3 (default: the vector's layer)")
    p.add_argument("--positions", default=None, help="all, prompt, last_prompt, generated, image, text")
    p.add_argument("--keep", default=None, help="a JSONL of extra questions whose accuracy must be kept")
    p.add_argument(
        "--prompt", action="append", default=None, help="a prompting baseline: text added to each prompt (repeatable)"
    )
    p.add_argument(
        "--baseline-model",
        action="append",
        default=None,
        help="another model as a baseline (zoo name, folder or hub id; same --device/--dtype), repeatable",
    )
    p.add_argument("--no-fluency", action="store_true", help="skip the NLL of the answers under the unsteered model")
    p.add_argument("--no-steerability", action="store_true", help="skip the per-sample moved toward / away shares")
    p.add_argument("--threshold", type=finite_float, default=0.1, help="nats: a margin change that counts as moved")
    c = p.add_argument_group("calibration (choose layer and alpha on a validation split, report held-out)")
    c.add_argument("--calibrate", action="store_true", help="calibrate instead of a plain sweep")
    c.add_argument("--max-untouched-drop", type=finite_float, default=0.02, help="largest accuracy drop allowed")
    c.add_argument("--calibration-split", type=finite_float, default=0.5, help="validation share, in (0, 1)")
    c.add_argument("--calibration-seed", type=int, default=0, help="seed of the validation / held-out split")
    c.add_argument(
        "--refine",
        type=int,
        default=None,
        help="strengths tried on validation between the chosen alpha and the next one (0: off; default 3)",
    )
    add_generation_args(p, max_new_tokens=20)
    p.add_argument("--out", required=True, help="output folder: sweep/, table.md, pareto.png, heatmap.png, sweep.json")


def parse_target(text: str, keywords: list[str] | None = None) -> Any:
    """``answer_type:A->B``, ``answer:A->B`` or ``style:NAME`` as a target object (CliError otherwise)."""
    from nnshift.steering import AnswerTypeTarget, CaptionStyle, TargetAnswer

    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind == "style" and sep and rest.strip():
        return CaptionStyle(rest.strip(), keywords)
    if keywords is not None:
        raise CliError("--keywords applies to a style:NAME target", "drop --keywords")
    src, arrow, tgt = rest.partition("->")
    if kind not in ("answer_type", "answer") or not sep or not arrow or not src.strip() or not tgt.strip():
        raise CliError(f"--target {text!r} is not understood", f"use {_TARGETS}")
    sources = [s.strip() for s in src.split(",") if s.strip()]
    targets = [t.strip() for t in tgt.split(",") if t.strip()]
    if kind == "answer":
        return TargetAnswer(sources, targets)
    if len(targets) != 1:
        raise CliError(f"--target {text!r}: one target answer type", "e.g. answer_type:yes/no->number")
    return AnswerTypeTarget(sources, targets[0])


def _vector(args: argparse.Namespace) -> Any:
    """The saved vector, patch or per-layer vectors the options name (exactly one)."""
    import nnshift as ns
    from nnshift.steering.vector_io import load_vectors

    given = [k for k in ("vector", "patch", "vectors") if getattr(args, k) is not None]
    if len(given) != 1:
        raise CliError(f"give exactly one of --vector, --patch, --vectors (got {len(given)})", "e.g. --vector DIR")
    if args.vector is not None:
        return load_vector(args.vector, "pass it as --vectors")
    if args.patch is not None:
        return load_artifact(ns.steering.Patch.load, args.patch, "--patch")
    vectors = load_artifact(load_vectors, args.vectors, "--vectors")
    if not vectors or not all(isinstance(k, int) and not isinstance(k, bool) for k in vectors):
        raise CliError(f"--vectors {args.vectors}: the keys must be layer numbers", "save {layer: vector} dicts")
    return vectors


def _keep(args: argparse.Namespace) -> list[Any] | None:
    from nnshift import data

    if args.keep is None:
        return None
    path = require(args.keep, "--keep file", "file")
    if path.suffix != ".jsonl":
        raise CliError(f"--keep {path}: a JSONL file is expected", "write the questions with nnshift.data.save_jsonl")
    return data.load_jsonl(path, args.images)


def _check(args: argparse.Namespace) -> None:
    calib_opts = args.max_untouched_drop != 0.02 or args.calibration_split != 0.5 or args.calibration_seed != 0
    if (calib_opts or args.refine is not None) and not args.calibrate:
        raise CliError(
            "--max-untouched-drop / --calibration-* / --refine apply with --calibrate", "add --calibrate or drop them"
        )
    if args.calibrate and (args.prompt or args.baseline_model):
        raise CliError("baselines are part of a plain sweep, not of --calibrate", "drop --prompt/--baseline-model")
    if args.remote and not args.no_fluency:
        raise CliError("--remote: fluency is measured locally", "add --no-fluency")
    if args.remote and not args.no_steerability and not args.target.strip().lower().startswith("style"):
        raise CliError("--remote: the steerability margins of a VQA target are read locally", "add --no-steerability")


def _figures(report: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.plot_pareto().savefig(out / "pareto.png", dpi=120)
    report.plot_heatmap("target_rate").savefig(out / "heatmap.png", dpi=120)
    plt.close("all")


def run(args: argparse.Namespace) -> int:
    """Load everything, check it, run the sweep (or calibration), write the report, table and figures."""
    import nnshift as ns
    from nnshift.steering.sweeps import DEFAULT_ALPHAS

    _check(args)
    target = parse_target(args.target, args.keywords)
    vector = _vector(args)
    samples, keep = load_data(args), _keep(args)
    vlm = load_model(args)
    others = {
        m: load_model(argparse.Namespace(**{**vars(args), "model": m, "lora": None})) for m in args.baseline_model or []
    }
    run_opts: dict[str, Any] = {
        "target": target,
        "alphas": args.alphas or DEFAULT_ALPHAS,
        "layers": args.layers,
        "positions": args.positions,
        "keep": keep,
        "fluency": not args.no_fluency,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "remote": True if args.remote else None,
    }
    out = Path(args.out)
    if args.calibrate:
        calib = ns.steering.calibrate(
            vlm,
            vector,
            samples,
            max_untouched_drop=args.max_untouched_drop,
            split=args.calibration_split,
            seed=args.calibration_seed,
            **({} if args.refine is None else {"refine": args.refine}),
            **run_opts,
        )
        calib.save(out / "calibration")
        report = calib.validation
        print(calib.summary())
    else:
        prompts = {f"prompt: {t}": t for t in args.prompt or []}
        report = ns.steering.sweep(
            vlm,
            vector,
            samples,
            prompts=prompts,
            models=others,
            steerability=not args.no_steerability,
            threshold=args.threshold,
            **run_opts,
        )
    report.save(out / "sweep")
    (out / "table.md").write_text(report.table())
    write_json(out / "sweep.json", {"model": args.model, "lora": args.lora, **report.to_dict()})
    _figures(report, out)
    print(report.table())
    print(f"swept {len(report.steering)} points over {len(report.sample_ids)} samples -> {out}")
    return 0


COMMAND = Command(
    name="sweep",
    help="sweep a steering vector over layers x alphas with baselines (or calibrate it)",
    description=(
        "Run a saved steering vector (--vector, --patch or per-layer --vectors) at every --layers x --alphas on "
        "--data in one batched generation, beside the unsteered model, prompting baselines (--prompt) and other "
        "models (--baseline-model). Per point: the --target rate, accuracy on the answer types the target does "
        "not touch (and --keep questions), CIDEr-D for captions, fluency (NLL under the unsteered model, answer "
        "length) and the shares of samples moved toward / away from the target. Writes the saved SweepReport, "
        "table.md, pareto.png and heatmap.png. --calibrate chooses the point on a validation split under "
        "--max-untouched-drop and measures it on the held-out part."
    ),
    example=(
        "nnshift sweep --model shapes-base --vector runs/steer/vector --data vqa.jsonl "
        "--target answer_type:yes/no->number --alphas 0.5,1,2 --layers 2,3 --out runs/sweep"
    ),
    add_arguments=add_arguments,
    run=run,
)
