"""`nnshift demo`: the whole method on the shapes world, with an HTML report."""

from __future__ import annotations

import argparse

from nnshift.cli.common import Command

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift demo`."""
    p.add_argument("--out", default="nnshift-report", help="report folder (default: nnshift-report)")
    p.add_argument("--fast", action="store_true", help="fewer samples (a smoke run)")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where its report is."""
    from nnshift.demo import run_demo

    path = run_demo(args.out, fast=args.fast)
    print(f"report -> {path}")
    return 0


COMMAND = Command(
    name="demo",
    help="the whole method on the shapes world, with an HTML report",
    description=(
        "Capture, concepts, shift analysis, steering and evaluation on the embedded "
        "shapes world; writes OUT/index.html, PNG figures and results.json."
    ),
    example="nnshift demo --out nnshift-report",
    add_arguments=add_arguments,
    run=run,
)
