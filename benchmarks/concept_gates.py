"""Concept-gated fine-grained steering on the shapes world: with and without the gate, who changes answer.

On ``shapes-base``, K colour concepts are learnt (k-means) on the last-prompt states of "what color is the X?"
questions at the last layer, as in ``recipes/fine_by_impact.py``. Each concept is named by the answer most of its
held-out samples give (answer grounding). For every ordered pair i -> j the fine-grained vector ``u_j - u_i`` is
applied at every position and step, once alone and once behind ``ConceptGate.from_dictionary(dico, i)`` (the
position's nearest concept by cosine must be i, decided in the trace from the current state). Measured on the
held-out questions, per pair:

- ``turned``: the share of concept-i samples (the dictionary's assignment of their last-prompt state) whose answer
  becomes concept j's answer;
- ``others_changed``: the share of the other samples whose answer changes.

    python benchmarks/concept_gates.py                                   # writes benchmarks/results/concept_gates.json
    python benchmarks/concept_gates.py --markdown benchmarks/results/concept_gates.json   # the tables of the docs

About 30 s on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift.answers import normalize_answer
from nnshift.metrics import assign_samples
from nnshift.steering import ConceptGate, fine, steer

warnings.filterwarnings("ignore")

OUT = Path(__file__).parent / "results" / "concept_gates.json"


def pair_effect(
    before: list[str], after: list[str], members: list[int], others: list[int], target: str
) -> dict[str, float]:
    """Shares of the concept-i samples turned to ``target`` (and changed), and of the other samples changed."""
    turned = sum(normalize_answer(after[m]) == target for m in members) / max(1, len(members))
    changed_i = sum(after[m] != before[m] for m in members) / max(1, len(members))
    moved = sum(after[m] != before[m] for m in others) / max(1, len(others))
    return {"turned": round(turned, 4), "changed_i": round(changed_i, 4), "others_changed": round(moved, 4)}


def concept_names(before: list[str], assigned: list[int], k: int) -> list[str]:
    """Each concept's name: the (normalised) answer most of its samples give unsteered."""
    names = []
    for c in range(k):
        answers = Counter(normalize_answer(before[m]) for m, a in enumerate(assigned) if a == c)
        names.append(answers.most_common(1)[0][0] if answers else "")
    return names


def gate_agreement(dico: Any, acts: ns.Activations, assigned: list[int]) -> float:
    """Share of samples whose last-prompt state the gate rule (nearest concept by cosine) puts in their concept."""
    x = acts.tensor
    hits = sum(bool(ConceptGate.from_dictionary(dico, c).mask(x[m : m + 1])[0]) for m, c in enumerate(assigned))
    return round(hits / max(1, len(assigned)), 4)


def summary(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Mean (and min, max) over the pairs of one strength, ungated and gated."""
    sel = [r for r in rows if r["alpha"] == alpha]
    out: dict[str, Any] = {"alpha": alpha, "pairs": len(sel)}
    for mode in ("ungated", "gated"):
        for key in ("turned", "changed_i", "others_changed"):
            vals = [r[mode][key] for r in sel]
            out[f"{mode}_{key}"] = {
                "mean": round(sum(vals) / len(vals), 4),
                "min": min(vals),
                "max": max(vals),
            }
    return out


def timed_steer(vlm: Any, samples: list[ns.Sample], patch: Any, run: dict[str, Any], repeats: int = 3) -> float:
    """Best wall time of ``ns.steer`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        steer(vlm, samples, patch, **run)
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the measurement; the JSON-able results."""
    t_start = time.perf_counter()
    torch.manual_seed(0)
    vlm = ns.zoo.load(args.model, dtype="float32")
    train = ns.zoo.dataset(args.n_train, task="vqa", question_kind="color_of_shape", seed=13)
    evalset = ns.zoo.dataset(args.n_eval, task="vqa", question_kind="color_of_shape", seed=14)
    run = {"max_new_tokens": 5, "batch_size": args.batch_size, "progress": False}
    acts = ns.capture(vlm, train, layer=args.layer, at="last_prompt", batch_size=args.batch_size, progress=False)
    dico = ns.concepts.fit(acts, k=args.k, method="kmeans", seed=0)
    eval_acts = ns.capture(vlm, evalset, layer=args.layer, at="last_prompt", batch_size=args.batch_size, progress=False)
    assigned = assign_samples(dico, eval_acts).tolist()
    before = ns.generate(vlm, evalset, **run)
    names = concept_names(before, assigned, dico.k)
    layer = int(acts.info["layer"])
    rows = []
    for i in range(dico.k):
        members = [m for m, a in enumerate(assigned) if a == i]
        others = [m for m, a in enumerate(assigned) if a != i]
        gate = ConceptGate.from_dictionary(dico, i)
        for j in range(dico.k):
            if j == i:
                continue
            vec = fine(dico, i, j, layer=layer)
            for alpha in args.alphas:
                row = {"i": i, "j": j, "alpha": alpha, "n_i": len(members), "target": names[j]}
                row["already"] = round(
                    sum(normalize_answer(before[m]) == names[j] for m in members) / max(1, len(members)), 4
                )
                for mode, g in (("ungated", None), ("gated", gate)):
                    after = steer(vlm, evalset, vec.patch(alpha, gate=g), **run)
                    row[mode] = pair_effect(before, after, members, others, names[j])
                rows.append(row)
    feat = max(
        (r for r in rows if r["alpha"] == 1.0), key=lambda r: r["gated"]["turned"] - r["gated"]["others_changed"]
    )
    vec = fine(dico, feat["i"], feat["j"], layer=layer)
    return {
        "model": args.model,
        "layer": layer,
        "k": dico.k,
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "question_kind": "color_of_shape",
        "positions": "all (every prompt position and every generated token)",
        "gate": "assign (nearest concept by cosine, per position and step)",
        "concept_names": names,
        "concept_sizes": [assigned.count(c) for c in range(dico.k)],
        "gate_agreement_last_prompt": gate_agreement(dico, eval_acts, assigned),
        "answers_before": dict(Counter(before).most_common()),
        "summary": [summary(rows, a) for a in args.alphas],
        "featured": feat,
        "steer_seconds": {
            "ungated": timed_steer(vlm, evalset, vec.patch(1.0), run),
            "gated": timed_steer(vlm, evalset, vec.patch(1.0, gate=ConceptGate.from_dictionary(dico, feat["i"])), run),
        },
        "pairs": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "nnshift": ns.__version__,
        },
    }


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def markdown(res: dict[str, Any]) -> str:
    """The docs' tables, rendered from a results JSON."""
    sizes = ", ".join(
        f"{name or '?'} {size}" for name, size in zip(res["concept_names"], res["concept_sizes"], strict=True)
    )
    lines = [
        f"{res['model']}, layer {res['layer']}, K = {res['k']} colour concepts (named by their samples' answers; "
        f"samples per concept: {sizes}, of {res['n_eval']} held-out questions); the gate rule agrees with the "
        "dictionary's assignment on "
        f"{_pct(res['gate_agreement_last_prompt'])} of the last-prompt states.",
        "",
        "| alpha | pairs | concept-i samples turned to j: ungated | gated | other samples changed: ungated | gated |",
        "|---|---|---|---|---|---|",
    ]
    for s in res["summary"]:
        u, g = s["ungated_turned"], s["gated_turned"]
        uo, go = s["ungated_others_changed"], s["gated_others_changed"]
        lines.append(
            f"| {s['alpha']:g} | {s['pairs']} | {_pct(u['mean'])} ({_pct(u['min'])}–{_pct(u['max'])}) "
            f"| {_pct(g['mean'])} ({_pct(g['min'])}–{_pct(g['max'])}) "
            f"| {_pct(uo['mean'])} ({_pct(uo['min'])}–{_pct(uo['max'])}) "
            f"| {_pct(go['mean'])} ({_pct(go['min'])}–{_pct(go['max'])}) |"
        )
    f, t = res["featured"], res["steer_seconds"]
    names = res["concept_names"]
    lines += [
        "",
        f"Mean over the {res['summary'][0]['pairs']} ordered pairs (min–max in brackets). Featured pair "
        f"{f['i']} -> {f['j']} ({names[f['i']]} -> {names[f['j']]}, alpha {f['alpha']:g}, {f['n_i']} concept-i samples): "
        f"ungated {_pct(f['ungated']['turned'])} turned, {_pct(f['ungated']['others_changed'])} of the others changed; "
        f"gated {_pct(f['gated']['turned'])} turned, {_pct(f['gated']['others_changed'])} of the others changed. "
        f"`ns.steer` over the {res['n_eval']} questions: {t['ungated']:.2f} s ungated, {t['gated']:.2f} s gated "
        f"(best of 3, {res['machine']['threads']} thread).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure (default) or print the Markdown tables of a results file (``--markdown FILE``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-base")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--markdown", type=Path, default=None, help="print the tables of this results JSON and exit")
    args = ap.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    res = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))
    print(f"wrote {args.out} in {res['seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1:])
