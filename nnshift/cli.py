"""The `nnshift` command: demo, capture, concepts, shift, steer, evaluate, report.

Every subcommand reads and writes the library's on-disk formats, so a run on a real model is the same
commands with another ``--model``. Errors print one line and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXAMPLES = {
    "demo": "nnshift demo --out nnshift-report",
    "capture": (
        "nnshift capture --model shapes-base --data captions.json --images imgs/ --layer -1 --token circle "
        "--out runs/base-circle"
    ),
    "concepts": "nnshift concepts --acts runs/base-circle --k 20 --method kmeans --out runs/base-circle-k20",
    "shift": (
        "nnshift shift --acts-a runs/base-circle --acts-b runs/colors-circle --dico-a runs/base-k20 "
        "--dico-b runs/colors-k20 --out runs/shift"
    ),
    "steer": (
        "nnshift steer --model shapes-base --source runs/yesno --target runs/number --alpha 1 "
        "--data vqa.jsonl --out runs/steer"
    ),
    "evaluate": "nnshift evaluate --answers runs/steer/answers.jsonl --baseline runs/base/answers.jsonl",
    "report": "nnshift report --run runs/ --out nnshift-report",
}


class CliError(Exception):
    """A user error in the command line: printed as one line."""


def _fmt(desc: str, name: str) -> str:
    return f"{desc}\n\nexample:\n  {EXAMPLES[name]}"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="a zoo name (shapes-base, ...), a Hugging Face id or a local model folder"
    )
    p.add_argument("--lora", default=None, help="a PEFT LoRA adapter folder applied on top of --model")
    p.add_argument("--device", default=None, help="device_map for loading, e.g. cpu, cuda, auto (default: cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16 (default: float32)")
    p.add_argument("--remote", action="store_true", help="run on NDIF (remote=True); see docs/remote.md")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="a dataset: COCO captions JSON (official or Karpathy), VQAv2 questions JSON, or JSONL",
    )
    p.add_argument("--annotations", default=None, help="VQAv2 annotations JSON (with --data the questions JSON)")
    p.add_argument("--images", default=None, help="image folder (COCO / VQAv2; JSONL paths are relative to it)")
    p.add_argument("--limit", type=int, default=None, help="keep at most this many samples (after --seed shuffle)")
    p.add_argument("--seed", type=int, default=None, help="shuffle the dataset with this seed before --limit")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `nnshift` command."""
    parser = argparse.ArgumentParser(
        prog="nnshift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "demo",
        help="the whole method on the shapes world, with an HTML report",
        description=_fmt(
            "Capture, concepts, shift analysis, steering and evaluation on the embedded "
            "shapes world; writes OUT/index.html, PNG figures and results.json.",
            "demo",
        ),
        formatter_class=raw,
    )
    p.add_argument("--out", default="nnshift-report", help="report folder (default: nnshift-report)")
    p.add_argument("--fast", action="store_true", help="fewer samples (a smoke run)")

    p = sub.add_parser(
        "capture",
        help="capture residual-stream states at selected positions",
        description=_fmt(
            "Run the model on a dataset and store the states of --layer at --positions "
            "(or at the token of interest --token) in an activation store. Interrupted? "
            "Run the same command again: it resumes.",
            "capture",
        ),
        formatter_class=raw,
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument(
        "--layer", default="-1", help="decoder layer(s), comma-separated; negative counts from the end (default: -1)"
    )
    p.add_argument(
        "--token", default=None, help="token of interest: keep the state that produces this word in the answer"
    )
    p.add_argument("--variants", action="store_true", help="with --token, also accept plural / capitalised forms")
    p.add_argument(
        "--positions",
        default="last_prompt",
        help="without --token: all, prompt, last_prompt, generated, image, text (default: last_prompt)",
    )
    p.add_argument("--reduce", choices=["mean"], default=None, help="average multi-position selections per sample")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy generation length (default: 32)")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard written to disk (default: 256)")
    p.add_argument("--out", required=True, help="activation store folder (created; resumed if it exists)")

    p = sub.add_parser(
        "concepts",
        help="learn a concept dictionary from captured activations",
        description=_fmt(
            "Fit K concepts (kmeans, semi_nmf, pca, nmf) on an activation store and "
            "ground them in words when --model is given.",
            "concepts",
        ),
        formatter_class=raw,
    )
    p.add_argument("--acts", required=True, help="activation store or saved Activations folder")
    p.add_argument("--layer", type=int, default=None, help="layer to read when the store holds several")
    p.add_argument("--k", type=int, default=20, help="number of concepts (default: 20)")
    p.add_argument("--method", default="kmeans", help="kmeans, semi_nmf, pca, nmf (default: kmeans)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--model", default=None, help="model for text grounding (zoo name, HF id or folder)")
    p.add_argument("--lora", default=None, help="LoRA adapter for --model")
    p.add_argument("--top", type=int, default=15, help="grounding words per concept (default: 15)")
    p.add_argument("--out", required=True, help="dictionary folder")

    p = sub.add_parser(
        "shift",
        help="shift analysis between an original and a fine-tuned model",
        description=_fmt(
            "Pair the two activation sets, compute concept shift vectors, shifted "
            "concepts, matching, recovery, consistency and dynamics.",
            "shift",
        ),
        formatter_class=raw,
    )
    p.add_argument("--acts-a", required=True, help="activations of the original model")
    p.add_argument("--acts-b", required=True, help="activations of the fine-tuned model (same samples)")
    p.add_argument("--dico-a", required=True, help="concept dictionary of the original model")
    p.add_argument("--dico-b", required=True, help="concept dictionary of the fine-tuned model")
    p.add_argument("--alpha", type=float, default=1.0, help="shift scale: u_s = u_a + alpha * Delta (default: 1)")
    p.add_argument("--model", default=None, help="model for text grounding / T-Overlap (optional)")
    p.add_argument("--lora", default=None, help="LoRA adapter for --model")
    p.add_argument("--out", required=True, help="shift report folder")

    p = sub.add_parser(
        "steer",
        help="make a steering vector and apply it",
        description=_fmt(
            "Coarse vector mean(target) - mean(source) from two activation stores (or "
            "--vector), applied as a patch to --layer at --positions with --alpha; writes "
            "the vector and the steered answers.",
            "steer",
        ),
        formatter_class=raw,
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--source", default=None, help="activations of the source set")
    p.add_argument("--target", default=None, help="activations of the target set")
    p.add_argument("--vector", default=None, help="a saved steering vector folder (instead of --source/--target)")
    p.add_argument("--layer", type=int, default=None, help="layer to steer (default: the vector's layer)")
    p.add_argument("--alpha", type=float, default=1.0, help="steering strength (default: 1)")
    p.add_argument("--positions", default="all", help="all, prompt, last_prompt, generated, image, text (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=10, help="generation length (default: 10)")
    p.add_argument("--out", required=True, help="output folder: vector/ and answers.jsonl")

    p = sub.add_parser(
        "evaluate",
        help="answer-type / target-answer rates and accuracy of answers; caption styles and CIDEr-D",
        description=_fmt(
            "Score an answers.jsonl (as written by `steer`) against its references: VQA accuracy per answer "
            "type, or for captions the style rates and CIDEr-D against the reference captions; "
            "with --baseline, also the changes relative to the unsteered answers.",
            "evaluate",
        ),
        formatter_class=raw,
    )
    p.add_argument("--answers", required=True, help="answers.jsonl written by `nnshift steer`")
    p.add_argument("--baseline", default=None, help="answers.jsonl of the unsteered model")
    p.add_argument("--target", default=None, help="target answer to count (e.g. no)")
    p.add_argument("--style", default=None, help="caption style whose keyword rate to report (colors, places)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here (default: print)")

    p = sub.add_parser(
        "report",
        help="an HTML report from saved results",
        description=_fmt("Collect the results.json and figures of a run folder into OUT/index.html.", "report"),
        formatter_class=raw,
    )
    p.add_argument("--run", required=True, help="folder holding results.json (e.g. what `nnshift demo` wrote)")
    p.add_argument("--out", required=True, help="report folder")
    return parser


def _require(path: str | None, what: str) -> Path:
    if path is None:
        raise CliError(f"missing {what}")
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} not found: {path}")
    return p


def _load_model(args: argparse.Namespace) -> Any:
    import nnshift as ns

    if args.model.startswith("shapes-"):
        from nnshift import zoo

        return zoo.load(args.model)
    kwargs: dict[str, Any] = {"dtype": getattr(args, "dtype", "float32")}
    if getattr(args, "device", None):
        kwargs["device_map"] = args.device
    return ns.load(args.model, lora=args.lora, **kwargs)


def _load_data(args: argparse.Namespace) -> list[Any]:
    from nnshift import data

    path = _require(args.data, "--data file")
    if args.annotations is not None or path.name.startswith("v2_") or "questions" in path.name:
        images = _require(args.images, "--images folder")
        return data.load_vqav2(path, args.annotations, images, limit=args.limit, seed=args.seed)
    if path.suffix == ".jsonl":
        samples = data.load_jsonl(path, args.images)
        if args.seed is not None:
            import random

            random.Random(args.seed).shuffle(samples)
        return samples[: args.limit] if args.limit else samples
    return data.load_coco_captions(path, _require(args.images, "--images folder"), limit=args.limit, seed=args.seed)


def cmd_capture(args: argparse.Namespace) -> int:
    """`nnshift capture`."""
    import nnshift as ns

    samples = _load_data(args)
    vlm = _load_model(args)
    layers = [int(x) for x in str(args.layer).split(",")]
    at = ns.positions.token_of_interest(args.token, variants=args.variants) if args.token else args.positions
    result = ns.capture(
        vlm,
        samples,
        layer=layers[0] if len(layers) == 1 else layers,
        at=at,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        reduce=args.reduce,
        out=args.out,
        shard_size=args.shard_size,
    )
    for acts in result.values() if isinstance(result, dict) else [result]:
        print(f"{acts!r} -> {args.out}")
    return 0


def _load_acts(path: str, what: str, layer: int | None = None) -> Any:
    import nnshift as ns

    return ns.load_activations(_require(path, what), layer)


def cmd_concepts(args: argparse.Namespace) -> int:
    """`nnshift concepts`."""
    import nnshift as ns

    acts = _load_acts(args.acts, "--acts", args.layer)
    dico = ns.concepts.fit(acts, k=args.k, method=args.method, seed=args.seed)
    if args.model:
        words = dico.ground_text(_load_model(args), top=args.top)
        dico.info["words"] = words
        for i, w in enumerate(words):
            print(f"concept {i:2d}: {' '.join(w)}")
    dico.save(args.out)
    print(f"{dico.k} {dico.method} concepts of {len(acts)} samples -> {args.out}")
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    """`nnshift shift`."""
    import nnshift as ns

    acts_a, acts_b = ns.pair(_load_acts(args.acts_a, "--acts-a"), _load_acts(args.acts_b, "--acts-b"))
    dico_a = ns.concepts.ConceptDictionary.load(_require(args.dico_a, "--dico-a"))
    dico_b = ns.concepts.ConceptDictionary.load(_require(args.dico_b, "--dico-b"))
    vlm = _load_model(args) if args.model else None
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=args.alpha, vlm=vlm)
    report.save(args.out)
    print(json.dumps(report.summary(), indent=2, default=str))
    print(f"shift report -> {args.out}")
    return 0


def _write_answers(path: Path, samples: Sequence[Any], answers: Sequence[str]) -> None:
    from nnshift.store import atomic_write_bytes

    lines = [
        json.dumps({"id": s.id, "prompt": s.prompt, "answer": a, "answers": s.answers, "meta": s.meta}, default=str)
        for s, a in zip(samples, answers, strict=True)
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def cmd_steer(args: argparse.Namespace) -> int:
    """`nnshift steer`."""
    import nnshift as ns

    if args.vector:
        vec = ns.steering.SteeringVector.load(_require(args.vector, "--vector"))
    elif args.source and args.target:
        vec = ns.steering.coarse(_load_acts(args.source, "--source"), _load_acts(args.target, "--target"))
    else:
        raise CliError("give --vector, or both --source and --target activations")
    layer = args.layer if args.layer is not None else vec.layer
    if layer is None:
        raise CliError("the vector has no layer: pass --layer")
    samples = _load_data(args)
    vlm = _load_model(args)
    patch = vec.patch(alpha=args.alpha, positions=args.positions, layer=layer)
    answers = ns.steer(
        vlm, samples, patch, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, remote=args.remote
    )
    out = Path(args.out)
    vec.save(out / "vector")
    _write_answers(out / "answers.jsonl", samples, answers)
    print(f"steered {len(answers)} answers (layer {layer}, alpha {args.alpha}, {args.positions}) -> {out}")
    return 0


def _read_answers(path: str, what: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(_require(path, what).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CliError(f"{what} {path} line {n} is not JSON") from exc
    if not rows or "answer" not in rows[0]:
        raise CliError(f"{what} {path} is not an answers.jsonl written by `nnshift steer`")
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`nnshift evaluate`."""
    import nnshift as ns

    rows = _read_answers(args.answers, "--answers")
    samples = [
        ns.Sample(id=r["id"], prompt=r.get("prompt", ""), answers=r.get("answers", []), meta=r.get("meta", {}))
        for r in rows
    ]
    after = [r["answer"] for r in rows]
    is_vqa = any("answer_type" in s.meta for s in samples)
    # caption quality (CIDEr-D) when every caption has reference captions
    refs = [s.answers for s in samples] if samples and all(s.answers for s in samples) else None
    result: dict[str, Any]
    if args.baseline:
        base = {r["id"]: r["answer"] for r in _read_answers(args.baseline, "--baseline")}
        missing = [s.id for s in samples if s.id not in base]
        if missing:
            raise CliError(f"--baseline lacks {len(missing)} of the samples (e.g. {missing[0]}); use the same dataset")
        before = [base[s.id] for s in samples]
        if is_vqa:
            result = ns.evaluate.compare_vqa(before, after, samples, target=args.target).to_dict()
        else:
            styles = [args.style] if args.style else None
            result = ns.evaluate.compare_captions(before, after, styles, references=refs).to_dict()
    elif is_vqa:
        result = ns.evaluate.evaluate_vqa(after, samples).to_dict()
    else:
        styles = [args.style] if args.style else None
        result = ns.evaluate.caption_report(after, styles).to_dict()
        if refs is not None:
            result["cider"] = ns.evaluate.cider_d(after, refs).score
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        from nnshift.store import atomic_write_bytes

        atomic_write_bytes(Path(args.out), text.encode())
        print(f"metrics -> {args.out}")
    else:
        print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`nnshift report`."""
    from nnshift.report import Report

    run = _require(args.run, "--run folder")
    results_file = run / "results.json"
    if not results_file.exists():
        raise CliError(f"{results_file} not found: --run must be a folder written by `nnshift demo`")
    try:
        results = json.loads(results_file.read_text())
    except json.JSONDecodeError as exc:
        raise CliError(f"{results_file} is not valid JSON") from exc
    rep = Report("nnshift report", args.out, subtitle=f"from {run}")
    timings = results.pop("timings_s", {})
    for name, value in results.items():
        sec = rep.section(name.replace("_", " "))
        if isinstance(value, dict):
            flat = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            if flat:
                sec.tables.append((name, [flat]))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            sec.tables.append((name, value))
        else:
            sec.text = str(value)
    pngs = sorted(run.glob("*.png"))
    if pngs:
        import shutil

        figs = rep.section("Figures")
        for png in pngs:
            if Path(args.out).resolve() != run.resolve():
                shutil.copy(png, Path(args.out) / png.name)
            figs.figures.append((png.stem.replace("_", " "), png.name))
    rep.timings.update(timings)
    rep.results.update(results)
    print(f"report -> {rep.write()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`nnshift demo`."""
    from nnshift.demo import run_demo

    path = run_demo(args.out, fast=args.fast)
    print(f"report -> {path}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "capture": cmd_capture,
    "concepts": cmd_concepts,
    "shift": cmd_shift,
    "steer": cmd_steer,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nnshift` console script."""
    from nnshift.errors import NnshiftError

    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("nnshift: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (NnshiftError, CliError) as exc:
        print(f"nnshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"nnshift {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
