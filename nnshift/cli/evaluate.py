"""`nnshift evaluate`: VQA accuracy and answer-type rates, or caption styles and CIDEr-D, of an answers.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nnshift.cli.common import CliError, Command
from nnshift.cli.loaders import read_answers

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift evaluate`."""
    p.add_argument("--answers", required=True, help="answers.jsonl written by `nnshift steer` or `nnshift generate`")
    p.add_argument("--baseline", default=None, help="answers.jsonl of the unsteered model (`nnshift generate`)")
    p.add_argument("--target", default=None, help="target answer to count (e.g. no)")
    p.add_argument("--style", default=None, help="caption style whose keyword rate to report (colors, places)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here (default: print)")


def _baseline(path: str, samples: list[Any]) -> list[str]:
    base = {r["id"]: r["answer"] for r in read_answers(path, "--baseline")}
    missing = [s.id for s in samples if s.id not in base]
    if missing:
        raise CliError(
            f"--baseline lacks {len(missing)} of the samples (e.g. {missing[0]})", "use answers of the same dataset"
        )
    return [base[s.id] for s in samples]


def metrics(rows: list[dict[str, Any]], baseline: str | None, target: str | None, style: str | None) -> dict[str, Any]:
    """The metrics of answers ``rows`` (with the baseline's answers when given)."""
    import nnshift as ns

    samples = [
        ns.Sample(id=r["id"], prompt=str(r.get("prompt", "")), answers=r["answers"], meta=r["meta"]) for r in rows
    ]
    after = [r["answer"] for r in rows]
    is_vqa = any("answer_type" in s.meta for s in samples)
    refs = [s.answers for s in samples] if all(s.answers for s in samples) else None
    styles = [style] if style else None
    if baseline is not None:
        before = _baseline(baseline, samples)
        if is_vqa:
            return ns.evaluate.compare_vqa(before, after, samples, target=target).to_dict()
        return ns.evaluate.compare_captions(before, after, styles, references=refs).to_dict()
    if is_vqa:
        return ns.evaluate.evaluate_vqa(after, samples).to_dict()
    result = ns.evaluate.caption_report(after, styles).to_dict()
    if refs is not None:
        result["cider"] = ns.evaluate.cider_d(after, refs).score
    return result


def run(args: argparse.Namespace) -> int:
    """Score the answers; print or write the metrics."""
    rows = read_answers(args.answers, "--answers")
    for r in rows:
        r.setdefault("answers", [])
        r.setdefault("meta", {})
    result = metrics(rows, args.baseline, args.target, args.style)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        from nnshift.store import atomic_write_bytes

        atomic_write_bytes(Path(args.out), text.encode())
        print(f"metrics -> {args.out}")
    else:
        print(text)
    return 0


COMMAND = Command(
    name="evaluate",
    help="answer-type / target-answer rates and accuracy of answers; caption styles and CIDEr-D",
    description=(
        "Score an answers.jsonl (as written by `steer` or `generate`) against its references: VQA accuracy per "
        "answer type, or for captions the style rates and CIDEr-D against the reference captions; "
        "with --baseline, also the changes relative to the unsteered answers."
    ),
    example="nnshift evaluate --answers runs/steer/answers.jsonl --baseline runs/base/answers.jsonl",
    add_arguments=add_arguments,
    run=run,
)
