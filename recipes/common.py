"""What every recipe shares: the model and data options, loading them, and writing results.json.

A recipe runs on the paper's real model by default (``--model llava-hf/llava-1.5-7b-hf`` with COCO /
VQAv2 files given by path) and on the shapes world with ``--model shapes-base --data shapes``, which is
how CI runs it. Only the public nnshift API is used, so a recipe is also an example to copy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nnshift as ns

PAPER_MODEL = "llava-hf/llava-1.5-7b-hf"


def parser(description: str, *, finetune: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the model, data, size and output options every recipe takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=PAPER_MODEL, help="hub id, local folder or zoo name (e.g. shapes-base)")
    ap.add_argument("--lora", default=None, help="a PEFT adapter folder applied to --model")
    if finetune:
        ap.add_argument("--finetune", default=None, help="the fine-tuned model (zoo name or folder); default: --model")
        ap.add_argument("--finetune-lora", default=None, help="the fine-tune as a PEFT adapter on --model")
    ap.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16, float16")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--data", choices=["shapes", "vqav2", "coco"], default=None, help="shapes: the zoo's world")
    ap.add_argument("--questions", type=Path, help="VQAv2 train questions JSON")
    ap.add_argument("--annotations", type=Path, help="VQAv2 train annotations JSON")
    ap.add_argument("--eval-questions", type=Path, help="VQAv2 val questions JSON")
    ap.add_argument("--eval-annotations", type=Path, help="VQAv2 val annotations JSON")
    ap.add_argument("--captions", type=Path, help="Karpathy dataset_coco.json")
    ap.add_argument("--images", type=Path, help="COCO image folder")
    ap.add_argument("--n-train", type=int, default=2000, help="samples per training set")
    ap.add_argument("--n-eval", type=int, default=5000, help="evaluation samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and figures")
    return ap


def check_args(args: argparse.Namespace) -> None:
    """Refuse inconsistent options before any work (exit 2 with a message)."""
    if args.data is None:
        args.data = "shapes" if args.model in ns.zoo.names() else None
    if args.data is None:
        raise SystemExit("error: pass --data vqav2 or --data coco with their files (or --data shapes)")
    for name in ("n_train", "n_eval", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    need = {"vqav2": ("questions", "annotations", "eval_questions", "eval_annotations", "images"), "coco": ()}
    if args.data == "coco":
        need["coco"] = ("captions", "images")
    missing = [f"--{n.replace('_', '-')}" for n in need.get(args.data, ()) if getattr(args, n) is None]
    if missing:
        raise SystemExit(f"error: --data {args.data} needs {', '.join(missing)}")


def load_model(name: str, lora: str | None, args: argparse.Namespace) -> ns.VLM:
    """A zoo model or any model `ns.load` takes, with the recipe's dtype, device and adapter."""
    device_map = None if args.device in ("auto", "cpu") and name in ns.zoo.names() else args.device
    kwargs: dict[str, Any] = {"dtype": "float32" if args.dtype == "auto" and name in ns.zoo.names() else args.dtype}
    if name in ns.zoo.names():
        if lora is not None:
            return ns.load(str(ns.zoo.base_path(name)), lora=lora, device_map=device_map, **kwargs)
        return ns.zoo.load(name, device_map=device_map, **kwargs)
    return ns.load(name, lora=lora, device_map=device_map, **kwargs)


def vqa(args: argparse.Namespace, split: str, n: int, answer_type: str | None = None, seed: int = 0) -> list[ns.Sample]:
    """VQA samples: the shapes world's or VQAv2's (``split`` "train" or "eval"), optionally of one answer type."""
    if args.data == "shapes":
        return ns.zoo.dataset(n, task="vqa", answer_type=answer_type, seed=1000 * (split == "eval") + seed)
    q, a = (args.questions, args.annotations) if split == "train" else (args.eval_questions, args.eval_annotations)
    types = None if answer_type is None else [answer_type]
    return ns.data.load_vqav2(q, a, args.images, answer_types=types, limit=n, seed=args.seed + seed)


def captions(args: argparse.Namespace, split: str, n: int, seed: int = 0) -> list[ns.Sample]:
    """Caption samples: the shapes world's generic captions, or Karpathy's COCO split (train / test)."""
    if args.data == "shapes":
        return ns.zoo.dataset(n, style="generic", task="caption", seed=2000 + 1000 * (split == "eval") + seed)
    karpathy = "train" if split == "train" else "test"
    return ns.data.load_coco_captions(args.captions, args.images, split=karpathy, limit=n, seed=args.seed + seed)


class Results:
    """Key numbers of a run, written to ``out/results.json`` with the arguments and the time taken."""

    def __init__(self, recipe: str, args: argparse.Namespace) -> None:
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {"recipe": recipe, "args": {k: str(v) for k, v in vars(args).items()}}

    def __setitem__(self, key: str, value: Any) -> None:
        self.doc[key] = value

    def figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib figure as ``out/<name>.png`` and list it in the results."""
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.doc.setdefault("figures", []).append(path.name)

    def write(self) -> Path:
        """Write results.json and print it."""
        self.doc["seconds"] = round(time.perf_counter() - self.t0, 1)
        path = self.out / "results.json"
        path.write_text(json.dumps(self.doc, indent=1, default=str))
        print(json.dumps(self.doc, indent=1, default=str))
        return path


def share(answers: Sequence[str], samples: Sequence[ns.Sample], gt_type: str, pred_type: str) -> float:
    """Share of the questions of reference type ``gt_type`` whose answer is of type ``pred_type``."""
    idx = [i for i, s in enumerate(samples) if s.meta.get("answer_type") == gt_type]
    return sum(ns.evaluate.answer_type(answers[i]) == pred_type for i in idx) / max(1, len(idx))
