"""Render the markdown tables of docs/concepts.md, docs/shift.md and docs/steering.md from the benchmark JSONs.

    python scripts/results_tables.py concepts   # benchmarks/results/shapes_shift.json, part 1
    python scripts/results_tables.py shift      # benchmarks/results/shapes_shift.json, part 2
    python scripts/results_tables.py steering   # benchmarks/results/steering_L*_a*.json

The tables are printed to stdout and pasted into the docs, so every number in them comes from a file that a
command in the docs writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _f(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def _arrow(pair: list[float] | None) -> str:
    return f"{pair[0]:.2f} → {pair[1]:.2f}" if pair else "–"


def concepts() -> None:
    d = json.loads((RESULTS / "shapes_shift.json").read_text())["concepts"]
    print(f"samples {d['n_samples']}, kept {d['n_kept']}, K = {d['k']}\n")
    print(
        "| method | purity (weighted) | top-5 purity | concepts whose first colour word is their dominant colour "
        "| concepts with a colour word in their top 10 | Overlap(U) |"
    )
    print("|---|---|---|---|---|---|")
    for name, m in d["methods"].items():
        first = [(c["colour_words"][0] if c["colour_words"] else None) == c["dominant_colour"] for c in m["concepts"]]
        print(
            f"| {name} | {_f(m['weighted_purity'], 2)} | {_f(m['mean_top5_purity'], 2)} | "
            f"{sum(first)} / {len(first)} | {100 * m['share_with_colour_word']:.0f}% | {_f(m['overlap'], 2)} |"
        )
    print("\n| concept | samples | dominant colour | purity | top-5 dominant | top-5 purity | top words |")
    print("|---|---|---|---|---|---|---|")
    for c in d["methods"]["kmeans"]["concepts"]:
        print(
            f"| {c['concept']} | {c['n']} | {c['dominant_colour']} | {_f(c['purity'], 2)} | {c['top5_dominant']} | "
            f"{_f(c['top5_purity'], 1)} | {', '.join(c['words'][:8])} |"
        )


def shift() -> None:
    d = json.loads((RESULTS / "shapes_shift.json").read_text())
    print(f"benchmark seconds: {d['seconds']}\n")
    print(
        "| fine-tune | TOI | layer | K | paired | cos original | cos shifted | concepts recovered | "
        "T-Overlap orig → shifted (%) | consistency | ‖Δ‖ | r(gain, consistency) | r(gain, ‖Δ‖) | dynamics |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in d["shift"]:
        s = r["summary"]
        dyn = ", ".join(f"{k} {v}" for k, v in s["dynamics"].items() if v and k != "new")
        dyn += f"; new {s['dynamics'].get('new', 0)}"
        c = s["correlations"]
        print(
            f"| {r['fine_tune']} | {r['toi']} | {r['layer']} | {r['k']} | {r['n_paired']} | "
            f"{_f(r['mean_cos_original'])} | {_f(r['mean_cos_shifted'])} | {100 * r['share_recovered']:.0f}% | "
            f"{s['t_overlap_original']:.1f} → {s['t_overlap_shifted']:.1f} | {_f(s['consistency'])} | "
            f"{s['magnitude']:.1f} | {c['gain_vs_consistency']['r']:+.2f} | {c['gain_vs_magnitude']['r']:+.2f} | {dyn} |"
        )
    for r in d["shift"]:
        if r["layer"] == max(x["layer"] for x in d["shift"]) and r["k"] == 20 and r["toi"] == "circle":
            a = r["alpha_sweep"]
            print(
                f"\nα sweep ({r['fine_tune']}, circle, layer {r['layer']}, K = 20; keywords: {', '.join(a['keywords'])})\n"
            )
            print("| α | " + " | ".join(f"{x:g}" for x in a["alphas"]) + " |")
            print("|---|" + "---|" * len(a["alphas"]))
            print("| mean cosine recovery | " + " | ".join(_f(x) for x in a["mean_recovery"]) + " |")
            print(
                "| mean T-Overlap with the matched fine-tuned concept (%) | "
                + " | ".join(f"{mean(row):.1f}" for row in a["t_overlap"])
                + " |"
            )
            print(
                "| mean overlap with the keywords (%) | "
                + " | ".join(f"{mean(row):.1f}" for row in a["keyword_overlap"])
                + " |"
            )


def steering() -> None:
    runs = []
    for f in sorted(RESULTS.glob("steering_L*_a*.json")):
        d = json.loads(f.read_text())
        runs.append(d)
    runs.sort(key=lambda d: (-d["layer_vqa"], d["alpha"]))
    print("**1. Coarse yes/no → number**\n")
    print(
        "| layer | α | number answers on yes/no questions | accuracy, number (points) | accuracy, other (points) "
        "| accuracy, yes/no |"
    )
    print("|---|---|---|---|---|---|")
    for d in runs:
        c = d["coarse yes/no -> number"]
        b, a = c["accuracy_by_type"]["before"], c["accuracy_by_type"]["after"]
        sh = c["number_share_on_yesno_questions"]
        print(
            f"| {d['layer_vqa']} | {d['alpha']:g} | {100 * sh[0]:.0f}% → {100 * sh[1]:.0f}% | "
            f"{_f(b['number'])} → {_f(a['number'])} ({100 * (a['number'] - b['number']):+.1f}) | "
            f"{_f(b['other'])} → {_f(a['other'])} ({100 * (a['other'] - b['other']):+.1f}) | "
            f"{_f(b['yes/no'])} → {_f(a['yes/no'])} |"
        )
    print("\n**2. Target answer yes → no**\n")
    print(
        '| layer | α | "yes" answers | "no" answers | questions answered yes turned to no | '
        "accuracy moved on untouched types (points) |"
    )
    print("|---|---|---|---|---|---|")
    for d in runs:
        y = d["target answer yes -> no"]
        flipped = y.get("yes_to_target")
        flip = f"{flipped[0]} / {flipped[1]} ({100 * flipped[0] / max(1, flipped[1]):.0f}%)" if flipped else "–"
        u = ", ".join(f"{k} {100 * v['delta']:+.1f}" for k, v in y["untouched_accuracy"].items())
        print(
            f"| {d['layer_vqa']} | {d['alpha']:g} | {y['yes_count'][0]} → {y['yes_count'][1]} | "
            f"{y['no_count'][0]} → {y['no_count'][1]} | {flip} | {u} |"
        )
    print("\n**3. Colour → colour by impact**\n")
    print("| layer | α | top 3 vectors: targets (score) | top-5 vectors whose target is concept j's colour |")
    print("|---|---|---|---|")
    for d in runs:
        col = d["colour -> colour by impact"]
        top = "; ".join(
            f"u{t['pair'][1]} − u{t['pair'][0]} → {'/'.join(t['targets'])} ({t['score']:g})" for t in col["top"][:3]
        )
        match = [t.get("colour_of_concept_j") in t["targets"] for t in col["top"]]
        print(f"| {d['layer_vqa']} | {d['alpha']:g} | {top} | {sum(match)} / {len(match)} |")
    print("\n**4. Caption style generic → colours**\n")
    print(
        "| layer | α | captions naming a colour | captions naming a background | CIDEr-D vs the generic caption "
        "| CIDEr-D vs the colours caption |"
    )
    print("|---|---|---|---|---|---|")
    seen = set()
    for d in runs:
        cap = d["caption style: colours"]
        key = (cap["layer"], d["alpha"])
        if key in seen:
            continue
        seen.add(key)
        r = cap["rates"]
        print(
            f"| {cap['layer']} | {d['alpha']:g} | {100 * r['before']['colors']:.0f}% → {100 * r['after']['colors']:.0f}% | "
            f"{100 * r['before']['places']:.0f}% → {100 * r['after']['places']:.0f}% | "
            f"{_arrow(cap.get('cider_vs_generic'))} | {_arrow(cap.get('cider_vs_colours'))} |"
        )


if __name__ == "__main__":
    {"concepts": concepts, "shift": shift, "steering": steering}[sys.argv[1]]()
