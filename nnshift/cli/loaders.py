"""What the subcommands read and write: models, datasets, activation stores and answers.jsonl files."""

from __future__ import annotations

import argparse
import inspect
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nnshift.cli.common import CliError, processor_options, require

__all__ = [
    "resolve_device",
    "check_dtype",
    "validate_model_args",
    "load_artifact",
    "load_model",
    "load_data",
    "load_acts",
    "load_vector",
    "remote_kwargs",
    "write_answers",
    "read_answers",
    "write_json",
]

_DTYPES = {"auto", "float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16"}
_ANSWER_TYPES = {"yes/no", "number", "other"}


def resolve_device(device: str | None) -> str | None:
    """The ``device_map`` for ``ns.load`` (None = CPU); CliError for a device that is not there."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "auto" if torch.cuda.is_available() else None  # HF places the layers on the visible GPU(s)
    if d == "cpu":
        return None
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CliError(
                f"--device {device}: no CUDA GPU is visible to this process",
                "use --device cpu (or auto), or check the driver and CUDA_VISIBLE_DEVICES",
            )
        index = d.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise CliError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)",
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
            )
        return d
    if d == "mps":
        if not torch.backends.mps.is_available():
            raise CliError("--device mps: Apple's MPS backend is not available here", "use --device cpu or auto")
        return d
    raise CliError(f"unknown --device {device!r}", "use cpu, cuda, cuda:N, mps or auto")


def check_dtype(dtype: str | None) -> str:
    """The --dtype value, checked."""
    d = (dtype or "auto").strip().lower()
    if d not in _DTYPES:
        raise CliError(f"unknown --dtype {dtype!r}", "use float32, bfloat16, float16 or auto")
    return d


def validate_model_args(args: argparse.Namespace) -> None:
    """Check --device, --dtype and --lora before any work (no model is loaded)."""
    if getattr(args, "model", None) is None:
        return
    check_dtype(getattr(args, "dtype", "auto"))
    resolve_device(getattr(args, "device", "auto"))
    if getattr(args, "remote", False) and Path(str(args.model)).exists():
        raise CliError(
            f"--remote: NDIF loads models by hub id; {args.model} is a local folder",
            "pass the hub id, or drop --remote",
        )
    if getattr(args, "lora", None) is not None:
        require(args.lora, "--lora adapter folder", "dir")


def load_artifact(loader: Callable[[Path], Any], path: str | None, what: str) -> Any:
    """``loader(path)`` for a saved artifact; a structurally broken file (null, [], missing keys) is a CliError."""
    from nnshift.errors import NnshiftError

    folder = require(path, what, "dir")
    try:
        return loader(folder)
    except NnshiftError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise CliError(
            f"{what} {folder} is broken ({type(exc).__name__}: {exc})", "write it again with the nnshift command"
        ) from exc


def load_vector(path: str, several: str) -> Any:
    """The SteeringVector saved in ``path`` (--vector); a save_vectors folder is a CliError with hint ``several``."""
    import nnshift as ns

    folder = require(path, "--vector folder", "dir")
    if (folder / "vectors.json").exists() and not (folder / "vector.json").exists():
        raise CliError(f"{folder} holds several vectors (save_vectors)", several)
    return load_artifact(ns.steering.SteeringVector.load, path, "--vector")


def load_model(args: argparse.Namespace) -> Any:
    """Load ``--model`` (zoo name, folder or hub id) with its --lora, --dtype and --device, whatever the source."""
    import nnshift as ns
    from nnshift import zoo

    name = str(args.model)
    lora = getattr(args, "lora", None)
    lora_path = None if lora is None else str(require(lora, "--lora adapter folder", "dir"))
    kwargs: dict[str, Any] = {"dtype": check_dtype(getattr(args, "dtype", "auto"))}
    device_map = resolve_device(getattr(args, "device", "auto"))
    if device_map is not None:
        kwargs["device_map"] = device_map
    options = processor_options(getattr(args, "processor_option", None))
    if options is not None:
        kwargs["processor_options"] = options
    if name in zoo.names() or (name.startswith("shapes-") and not Path(name).exists()):
        if getattr(args, "remote", False):
            raise CliError(f"--remote: the zoo model {name} is not hosted on NDIF", "drop --remote to run it locally")
        return zoo.load(name, lora=lora_path, **kwargs)
    return ns.load(name, lora=lora_path, **kwargs)


def remote_kwargs(func: Callable[..., Any], args: argparse.Namespace, what: str) -> dict[str, Any]:
    """``{"remote": True}`` when --remote is set and ``func`` supports it; CliError when it does not."""
    if not getattr(args, "remote", False):
        return {}
    if "remote" not in inspect.signature(func).parameters:
        raise CliError(f"--remote: {what} cannot run on NDIF in this version of nnshift", "drop --remote")
    return {"remote": True}


def _filter_meta(samples: list[Any], key: str, wanted: Sequence[str] | None, flag: str, path: Path) -> list[Any]:
    if wanted is None:
        return samples
    if samples and not any(key in s.meta for s in samples):
        raise CliError(
            f"{flag}: no sample of {path} has meta.{key}", f"add meta.{key} to the JSONL rows, or drop {flag}"
        )
    return [s for s in samples if s.meta.get(key) in set(wanted)]


def _load_vqa(args: argparse.Namespace, path: Path) -> list[Any]:
    from nnshift import data

    if args.split is not None:
        raise CliError("--split selects COCO captions (Karpathy) or JSONL splits, not VQAv2", "drop --split")
    images = require(args.images, "--images folder", "dir")
    annotations = None if args.annotations is None else require(args.annotations, "--annotations file", "file")
    if args.answer_types is not None and annotations is None:
        raise CliError("--answer-types needs the VQAv2 annotations", "pass --annotations v2_mscoco_*_annotations.json")
    return data.load_vqav2(path, annotations, images, answer_types=args.answer_types, limit=args.limit, seed=args.seed)


def _load_jsonl(args: argparse.Namespace, path: Path) -> list[Any]:
    from nnshift import data

    samples = data.load_jsonl(path, args.images)
    samples = _filter_meta(samples, "answer_type", args.answer_types, "--answer-types", path)
    samples = _filter_meta(samples, "split", None if args.split is None else [args.split], "--split", path)
    if args.seed is not None:
        random.Random(args.seed).shuffle(samples)
    return samples if args.limit is None else samples[: args.limit]


def _load_coco(args: argparse.Namespace, path: Path) -> list[Any]:
    from nnshift import data

    if args.answer_types is not None:
        raise CliError("--answer-types selects VQAv2 (or JSONL) answer types; captions have none", "drop it")
    images = require(args.images, "--images folder", "dir")
    samples = data.load_coco_captions(path, images, split=args.split, limit=args.limit, seed=args.seed)
    if args.split is not None and args.limit != 0 and (not samples or "split" not in samples[0].meta):
        raise CliError(
            f"--split {args.split}: {path} has no such split (or is not Karpathy's dataset_coco.json)",
            "use train, restval, val or test with dataset_coco.json, or drop --split",
        )
    return samples


def load_data(args: argparse.Namespace) -> list[Any]:
    """The samples of --data (VQAv2, JSONL or COCO captions) after --answer-types, --split, --seed, --limit."""
    path = require(args.data, "--data file", "file")
    if args.answer_types is not None and (bad := sorted(set(args.answer_types) - _ANSWER_TYPES)):
        raise CliError(f"--answer-types: unknown type(s) {bad}", f"use {sorted(_ANSWER_TYPES)}")
    if args.annotations is not None or path.name.startswith("v2_") or "questions" in path.name:
        samples = _load_vqa(args, path)
    elif path.suffix == ".jsonl":
        samples = _load_jsonl(args, path)
    else:
        samples = _load_coco(args, path)
    if not samples:
        raise CliError(f"--data {path} gave no samples", "check the file and the --limit / --answer-types / --split")
    return samples


def load_acts(path: str | None, what: str, layer: int | None = None, allow_partial: bool = False) -> Any:
    """`ns.load_activations` of a store or saved Activations folder, refusing partial stores unless allowed."""
    import nnshift as ns

    if not allow_partial:
        return load_artifact(lambda folder: ns.load_activations(folder, layer), path, what)
    if "allow_partial" not in inspect.signature(ns.load_activations).parameters:
        raise CliError("--allow-partial: this version of nnshift cannot read partial stores", "drop --allow-partial")
    partial: dict[str, Any] = {"allow_partial": True}  # the keyword is newer than some nnshift.store versions
    return load_artifact(lambda folder: ns.load_activations(folder, layer, **partial), path, what)


def write_json(path: Path, doc: Any) -> None:
    """Write JSON atomically."""
    from nnshift.store import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(doc, indent=2, default=str).encode())


def write_answers(path: Path, samples: Sequence[Any], answers: Sequence[str]) -> None:
    """Write one JSON line per sample: id, prompt, answer, answers (references), meta."""
    from nnshift.store import atomic_write_bytes

    lines = [
        json.dumps({"id": s.id, "prompt": s.prompt, "answer": a, "answers": s.answers, "meta": s.meta}, default=str)
        for s, a in zip(samples, answers, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


_ANSWERS_HINT = "pass an answers.jsonl written by `nnshift generate` or `nnshift steer`"


def _check_row(row: Any, n: int, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise CliError(f"{where} line {n} is a JSON {type(row).__name__}, not an object", _ANSWERS_HINT)
    if not isinstance(row.get("answer"), str):
        problem = "has no 'answer' field" if "answer" not in row else "has an 'answer' that is not text"
        raise CliError(f"{where} line {n} {problem}", _ANSWERS_HINT)
    refs = row.get("answers", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise CliError(f"{where} line {n}: 'answers' must be a list of strings", _ANSWERS_HINT)
    if not isinstance(row.get("meta", {}), dict):
        raise CliError(f"{where} line {n}: 'meta' must be an object", _ANSWERS_HINT)
    row.setdefault("id", str(n))
    row["id"] = str(row["id"])
    return row


def read_answers(path: str | None, what: str) -> list[dict[str, Any]]:
    """The rows of an answers.jsonl (or of DIR/answers.jsonl); CliError for a binary file, a non-object line, ..."""
    file = require(path, what)
    if file.is_dir():
        file = require(str(file / "answers.jsonl"), f"{what} answers.jsonl", "file")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{what} {file} is not a text file", _ANSWERS_HINT) from None
    if "\x00" in text:
        raise CliError(f"{what} {file} is not a text file", _ANSWERS_HINT)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise CliError(f"{what} {file} line {n} is not JSON", _ANSWERS_HINT) from None
            rows.append(_check_row(row, n, f"{what} {file}"))
    if not rows:
        raise CliError(f"{what} {file} has no answers", _ANSWERS_HINT)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CliError(f"{what} {file} lists sample {dup!r} twice", "write each sample once")
    return rows
