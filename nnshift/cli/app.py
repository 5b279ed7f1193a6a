"""The `nnshift` parser and entry point: one-line errors with a hint (exit 2), Ctrl-C exits 130, --debug."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from nnshift.cli import capture, concepts, demo, evaluate, generate, report, shift, steer, store, sweep
from nnshift.cli.common import ArgParser, Command
from nnshift.cli.interrupt import report_interrupt, restore
from nnshift.cli.loaders import validate_model_args
from nnshift.errors import NnshiftError

__all__ = ["COMMANDS", "DESCRIPTION", "build_parser", "main", "prepare_argv"]

DESCRIPTION = """The `nnshift` command: demo, capture, concepts, shift, generate, steer, sweep, evaluate, report, store.

Every subcommand reads and writes the library's on-disk formats, so a run on a real model is the same
commands with another --model. Errors print one line with what to do and exit with status 2 (add --debug
for the traceback); Ctrl-C exits with status 130, and an interrupted capture resumes when run again.
"""

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        demo.COMMAND,
        capture.COMMAND,
        concepts.COMMAND,
        shift.COMMAND,
        generate.COMMAND,
        steer.COMMAND,
        sweep.COMMAND,
        evaluate.COMMAND,
        report.COMMAND,
        store.COMMAND,
    )
}


def build_parser() -> ArgParser:
    """The argument parser of the `nnshift` command (errors raise `CliError`)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = ArgParser(prog="nnshift", description=DESCRIPTION, formatter_class=raw)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback (any position)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.full_description(), formatter_class=raw)
        c.add_arguments(p)
    return parser


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(every option string, the options that take one value) of ``parser`` and its subcommands."""
    every: set[str] = set()
    valued: set[str] = set()
    for action in parser._actions:
        every |= set(action.option_strings)
        if action.option_strings and action.nargs is None:
            valued |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                e, v = _options(child)
                every |= e
                valued |= v
    return every, valued


def prepare_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Join ``--opt -1,1`` into ``--opt=-1,1``: argparse would read a value that starts with '-' as an option."""
    every, valued = _options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out += argv[i:]
            break
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in valued and nxt is not None and nxt.startswith("-") and nxt not in every and nxt != "--":
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _prefix(argv: Sequence[str]) -> str:
    words = ["nnshift"]
    command = next((a for a in argv if a in COMMANDS), None)
    if command is not None:
        words.append(command)
        rest = argv[list(argv).index(command) + 1 :]
        if command == "store" and rest and rest[0] in ("verify", "repair"):
            words.append(rest[0])
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nnshift` console script and of ``python -m nnshift``."""
    args_list = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in args_list
    args_list = [a for a in args_list if a != "--debug"]
    prefix = _prefix(args_list)
    try:
        restore()
        parser = build_parser()
        args = parser.parse_args(prepare_argv(parser, args_list))
        validate_model_args(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        report_interrupt()
        return 130
    except (NnshiftError, OSError, json.JSONDecodeError) as exc:
        if debug:
            raise
        print(f"{prefix}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        hint = "rerun with --debug for the traceback, and report it if the inputs are right"
        print(f"{prefix}: internal error: {type(exc).__name__}: {_one_line(str(exc))} ({hint})", file=sys.stderr)
        return 1
