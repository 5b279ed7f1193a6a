"""`nnshift capture`: residual-stream states at selected positions, streamed to a resumable store."""

from __future__ import annotations

import argparse

from nnshift.cli.common import Command, add_data_args, add_generation_args, add_model_args, layer_list, positive_int
from nnshift.cli.loaders import load_data, load_model, remote_kwargs

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift capture`."""
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--layer",
        type=layer_list,
        default=[-1],
        help="decoder layer(s), comma-separated; negative counts from the end, e.g. --layer -1,1 (default: -1)",
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
    add_generation_args(p, max_new_tokens=32)
    p.add_argument(
        "--shard-size", type=positive_int, default=256, help="samples per shard written to disk (default: 256)"
    )
    p.add_argument("--out", required=True, help="activation store folder (created; resumed if it exists)")


def run(args: argparse.Namespace) -> int:
    """Capture into the store --out."""
    import nnshift as ns
    from nnshift.cli.common import CliError

    if args.variants and not args.token:
        raise CliError("--variants applies to --token", "add --token WORD, or drop --variants")
    if args.token is not None and not args.token.strip():
        raise CliError("--token is empty", "give the word of interest, e.g. --token circle")
    remote = remote_kwargs(ns.capture, args, "capture")
    samples = load_data(args)
    vlm = load_model(args)
    at = ns.positions.token_of_interest(args.token, variants=args.variants) if args.token else args.positions
    layers: list[int] = args.layer
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
        **remote,
    )
    for acts in result.values() if isinstance(result, dict) else [result]:
        print(f"{acts!r} -> {args.out}")
    return 0


COMMAND = Command(
    name="capture",
    help="capture residual-stream states at selected positions",
    description=(
        "Run the model on a dataset and store the states of --layer at --positions "
        "(or at the token of interest --token) in an activation store. Interrupted? "
        "Run the same command again: it resumes."
    ),
    example=(
        "nnshift capture --model shapes-base --data captions.json --images imgs/ --layer -1 --token circle "
        "--out runs/base-circle"
    ),
    add_arguments=add_arguments,
    run=run,
)
