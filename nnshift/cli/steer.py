"""`nnshift steer`: make a steering vector of any kind (or load a saved one) and apply it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nnshift.cli.common import (
    CliError,
    Command,
    add_allow_partial,
    add_data_args,
    add_generation_args,
    add_model_args,
    add_vector_args,
    finite_float,
    layer_int,
    name_list,
    non_negative_int,
    positive_int,
)
from nnshift.cli.loaders import (
    load_acts,
    load_artifact,
    load_data,
    load_model,
    load_vector,
    remote_kwargs,
    write_answers,
    write_json,
)

__all__ = ["COMMAND"]

_KINDS = (
    "--vector DIR | --patch DIR | --source ACTS --target ACTS (coarse) | --acts ACTS --source-answer A "
    "--target-answer B | --acts ACTS --source-type T --target-type U | --concepts DICT --fine I,J | "
    "--concepts DICT --by-impact"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift steer`."""
    add_model_args(p)
    add_data_args(p)
    g = add_vector_args(p, "the steering vector (one kind)")
    g.add_argument("--source", default=None, help="coarse: activations of the source set")
    g.add_argument("--target", default=None, help="coarse: activations of the target set")
    g.add_argument("--acts", default=None, help="activations for --source-answer/--target-answer or answer types")
    g.add_argument("--source-answer", type=name_list, default=None, help="target answer: from these answers (yes)")
    g.add_argument("--target-answer", type=name_list, default=None, help="target answer: to these answers (no)")
    g.add_argument(
        "--match", choices=["exact", "first_word"], default="exact", help="how answers are compared (default: exact)"
    )
    g.add_argument("--source-type", default=None, help="answer type: from this type (yes/no, number, other)")
    g.add_argument("--target-type", default=None, help="answer type: to this type")
    g.add_argument("--concepts", "--dico", dest="concepts", default=None, help="a concept dictionary folder")
    g.add_argument("--fine", default=None, help="fine-grained: concept I to concept J, as I,J (u_J - u_I)")
    g.add_argument(
        "--by-impact", action="store_true", help="fine-grained: try every pair I->J, keep the one that steers most"
    )
    g.add_argument(
        "--impact-samples",
        type=positive_int,
        default=None,
        help="with --by-impact: rank the pairs on the first N samples (default: all)",
    )
    g.add_argument(
        "--max-targets",
        type=non_negative_int,
        default=1,
        help="with --by-impact: keep pairs that steer to at most this many answers, 0 = any (default: 1)",
    )
    add_allow_partial(p)
    p.add_argument("--layer", type=layer_int, default=None, help="layer to steer (default: the vector's layer)")
    p.add_argument("--alpha", type=finite_float, default=None, help="steering strength (default: 1)")
    p.add_argument("--positions", default=None, help="all, prompt, last_prompt, generated, image, text (default: all)")
    add_generation_args(p, max_new_tokens=10)
    p.add_argument("--out", required=True, help="output folder: vector/ (or patch/), answers.jsonl, steer.json")


def _kind(args: argparse.Namespace) -> str:
    """Which vector the options ask for; CliError for none, several, or a half-given kind."""
    wanted = {
        "vector": args.vector is not None,
        "patch": args.patch is not None,
        "coarse": args.source is not None or args.target is not None,
        "target_answer": args.source_answer is not None or args.target_answer is not None,
        "answer_type": args.source_type is not None or args.target_type is not None,
        "fine": args.fine is not None,
        "by_impact": args.by_impact,
    }
    kinds = [k for k, on in wanted.items() if on]
    if len(kinds) != 1:
        got = "none" if not kinds else " and ".join(kinds)
        raise CliError(f"give exactly one kind of steering vector (got {got})", f"use one of: {_KINDS}")
    kind = kinds[0]
    pairs = {
        "coarse": (args.source, args.target, "--source and --target"),
        "target_answer": (args.source_answer, args.target_answer, "--source-answer and --target-answer"),
        "answer_type": (args.source_type, args.target_type, "--source-type and --target-type"),
    }
    if kind in pairs and (pairs[kind][0] is None or pairs[kind][1] is None):
        raise CliError(f"{kind.replace('_', ' ')} needs both {pairs[kind][2]}", f"use one of: {_KINDS}")
    if kind in ("target_answer", "answer_type") and args.acts is None:
        raise CliError(f"{kind.replace('_', ' ')} needs --acts (the captured activations)", "add --acts")
    if kind in ("fine", "by_impact") and args.concepts is None:
        raise CliError(f"{kind.replace('_', ' ')} needs --concepts (a concept dictionary)", "add --concepts")
    if kind != "by_impact" and (args.impact_samples is not None or args.max_targets != 1):
        raise CliError("--impact-samples and --max-targets apply to --by-impact", "drop them")
    if kind == "patch" and (args.alpha is not None or args.positions is not None or args.layer is not None):
        raise CliError("a saved --patch carries its own alpha, positions and layer", "drop --alpha/--positions/--layer")
    return kind


def _fine_pair(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise CliError(f"--fine {text!r}: expected two concept indices I,J", "e.g. --fine 3,7")
    return int(parts[0]), int(parts[1])


def _make_vector(args: argparse.Namespace, kind: str) -> Any:
    """The SteeringVector (or saved Patch) the options ask for, except --by-impact."""
    import nnshift as ns

    if kind == "vector":
        return load_vector(args.vector, "pass the folder of one SteeringVector.save")
    if kind == "patch":
        load = getattr(ns.steering.Patch, "load", None)
        if load is None:
            raise CliError("--patch: this version of nnshift cannot load saved patches", "use --vector")
        return load_artifact(load, args.patch, "--patch")
    partial = args.allow_partial
    if kind == "coarse":
        return ns.steering.coarse(
            load_acts(args.source, "--source", args.layer, partial),
            load_acts(args.target, "--target", args.layer, partial),
        )
    if kind in ("target_answer", "answer_type"):
        acts = load_acts(args.acts, "--acts", args.layer, partial)
        if kind == "target_answer":
            return ns.steering.target_answer(acts, args.source_answer, args.target_answer, match=args.match)
        return ns.steering.answer_type_vector(acts, args.source_type, args.target_type)
    i, j = _fine_pair(args.fine)
    dico = load_artifact(ns.concepts.ConceptDictionary.load, args.concepts, "--concepts")
    return ns.steering.fine(dico, i, j)


def _by_impact(args: argparse.Namespace, vlm: Any, samples: list[Any], alpha: float, positions: str) -> Any:
    """Rank every fine pair of --concepts by impact on the samples; write impact.json; return the best vector."""
    import nnshift as ns

    dico = load_artifact(ns.concepts.ConceptDictionary.load, args.concepts, "--concepts")
    candidates: dict[Any, Any] = dict(ns.steering.fine_all(dico, layer=args.layer))
    chosen = samples[: args.impact_samples] if args.impact_samples else samples
    ranked = ns.steering.by_impact(
        vlm,
        chosen,
        candidates,
        alpha=alpha,
        positions=positions,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        max_targets=args.max_targets or None,
    )
    if not ranked:
        raise CliError(
            f"no pair of the {dico.k} concepts steers the answers towards one answer at alpha {alpha}",
            "try a larger --alpha, another --layer, or more samples",
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "impact.json", [s.to_dict() for s in ranked])
    best = ranked[0]
    print(f"best pair {best.key} (score {best.score:g}) steers to {best.targets}")
    return candidates[best.key]


def run(args: argparse.Namespace) -> int:
    """Build or load the vector, apply it to --data, write answers.jsonl and steer.json."""
    import nnshift as ns

    kind = _kind(args)
    alpha = 1.0 if args.alpha is None else args.alpha
    positions = "all" if args.positions is None else args.positions
    remote = remote_kwargs(ns.steer, args, "steer")
    made: Any = None if kind == "by_impact" else _make_vector(args, kind)
    layer = args.layer if args.layer is not None or made is None else getattr(made, "layer", None)
    if layer is None and kind not in ("by_impact", "patch"):
        raise CliError("the vector has no layer", "pass --layer")
    samples = load_data(args)
    vlm = load_model(args)
    if kind == "by_impact":
        made = _by_impact(args, vlm, samples, alpha, positions)
        layer = args.layer if args.layer is not None else made.layer
        if layer is None:
            raise CliError("the concept dictionary records no layer", "pass --layer")
    patch = made if kind == "patch" else made.patch(alpha=alpha, positions=positions, layer=layer)
    answers = ns.steer(vlm, samples, patch, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **remote)
    out = Path(args.out)
    made.save(out / ("patch" if kind == "patch" else "vector"))
    write_answers(out / "answers.jsonl", samples, answers)
    settings = {"kind": kind, "layer": layer, "alpha": alpha, "positions": positions, "samples": len(samples)}
    write_json(out / "steer.json", {**settings, "model": args.model, "lora": args.lora, "vector": repr(made)})
    print(f"steered {len(answers)} answers ({kind}, layer {layer}, alpha {alpha}, {positions}) -> {out}")
    return 0


COMMAND = Command(
    name="steer",
    help="make a steering vector (coarse, target answer, answer type, fine, by impact) and apply it",
    description=(
        "Build one steering vector: coarse mean(target) - mean(source) from two activation stores, target "
        "answer (--source-answer yes --target-answer no), answer type (--source-type yes/no --target-type "
        "number), fine-grained concept I -> J (--fine I,J), or the fine pair chosen by impact (--by-impact); "
        "or load a saved --vector / --patch. Apply it to --layer at --positions with --alpha; write the "
        "vector and the steered answers."
    ),
    example=(
        "nnshift steer --model shapes-base --source runs/yesno --target runs/number --alpha 1 "
        "--data vqa.jsonl --out runs/steer"
    ),
    add_arguments=add_arguments,
    run=run,
)
