"""Pieces shared by the subcommands: the error type, the argument parser, argument types and option groups."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from nnshift.errors import NnshiftError

__all__ = [
    "CliError",
    "ArgParser",
    "Command",
    "positive_int",
    "non_negative_int",
    "layer_int",
    "layer_list",
    "finite_float",
    "float_list",
    "name_list",
    "add_model_args",
    "add_data_args",
    "add_generation_args",
    "add_allow_partial",
    "add_vector_args",
    "require",
]

_HELP_HINT = "see `nnshift {cmd} --help`"


class CliError(NnshiftError):
    """A user error on the command line: printed as one line with its hint, exit status 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "see `nnshift --help`")


class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise `CliError` (one line, with a hint) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        """Raise CliError: the caller prints it as one line."""
        raise CliError(message, f"see `{self.prog} --help`")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, description, example, options and handler."""

    name: str
    help: str
    description: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def full_description(self) -> str:
        """The description followed by the example (shown by --help)."""
        return f"{self.description}\n\nexample:\n  {self.example}"


# ---------------------------------------------------------------------------- argument types

_INT = re.compile(r"^[+-]?\d+$")


def _int(text: str, what: str) -> int:
    s = text.strip()
    if not _INT.match(s):
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}")
    return int(s)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "the value")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "the value")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def layer_int(text: str) -> int:
    """One decoder layer index (negative counts from the end)."""
    return _int(text, "a layer")


def layer_list(text: str) -> list[int]:
    """Comma-separated decoder layer indices, e.g. ``-1`` or ``-1,1`` (no duplicates)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers such as -1 or 2,4, got {text!r}")
    layers = [_int(p, "each layer") for p in parts]
    if len(set(layers)) != len(layers):
        raise argparse.ArgumentTypeError(f"layer listed twice in {text!r}")
    return layers


def finite_float(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers."""
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return [finite_float(p) for p in parts]


def name_list(text: str) -> list[str]:
    """Comma-separated non-empty names."""
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


# ---------------------------------------------------------------------------- option groups


def add_model_args(p: argparse.ArgumentParser, required: bool = True, remote: bool = True) -> None:
    """--model, --lora, --device, --dtype (and --remote when the command can run on NDIF)."""
    p.add_argument(
        "--model",
        required=required,
        default=None,
        help="a zoo name (shapes-base, ...), a Hugging Face id or a local model folder",
    )
    p.add_argument("--lora", default=None, help="a PEFT LoRA adapter folder applied on top of --model")
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto = the visible GPU(s) when there is one, else cpu)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16 or auto (default: auto = the checkpoint's own dtype)",
    )
    p.add_argument(
        "--processor-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="an option for the processor's from_pretrained, repeatable (e.g. max_pixels=1003520 for Qwen2-VL); "
        "VALUE is read as JSON when it parses, else as a string",
    )
    if remote:
        p.add_argument(
            "--remote", action="store_true", help="run on NDIF (remote=True); hub models only, see docs/remote.md"
        )


def processor_options(pairs: Sequence[str] | None) -> dict[str, Any] | None:
    """``--processor-option KEY=VALUE`` pairs as a dict (values parsed as JSON when they parse)."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(
                f"--processor-option {pair!r} is not KEY=VALUE", "e.g. --processor-option max_pixels=1003520"
            )
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--data, --annotations, --images, --limit, --seed, --answer-types, --split."""
    p.add_argument(
        "--data",
        required=True,
        help="a dataset: COCO captions JSON (official or Karpathy), VQAv2 questions JSON, or JSONL",
    )
    p.add_argument("--annotations", default=None, help="VQAv2 annotations JSON (with --data the questions JSON)")
    p.add_argument("--images", default=None, help="image folder (COCO / VQAv2; JSONL paths are relative to it)")
    p.add_argument(
        "--limit", type=non_negative_int, default=None, help="keep at most this many samples (after --seed shuffle)"
    )
    p.add_argument("--seed", type=int, default=None, help="shuffle the dataset with this seed before --limit")
    p.add_argument(
        "--answer-types",
        type=name_list,
        default=None,
        help="keep these answer types, comma-separated (yes/no, number, other): VQAv2, or JSONL meta.answer_type",
    )
    p.add_argument(
        "--split",
        default=None,
        help="keep this split (train, restval, val, test): Karpathy's dataset_coco.json, or JSONL meta.split",
    )


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """--batch-size and --max-new-tokens (both at least 1)."""
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per batch (default: 16)")
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=max_new_tokens,
        help=f"greedy generation length (default: {max_new_tokens})",
    )


def add_allow_partial(p: argparse.ArgumentParser) -> None:
    """--allow-partial: read activation stores whose capture did not finish."""
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="also read activation stores whose capture did not finish (default: refuse them)",
    )


def add_vector_args(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The group ``title`` with --vector and --patch (a saved SteeringVector or Patch folder), for more kinds."""
    g = p.add_argument_group(title)
    g.add_argument("--vector", default=None, help="a saved steering vector folder (SteeringVector.save)")
    g.add_argument("--patch", default=None, help="a saved patch folder (Patch.save): its vector, layer and positions")
    return g


def require(path: str | None, what: str, kind: str = "any") -> Path:
    """``path`` as a Path; CliError if it is missing (or not a file / folder when ``kind`` says so)."""
    if path is None:
        raise CliError(f"missing {what}", f"pass {what.split()[0]}")
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} not found: {path}", "check the path")
    if kind == "file" and not p.is_file():
        raise CliError(f"{what} must be a file: {path} is a folder", "pass the file itself")
    if kind == "dir" and not p.is_dir():
        raise CliError(f"{what} must be a folder: {path} is a file", "pass the folder")
    return p
