"""`nnshift store verify DIR` / `nnshift store repair DIR`: check an activation store, drop its bad shards."""

from __future__ import annotations

import argparse

from nnshift.cli.common import CliError, Command, require

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The actions of `nnshift store`."""
    actions = p.add_subparsers(dest="action", required=True, metavar="{verify,repair}")
    verify = actions.add_parser(
        "verify", help="list every problem of a store (exit 1 if there is one)", description="List every problem."
    )
    verify.add_argument("dir", help="activation store folder (the --out of nnshift capture)")
    repair = actions.add_parser(
        "repair",
        help="drop the shards that fail their checks; the next capture recaptures exactly those samples",
        description="Drop the shards that fail; keep the rest. Run the same capture again to fill the gap.",
    )
    repair.add_argument("dir", help="activation store folder (the --out of nnshift capture)")


def run(args: argparse.Namespace) -> int:
    """Verify (exit 1 on problems) or repair the store."""
    from nnshift import store

    folder = require(args.dir, "store folder", "dir")
    name = f"{args.action}_store"
    func = getattr(store, name, None)
    if func is None:
        raise CliError(f"this version of nnshift has no nnshift.store.{name}", "upgrade nnshift")
    lines = [str(x) for x in func(folder)]
    if args.action == "verify":
        for line in lines:
            print(line)
        print(f"{folder}: {len(lines)} problem(s)" if lines else f"{folder}: ok")
        return 1 if lines else 0
    for line in lines:
        print(line)
    print(f"{folder}: repaired ({len(lines)} change(s)); run the same capture again to recapture what was dropped")
    return 0


COMMAND = Command(
    name="store",
    help="verify or repair an activation store",
    description=(
        "verify lists every problem of an activation store (checksums, manifest, shards); repair drops the "
        "shards that fail and keeps the rest, so that the same `nnshift capture` recaptures exactly the "
        "missing samples."
    ),
    example="nnshift store verify runs/base-circle",
    add_arguments=add_arguments,
    run=run,
)
