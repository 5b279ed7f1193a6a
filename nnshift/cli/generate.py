"""`nnshift generate`: the model's unsteered (baseline) answers, as answers.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnshift.cli.common import Command, add_data_args, add_generation_args, add_model_args
from nnshift.cli.loaders import load_data, load_model, remote_kwargs, write_answers

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift generate`."""
    add_model_args(p)
    add_data_args(p)
    add_generation_args(p, max_new_tokens=10)
    p.add_argument("--out", required=True, help="output folder: answers.jsonl (or a path ending in .jsonl)")


def answers_path(out: str) -> Path:
    """``out`` itself when it names a .jsonl file, else ``out/answers.jsonl``."""
    path = Path(out)
    return path if path.suffix == ".jsonl" else path / "answers.jsonl"


def run(args: argparse.Namespace) -> int:
    """Generate greedy answers and write them."""
    import nnshift as ns

    remote = remote_kwargs(ns.generate, args, "generate")
    samples = load_data(args)
    vlm = load_model(args)
    answers = ns.generate(vlm, samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **remote)
    path = answers_path(args.out)
    write_answers(path, samples, answers)
    print(f"{len(answers)} answers -> {path}")
    return 0


COMMAND = Command(
    name="generate",
    help="the model's unsteered answers (a baseline for evaluate and steer)",
    description=(
        "Greedy answers of --model (with --lora) for every sample of --data, written as answers.jsonl "
        "(id, prompt, answer, reference answers, meta): the baseline of `nnshift evaluate --baseline`."
    ),
    example="nnshift generate --model shapes-base --data vqa.jsonl --out runs/base",
    add_arguments=add_arguments,
    run=run,
)
