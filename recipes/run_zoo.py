"""Run the paper recipes and the debias / safety recipes on the shapes world (what CI runs); render their tables.

python recipes/run_zoo.py --out runs/recipes                       # run all seven
python recipes/run_zoo.py --out runs/recipes --update-docs         # ... and rewrite the docs tables
python recipes/run_zoo.py --out runs/recipes --table-only --check  # the docs tables agree with the JSON?

The five paper recipes fill docs/paper-recipes.md's table; debias and refusal fill the tables of
docs/debias-and-safety.md (``safety_tables``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import caption_style
import coarse_yesno_number
import debias
import fine_by_impact
import refusal
import shift_analysis
import target_yes_no

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "paper-recipes.md"
BEGIN, END = "<!-- recipes-table:begin -->", "<!-- recipes-table:end -->"
SAFETY_DOC = ROOT / "docs" / "debias-and-safety.md"

# name -> (module, zoo arguments); the strengths and layers are the ones measured in docs/steering.md
RECIPES = {
    "shift_analysis": (shift_analysis, ["--finetune", "shapes-colors", "--token", "circle", "--k", "6"]),
    "coarse_yesno_number": (coarse_yesno_number, ["--layer", "3", "--alpha", "1.5"]),
    "target_yes_no": (target_yes_no, ["--layer", "3", "--alpha", "0.3"]),
    "fine_by_impact": (fine_by_impact, ["--question-kind", "color_of_shape", "--k", "6"]),
    "caption_style": (caption_style, ["--target-model", "shapes-colors", "--layer", "2"]),
}
#: the debias / safety recipes (docs/debias-and-safety.md), on the zoo's behaviour fine-tunes
SAFETY = {
    "debias": (debias, ["--finetune", "shapes-biased", "--layer", "3", "--alpha", "1", "--k", "6"]),
    "refusal": (refusal, ["--finetune", "shapes-refusal", "--layer", "3"]),
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


def _f(x: float) -> str:
    return f"{x:.2f}"


def _debias_tables(r: dict) -> str:
    """The concepts of the shift analysis and the before / after rates of the debias recipe."""
    color = r["bias"]["color"]
    rows = [
        f"| base concept | samples | true colours | grounding (base) | grounding (shifted) | fine-tune says {color} | "
        "carries the bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["concepts"]:
        rows.append(
            f"| {c['concept']} | {c['members']} | {', '.join(c['true_colors'])} | {', '.join(c['words_original'])} | "
            f"{', '.join(c['words_shifted'])} | {_pct(c['finetune_says_bias_color'])} | "
            f"{'yes' if c['carries_bias'] else 'no'} |"
        )
    rows += [
        "",
        f"| model (layer {r['layer']}, alpha {r['alpha']}) | bias rate | circle-colour accuracy | accuracy, other "
        "questions |",
        "|---|---|---|---|",
    ]
    for name, m in r["measured"].items():
        rows.append(f"| {name} | {_f(m['bias_rate'])} | {_f(m['circle_color_accuracy'])} | {_f(m['other_accuracy'])} |")
    rows.append("")
    rows.append(
        f"Mean cosine between the shift vectors of the concepts that carry the bias: "
        f"{_f(r['bias_concepts_shift_cosine'])}. "
        f"{r['n_circle_questions']} circle-colour questions for the shift analysis (K = {r['k']}), "
        f"{r['n_bias_eval']} held-out circles that are not {color}, {r['n_rest_eval']} other held-out questions; "
        f"{r['seconds']} s."
        + (
            f" Gate of the gated concept-wise row: nearest fine-tune concept by cosine, cosine above "
            f"{r['gate_threshold']:.3f} (its training members' lowest cosine minus 0.05)."
            if r.get("gate_threshold") is not None
            else ""
        )
    )
    return "\n".join(rows)


def _refusal_table(r: dict) -> str:
    """The before / after rates of the refusal recipe."""
    rows = [
        f"| model (layer {r['layer']}) | refusal rate ({r['forbidden_shape']} questions) | exact refusal | "
        "false refusals (others) | accuracy, forbidden | accuracy, others |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in r["measured"].items():
        rows.append(
            f"| {name} | {_f(m['refusal_rate'])} | {_f(m['exact_refusal_rate'])} | {_f(m['false_refusal_rate'])} | "
            f"{_f(m['forbidden_accuracy'])} | {_f(m['other_accuracy'])} |"
        )
    g = r["gate"]
    rows.append("")
    rows.append(
        f"Gate (ridge probe on the base's own layer-{r['layer']} states): recall {_f(g['recall'])}, "
        f"false positives {_f(g['false_positive_rate'])}. {r['n_eval_forbidden']} held-out questions naming a "
        f"{r['forbidden_shape']}, {r['n_eval_other']} others; {r['seconds']} s."
    )
    return "\n".join(rows)


def safety_tables(out: Path) -> dict[str, str]:
    """Marker name -> markdown for docs/debias-and-safety.md, from the debias and refusal results.json."""
    load = lambda name: json.loads((out / name / "results.json").read_text())  # noqa: E731
    return {"debias": _debias_tables(load("debias")), "refusal": _refusal_table(load("refusal"))}


def _sync(doc: Path, begin: str, end: str, text: str, update: bool) -> bool:
    """Rewrite (``update``) or compare the text between two markers of a doc; True when it agrees."""
    content = doc.read_text()
    head, rest = content.split(begin, 1)
    current, tail = rest.split(end, 1)
    if update:
        doc.write_text(head + begin + "\n" + text + "\n" + end + tail)
    return current.strip() == text.strip()


def main(argv: list[str]) -> int:
    """Run (unless --table-only), then print the tables; --update-docs / --check compare them with the docs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=[*RECIPES, *SAFETY], choices=[*RECIPES, *SAFETY])
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/paper-recipes.md's table differs")
    args = ap.parse_args(argv)
    if not args.table_only:
        for name in args.only:
            module, extra = {**RECIPES, **SAFETY}[name]
            sizes = ["--n-train", str(args.n_train), "--n-eval", str(args.n_eval)]
            module.main(["--model", "shapes-base", *extra, *sizes, "--out", str(args.out / name)])
    status = 0
    if set(RECIPES) <= set(args.only):
        text = table(args.out)
        print(text)
        if not _sync(DOC, BEGIN, END, text, args.update_docs) and args.check:
            print("docs/paper-recipes.md's table differs from these results", file=sys.stderr)
            status = 1
    if set(SAFETY) <= set(args.only):
        for name, text in safety_tables(args.out).items():
            print(text)
            begin, end = f"<!-- {name}-table:begin -->", f"<!-- {name}-table:end -->"
            if not _sync(SAFETY_DOC, begin, end, text, args.update_docs) and args.check:
                print(f"docs/debias-and-safety.md's {name} table differs from these results", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
