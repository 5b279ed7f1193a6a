"""Write the steering-sweep tables of docs/steering.md and docs/benchmarks.md from benchmarks/results/steering_sweep.

    python scripts/sweep_tables.py            # rewrite the blocks between the sweep markers
    python scripts/sweep_tables.py --print    # only print them
    python scripts/sweep_tables.py --check    # exit 1 when a doc differs from what the JSON gives

The JSON files are written by ``benchmarks/steering_sweep.py``; tests/test_sweep_docs.py checks that the docs
are what this script generates from the committed files. The figures are copied to docs/img/.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnshift.steering.sweep_report import SweepReport, SweepRow  # noqa: E402
from nnshift.steering.targets import target_from_spec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "steering_sweep"
TARGETS = ("yesno_to_number", "yes_to_no", "colour_to_colour", "caption_style")
NAMES = {
    "yesno_to_number": "yes/no → number",
    "yes_to_no": "yes → no",
    "colour_to_colour": "colour → colour",
    "caption_style": "caption style",
}
BLOCKS = {
    "docs/steering.md": ("<!-- sweep:begin -->", "<!-- sweep:end -->"),
    "docs/benchmarks.md": ("<!-- sweep-cost:begin -->", "<!-- sweep-cost:end -->"),
}
#: figures copied from the results folder to docs/img/
FIGURES = {"pareto.png": "steering-sweep-pareto.png", "cost.png": "steering-sweep-cost.png"}
_FLOATS = ("target_rate", "max_drop", "nll", "length", "toward", "away")


def load(name: str) -> dict[str, Any]:
    """One target's JSON."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def report(doc: dict[str, Any]) -> SweepReport:
    """The `SweepReport` of a target's saved sweep (rows without answers; enough for its table and front)."""
    sw = doc["sweep"]
    rows = []
    for d in sw["rows"]:
        d = dict(d)
        for k in _FLOATS:
            d[k] = math.nan if d.get(k) is None else float(d[k])
        d["untouched_accuracy"] = {t: math.nan if v is None else v for t, v in d["untouched_accuracy"].items()}
        rows.append(SweepRow(**d))
    return SweepReport(
        target=target_from_spec(sw["target"]),
        rows=rows,
        sample_ids=sw["sample_ids"],
        keep_ids=sw["keep_ids"],
        threshold=sw["threshold"],
        info=sw["info"],
    )


def pct(x: float | None) -> str:
    """A share as a percentage (``-`` when not measured)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def pts(x: float | None) -> str:
    """A drop in points (``-`` when not measured)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def rate_drop(row: dict[str, Any] | SweepRow | None) -> str:
    """``rate / drop`` of a row."""
    if row is None:
        return "-"
    if isinstance(row, SweepRow):
        return f"{pct(row.target_rate)} / {pts(row.max_drop)}"
    return f"{pct(row['target_rate'])} / {pts(row['max_drop'])}"


def summary_table(docs: dict[str, dict[str, Any]]) -> str:
    """One line per target: unsteered, the calibrated point (validation, held-out), the baselines."""
    head = "| target | n (+ kept) | unsteered | calibrated point | validation | held-out | prompting | fine-tune |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, doc in docs.items():
        rep, cal = report(doc), doc["calibration"]
        prompts = "; ".join(f"{r.name.removeprefix('prompt: ')} {rate_drop(r)}" for r in rep.rows if r.kind == "prompt")
        models = "; ".join(f"{r.name} {rate_drop(r)}" for r in rep.rows if r.kind == "model") or "-"
        met = "" if cal["met"] else " (constraint not met)"
        if tried := refined(doc):
            met += " (refinement tried " + ", ".join(f"{a:g}" for a in tried) + ")"
        lines.append(
            f"| {NAMES[name]} | {doc['n_samples']}"
            + (f" (+ {doc['n_keep']})" if doc["n_keep"] else "")
            + f" | {rate_drop(rep.unsteered)} | L{cal['layer']} α = {cal['alpha']:g}{met}"
            + f" | {rate_drop(cal['validation_chosen'])} (n = {cal['validation_n']})"
            + f" | {rate_drop(cal['held_out_chosen'])} (n = {cal['held_out_n']}) | {prompts} | {models} |"
        )
    return "\n".join(lines)


def refined(doc: dict[str, Any]) -> list[float]:
    """The strengths calibration's refinement tried at the chosen layer (validation rows off the grid)."""
    cal = doc["calibration"]
    grid = [float(a) for a in doc["alphas"]]
    rows = cal["validation_rows"]
    return sorted(
        float(r["alpha"])
        for r in rows
        if r["layer"] == cal["layer"] and not any(math.isclose(r["alpha"], a) for a in grid)
    )


def fresh_table(docs: dict[str, dict[str, Any]]) -> str:
    """The calibrated points on a fresh set (another seed): untouched change and turned share; the grid alone too."""
    head = "| target | calibration | point | fresh questions (seed) | relevant | turned |"
    head += " untouched accuracy change (pts) | within 2 pts | turned ≥ 50 % |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, doc in docs.items():
        if doc.get("fresh") is None:
            continue
        runs = [("refined (default)", doc["calibration"], doc["fresh"])]
        if "grid_only" in doc:
            runs.append(("grid only (`refine=0`)", doc["grid_only"], doc["grid_only"]["fresh"]))
        for how, cal, f in runs:
            change = ", ".join(f"{t} {pts(v)}" for t, v in f["untouched_change"].items())
            lines.append(
                f"| {NAMES[name]} | {how} | L{cal['layer']} α = {cal['alpha']:g} | {f['n']} ({f['seed']})"
                f" | {f['n_relevant']} | {pct(f['turned'])} | {change} | {'yes' if f['within_2_points'] else 'no'}"
                f" | {'yes' if f['turned_at_least_half'] else 'no'} |"
            )
    return "\n".join(lines)


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def selective_rate(rep: SweepReport, layer: int, limit: float = 0.02) -> float:
    """The best target rate at ``layer`` whose untouched drop is at most ``limit`` (0 when none is)."""
    rates = [r.target_rate for r in rep.steering if r.layer == layer and r.max_drop <= limit + 1e-12]
    return max(rates, default=0.0)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


def grid_alpha(rep: SweepReport, alpha: float) -> float:
    """``alpha`` when the full sweep ran it, else (a refined strength) the largest swept alpha below it."""
    below = [a for a in rep.alphas if a <= alpha + 1e-12]
    return max(below) if below else min(rep.alphas)


def reliability_table(docs: dict[str, dict[str, Any]]) -> str:
    """Per target and layer: the vector's diagnostics beside its steerable / anti-steerable / selective shares."""
    head = "| target | layer | consistency (± sd) | d′ | split acc. | toward at α | away at α, max over α |"
    lines = [head + " selective rate |", "|---|---|---|---|---|---|---|---|"]
    pairs: list[tuple[float, float, float]] = []
    for name, doc in docs.items():
        rep, cal = report(doc), doc["calibration"]
        for layer in rep.layers:
            d = doc["diagnostics"].get(str(layer)) or {}
            alpha = grid_alpha(rep, cal["alpha"]) if layer == cal["layer"] else max(rep.alphas)
            row = rep.row(layer, alpha)
            worst = max(rep.row(layer, a).away for a in rep.alphas)
            sel = selective_rate(rep, layer)
            if layer == cal["layer"] and d.get("consistency") is not None and d.get("d_prime") is not None:
                pairs.append((d["consistency"], d["d_prime"], sel))
            lines.append(
                f"| {NAMES[name]} | {layer} | {_num(d.get('consistency'), '.2f')} ± "
                f"{_num(d.get('consistency_std'), '.2f')} | {_num(d.get('d_prime'), '.1f')} | "
                f"{pct(d.get('split_accuracy'))} | {pct(row.toward)} (α = {alpha:g}) | {pct(row.away)}, {pct(worst)}"
                f" | {pct(sel)} |"
            )
    rho_c = spearman([p[0] for p in pairs], [p[2] for p in pairs])
    rho_d = spearman([p[1] for p in pairs], [p[2] for p in pairs])
    lines.append(
        f"\nAt each target's calibrated layer ({len(pairs)} targets), Spearman's rank correlation with the "
        f"selective rate: consistency {rho_c:+.2f}, d′ {rho_d:+.2f}."
    )
    return "\n".join(lines)


def prompt_table(docs: dict[str, dict[str, Any]]) -> str:
    """How the zoo model's tokenizer reads each prompting baseline."""
    lines = ["| target | instruction appended | read by shapes-base as | unknown words |", "|---|---|---|---|"]
    for name, doc in docs.items():
        for text, t in doc["prompt_tokens"].items():
            lines.append(f"| {NAMES[name]} | `{text}` | `{' '.join(t['tokens'])}` | {t['unknown']} |")
    return "\n".join(lines)


def steering_block(docs: dict[str, dict[str, Any]]) -> str:
    """The generated part of docs/steering.md's sweep section."""
    meta = next(iter(docs.values()))["meta"]
    parts = [
        f"Generated by `python scripts/sweep_tables.py` from `benchmarks/results/steering_sweep/*.json` "
        f"(`{meta['command']}`, {meta['date']}, nnshift {meta['versions']['nnshift']}, torch "
        f"{meta['versions']['torch']}, {meta['machine']['torch_threads']} torch thread). Rates in %, drops in "
        "points (positive = accuracy lost); `rate / drop` per cell.",
        "**Calibrated points and baselines.** The calibrated point is chosen on the validation half "
        "(`max_untouched_drop=0.02`, `split=0.5`, `seed=0`, `refine=3`: after the grid, three strengths between "
        "the chosen grid α and the next one, listed as *refinement tried*) and measured on the held-out half; the baselines "
        "ran on all the samples.",
        summary_table(docs),
        "**Calibration out of sample.** The calibrated point on a fresh set of questions (another dataset seed) "
        "against the unsteered model on the same set, with the refinement (the default) and with the grid "
        "alone (`refine=0`).",
        fresh_table(docs),
        '**Diagnostics and reliability.** The vector\'s pre-run diagnostics (`vec.info["diagnostics"]`) and, '
        "from the full sweep, the share of the relevant samples moved toward the target (steerable) and away "
        "from it (anti-steerable) at the calibrated α (refined: the grid α below it; the other layer: its "
        "strongest α), the largest "
        "anti-steerable share over α, and the selective rate: the best target rate at that layer whose untouched "
        "drop stays within 2 points.",
        reliability_table(docs),
        "**Prompting baselines as the tiny model reads them** (it only knows its own 80 words):",
        prompt_table(docs),
        "![Pareto fronts of the four targets](img/steering-sweep-pareto.png)",
        "Per target, the Pareto plot and the layer × α heat map of the target rate are "
        + ", ".join(f"`benchmarks/results/steering_sweep/{n}-{{pareto,heatmap}}.png`" for n in docs)
        + ".",
    ]
    for name, doc in docs.items():
        parts.append(f"<details><summary>{NAMES[name]}: the full sweep</summary>\n\n{report(doc).table()}\n</details>")
    return "\n\n".join(parts)


PREFIX_COST = ROOT / "benchmarks" / "results" / "sweep_prefix" / "cost.json"


def _cost_table(c: dict[str, Any], what: str) -> list[str]:
    """The header line and timing table of one cost JSON (``meta`` nested or at the top level)."""
    m = c.get("meta", c)
    lines = [
        f"`{m['command']}` ({m['date']}; {m['machine']['processor']}, {m['machine']['cpu_count']} core(s), "
        f"{m['machine']['torch_threads']} torch thread, torch {m['versions']['torch']}): {what}, {c['n_questions']} "
        f"questions, {len(c['alphas'])} alphas x {len(c['layers'])} layers ({c['grid_points']} grid points with "
        f"the unsteered one), batch size {c['batch_size']} samples, {c['max_new_tokens']} new tokens, best of "
        f"{c['repeats']} round-robin runs after a warm-up (wall and process CPU time, each the best).",
        "",
        "| run | wall (s) | x one steered run | CPU (s) | x one steered run |",
        "|---|---|---|---|---|",
    ]
    for k, v in c["seconds"].items():
        lines.append(
            f"| {k} | {v:.2f} | {c['ratio_to_steer'][k]:.2f} | {c['cpu_seconds'][k]:.2f} | "
            f"{c['cpu_ratio_to_steer'][k]:.2f} |"
        )
    return lines


def verdict(c: dict[str, Any], target: float = 3.0) -> str:
    """Issue 16's cost target, read from the cost JSON: met or not, with the ratios it rests on."""
    r = c["cpu_ratio_to_steer"]
    full, lean = r["sweep"], r["sweep, fluency off"]
    met = "met" if full <= target else "NOT met"
    return (
        f"**Target (a sweep of {len(c['alphas'])} alphas x {len(c['layers'])} layers costs at most {target:g}x one "
        f"steered run, CPU time): {met}.** The sweep with every measure costs {full:.2f}x one steered run, "
        f"{lean:.2f}x without the fluency pass, {r['sweep, prefix sharing off']:.2f}x with every kind of sharing "
        "switched off."
    )


def cost_block() -> str:
    """The generated part of docs/benchmarks.md's sweep section: every position, then prefix-sparing positions."""
    c = json.loads((RESULTS / "cost.json").read_text())
    lines = [verdict(c), "", *_cost_table(c, "patches at every position (a vector's default)")]
    if PREFIX_COST.exists():
        p = json.loads(PREFIX_COST.read_text())
        same = p["shared_equals_unshared"]
        lines += ["", *_cost_table(p, "patches at `last_prompt | generated` (they spare the prompt prefix)")]
        lines += [
            "",
            f"Shared and unshared sweeps give the same answers: {'yes' if same['same_answers'] else 'NO'} "
            f"(largest margin difference {same['max_margin_diff']:.1e} nats).",
        ]
    return "\n".join(lines) + "\n\n![sweep cost](img/steering-sweep-cost.png)"


def blocks() -> dict[str, str]:
    """Path -> generated block text."""
    docs = {name: load(name) for name in TARGETS if (RESULTS / f"{name}.json").exists()}
    return {"docs/steering.md": steering_block(docs), "docs/benchmarks.md": cost_block()}


def replaced(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with the block between the markers replaced."""
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]


def main() -> None:
    """Print, check or rewrite the blocks (and copy the figures)."""
    out = blocks()
    if "--print" in sys.argv:
        print("\n\n".join(out.values()))
        return
    bad = []
    for rel, block in out.items():
        path = ROOT / rel
        text = path.read_text()
        new = replaced(text, *BLOCKS[rel], block)
        if "--check" in sys.argv:
            bad += [rel] if new != text else []
        else:
            path.write_text(new)
    if "--check" in sys.argv:
        if bad:
            raise SystemExit(f"out of date: {bad}; run python scripts/sweep_tables.py")
        return
    for src, dst in FIGURES.items():
        shutil.copyfile(RESULTS / src, ROOT / "docs" / "img" / dst)


if __name__ == "__main__":
    main()
