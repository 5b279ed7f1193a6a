"""Run the five paper recipes on the shapes world (what CI runs) and render their key numbers as a table.

python recipes/run_zoo.py --out runs/recipes                       # run all five
python recipes/run_zoo.py --out runs/recipes --update-docs         # ... and rewrite docs/paper-recipes.md's table
python recipes/run_zoo.py --out runs/recipes --table-only --check  # the docs table agrees with the JSON?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import caption_style
import coarse_yesno_number
import fine_by_impact
import shift_analysis
import target_yes_no

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "paper-recipes.md"
BEGIN, END = "<!-- recipes-table:begin -->", "<!-- recipes-table:end -->"

# name -> (module, zoo arguments); the strengths and layers are the ones measured in docs/steering.md
RECIPES = {
    "shift_analysis": (shift_analysis, ["--finetune", "shapes-colors", "--token", "circle", "--k", "6"]),
    "coarse_yesno_number": (coarse_yesno_number, ["--layer", "3", "--alpha", "1.5"]),
    "target_yes_no": (target_yes_no, ["--layer", "3", "--alpha", "0.3"]),
    "fine_by_impact": (fine_by_impact, ["--question-kind", "color_of_shape", "--k", "6"]),
    "caption_style": (caption_style, ["--target-model", "shapes-colors", "--layer", "2"]),
}


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _row(name: str, r: dict) -> str:
    """One table row: what the recipe measured, from its results.json."""
    if name == "shift_analysis":
        s = r["summary"]
        dyn = ", ".join(f"{k} {v}" for k, v in s["dynamics"].items())
        what = (
            f"{r['n_paired']} paired samples, K = {r['k']}: recovery (cosine) {s['recovery_original']:.2f} -> "
            f"{s['recovery_shifted']:.2f}, {_pct(s['recovered_fraction'])} of concepts recovered; dynamics: {dyn}"
        )
    elif name == "coarse_yesno_number":
        b, a = r["target_type_share_on_source_questions"]
        moved = ", ".join(f"{t} {100 * v['delta']:+.1f}" for t, v in r["untouched_accuracy"].items())
        what = f"number answers on yes/no questions {_pct(b)} -> {_pct(a)}; untouched accuracy (points): {moved}"
    elif name == "target_yes_no":
        moved = ", ".join(f"{t} {100 * v['delta']:+.1f}" for t, v in r["untouched_accuracy"].items())
        what = (
            f"{r['turned_to_target']} of {r['source_answers_before']} 'yes' turned 'no' ({_pct(r['turned_share'])});"
            f" untouched accuracy (points): {moved}"
        )
    elif name == "fine_by_impact":
        what = (
            f"{r['candidates']} concept pairs ranked; best {tuple(r['best_pair'])} targets "
            f"{r['top'][0]['targets']}, changes {r['changed_by_best']} of {r['n_eval']} answers"
        )
    else:
        b, a = r["style_rate"]
        cb, ca = r["cider_d"] or (float("nan"), float("nan"))
        what = f"captions naming a colour {_pct(b)} -> {_pct(a)}; CIDEr-D {cb:.2f} -> {ca:.2f}"
    return f"| `{name}` | layer {r.get('layer')}, alpha {r.get('alpha', r['args'].get('alpha'))} | {what} | {r['seconds']} |"


def table(out: Path) -> str:
    """The markdown table of every recipe's results.json under ``out``."""
    rows = ["| recipe | setting | result (shapes world) | seconds |", "|---|---|---|---|"]
    for name in RECIPES:
        rows.append(_row(name, json.loads((out / name / "results.json").read_text())))
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """Run (unless --table-only), then print the table; --update-docs / --check compare it with the docs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/paper-recipes.md's table differs")
    args = ap.parse_args(argv)
    if not args.table_only:
        for name in args.only:
            module, extra = RECIPES[name]
            sizes = ["--n-train", str(args.n_train), "--n-eval", str(args.n_eval)]
            module.main(["--model", "shapes-base", *extra, *sizes, "--out", str(args.out / name)])
    if set(args.only) != set(RECIPES):
        return 0
    text = table(args.out)
    print(text)
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN, 1)
    current = rest.split(END, 1)[0].strip()
    if args.update_docs:
        DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    elif args.check and current != text:
        print("docs/paper-recipes.md's table differs from these results", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
