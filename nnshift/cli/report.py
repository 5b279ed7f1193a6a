"""`nnshift report`: one HTML report from run folders (demo, capture, concepts, shift, generate, steer)."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.cli.common import CliError, Command
from nnshift.cli.loaders import load_artifact

__all__ = ["COMMAND", "run_kinds"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift report`."""
    p.add_argument(
        "--run",
        required=True,
        action="append",
        help="a run folder (demo, capture, concepts, shift, generate or steer output), or a folder of them; repeatable",
    )
    p.add_argument("--title", default="nnshift report", help="report title (default: nnshift report)")
    p.add_argument("--out", required=True, help="report folder")


def _read_json(path: Path, shape: type = dict) -> Any:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{path} is not valid JSON: {exc}", "re-run the command that wrote it") from None
    if not isinstance(doc, shape):
        raise CliError(
            f"{path} holds a JSON {type(doc).__name__}, not a {shape.__name__}", "re-run the command that wrote it"
        )
    return doc


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 8)}


def _demo(rep: Any, run: Path) -> dict[str, Any]:
    results = _read_json(run / "results.json")
    timings = results.pop("timings_s", {})
    for name, value in results.items():
        sec = rep.section(name.replace("_", " "))
        if isinstance(value, dict):
            flat = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            if flat:
                sec.tables.append((name, [flat]))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            sec.tables.append((name, value))
        else:
            sec.text = str(value)
    if isinstance(timings, dict):
        rep.timings.update({k: float(v) for k, v in timings.items() if isinstance(v, (int, float))})
    return results


def _capture(rep: Any, run: Path) -> dict[str, Any]:
    from nnshift.store import ActivationStore

    store = load_artifact(ActivationStore.open, str(run), "activation store")
    key = store.key if isinstance(store.key, dict) else {}
    row = {
        "rows": len(store.done_ids),
        "skipped": len(store.doc.get("skipped", []) or []),
        "finished": store.done,
        **{k: key.get(k) for k in ("model", "lora", "layers", "positions", "reduce", "hidden_size") if k in key},
    }
    rep.section(f"capture: {run.name}").tables.append(("activation store", [row]))
    return row


def _activations(rep: Any, run: Path) -> dict[str, Any]:
    doc = _read_json(run / "activations.json")
    info = doc.get("info", {}) if isinstance(doc.get("info"), dict) else {}
    row: dict[str, Any] = {"rows": len(doc.get("ids", []) or []), "skipped": len(doc.get("skipped", []) or [])}
    row |= {k: info.get(k) for k in ("model", "lora", "layer", "positions") if k in info}
    rep.section(f"activations: {run.name}").tables.append(("saved activations", [row]))
    return row


def _concepts(rep: Any, run: Path) -> dict[str, Any]:
    from nnshift.concepts import ConceptDictionary

    dico = load_artifact(ConceptDictionary.load, str(run), "concept dictionary")
    sec = rep.section(f"concepts: {run.name}")
    row = {"method": dico.method, "k": dico.k, **_flat(dict(dico.diagnostics or {}))}
    sec.tables.append(("dictionary", [row]))
    words = dico.info.get("words")
    if isinstance(words, list) and words:
        sec.tables.append(("grounding words", [{"concept": i, "words": w} for i, w in enumerate(words)]))
    return row


def _shift(rep: Any, run: Path) -> dict[str, Any]:
    from nnshift.shift import ShiftReport

    report = load_artifact(ShiftReport.load, str(run), "shift report")
    summary = report.summary()
    sec = rep.section(f"shift: {run.name}")
    sec.tables.append(("summary", [_flat(summary)]))
    sec.tables.append(("per concept", report.per_concept()))
    return summary


def _answers(rep: Any, run: Path) -> dict[str, Any]:
    from nnshift.cli.loaders import read_answers

    rows = read_answers(str(run / "answers.jsonl"), "answers.jsonl")
    kind = "steer" if (run / "steer.json").exists() else "generate"
    sec = rep.section(f"{kind}: {run.name}")
    counts = Counter(r["answer"].strip().lower() for r in rows)
    out: dict[str, Any] = {"answers": len(rows), "top": dict(counts.most_common(10))}
    if kind == "steer":
        settings = _read_json(run / "steer.json")
        sec.tables.append(("settings", [_flat(settings)]))
        out["settings"] = settings
    sec.tables.append(("most frequent answers", [{"answer": a, "count": c} for a, c in counts.most_common(10)]))
    if (run / "impact.json").exists():
        ranked = _read_json(run / "impact.json", list)
        sec.tables.append(("pairs by impact", [_flat(r) for r in ranked[:10] if isinstance(r, dict)]))
    return out


KINDS: dict[str, tuple[str, Callable[[Any, Path], dict[str, Any]]]] = {
    "results.json": ("demo", _demo),
    "manifest.json": ("capture", _capture),
    "activations.json": ("activations", _activations),
    "concepts.json": ("concepts", _concepts),
    "shift.json": ("shift", _shift),
    "answers.jsonl": ("answers", _answers),
}


def run_kinds(folder: Path) -> list[str]:
    """The kinds of run output found in ``folder`` (by their marker files)."""
    return [kind for marker, (kind, _) in KINDS.items() if (folder / marker).is_file()]


def _runs(paths: list[str]) -> list[Path]:
    runs: list[Path] = []
    for p in paths:
        folder = Path(p)
        if not folder.is_dir():
            raise CliError(f"--run folder not found: {p}", "pass a folder written by an nnshift command")
        found = [folder] if run_kinds(folder) else sorted(d for d in folder.iterdir() if d.is_dir() and run_kinds(d))
        if not found:
            raise CliError(
                f"{folder} holds no run output (results.json, manifest.json, concepts.json, shift.json, answers.jsonl)",
                "pass a folder written by nnshift demo, capture, concepts, shift, generate or steer",
            )
        runs += found
    return runs


def _copy_figures(rep: Any, run: Path, out: Path, prefix: str) -> None:
    pngs = sorted(run.glob("*.png"))
    if not pngs:
        return
    sec = rep.section(f"figures: {run.name}")
    for png in pngs:
        name = png.name if not prefix else f"{prefix}-{png.name}"
        if out.resolve() != run.resolve() or name != png.name:
            shutil.copy(png, out / name)
        sec.figures.append((png.stem.replace("_", " "), name))


def run(args: argparse.Namespace) -> int:
    """Collect every run folder into OUT/index.html and OUT/results.json."""
    from nnshift.report import Report

    runs = _runs(args.run)
    out = Path(args.out)
    rep = Report(args.title, out, subtitle="from " + ", ".join(str(r) for r in runs))
    for run_dir in runs:
        for marker, (kind, build) in KINDS.items():
            if (run_dir / marker).is_file():
                result = build(rep, run_dir)
                key = kind if kind == "demo" and len(runs) == 1 else f"{kind}:{run_dir.name}"
                if kind == "demo" and len(runs) == 1:
                    rep.results.update(result)
                else:
                    rep.results[key] = result
        _copy_figures(rep, run_dir, out, "" if len(runs) == 1 else run_dir.name)
    print(f"report -> {rep.write()}")
    return 0


COMMAND = Command(
    name="report",
    help="an HTML report from run folders",
    description=(
        "Collect the outputs of run folders (nnshift demo, capture, concepts, shift, generate, steer; "
        "or a folder holding several) with their figures into OUT/index.html and OUT/results.json."
    ),
    example="nnshift report --run runs/ --out nnshift-report",
    add_arguments=add_arguments,
    run=run,
)
