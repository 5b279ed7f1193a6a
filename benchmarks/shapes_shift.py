"""Concepts and fine-tuning shift on the shapes world: the numbers and figures of docs/concepts.md and docs/shift.md.

    python benchmarks/shapes_shift.py --json shapes_shift.json --figures docs/img

Part 1 (concepts): shapes-base, TOI "circle", last layer, k-means with K = number of colours: the text
grounding of each concept and the colour purity of its samples (the circle colour is known).
Part 2 (shift): shapes-base vs shapes-colors and vs shapes-places, TOI "circle" and "square", the last
layer and a middle layer, K = 20 and K = 6: recovery (cosine, T-Overlap), share of concepts recovered,
correlations, alpha sweep, dynamics.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift import plots, zoo

warnings.filterwarnings("ignore")


def colour_of(meta: dict[str, Any], shape: str) -> str | None:
    """The colour of the first object of ``shape`` in a sample's ground truth."""
    return next((o["color"] for o in meta["objects"] if o["shape"] == shape), None)


def concepts_part(base: Any, samples: list[ns.Sample], n_words: int) -> dict[str, Any]:
    """K-means on the circle states of shapes-base; purity against the circle colour; words."""
    acts = ns.capture(
        base, samples, layer=-1, at=ns.positions.token_of_interest("circle"), max_new_tokens=24, progress=False
    )
    k = len(zoo.COLORS)
    out: dict[str, Any] = {"n_samples": len(samples), "n_kept": len(acts), "k": k, "methods": {}}
    truth = [colour_of(s.meta, "circle") for s in acts.samples]
    for method in ("kmeans", "semi_nmf", "pca"):
        dico = ns.concepts.fit(acts, k=k, method=method, seed=0)
        words = dico.ground_text(base, top=n_words)
        assign = dico.assign(acts).tolist()
        top = ns.concepts.top_samples(dico, acts, n=5)
        rows = []
        for c in range(k):
            members = [truth[i] for i, a in enumerate(assign) if a == c]
            cnt = Counter(members)
            dom, n_dom = cnt.most_common(1)[0] if members else (None, 0)
            top_cols = Counter(truth[int(i)] for i in top.indices[c].tolist())
            rows.append(
                {
                    "concept": c,
                    "n": len(members),
                    "dominant_colour": dom,
                    "purity": n_dom / len(members) if members else float("nan"),
                    "top5_dominant": top_cols.most_common(1)[0][0],
                    "top5_purity": top_cols.most_common(1)[0][1] / len(top.indices[c]),
                    "words": words[c],
                    "colour_words": [w for w in words[c] if w in zoo.COLORS],
                }
            )
        n_tot = sum(r["n"] for r in rows)
        out["methods"][method] = {
            "concepts": rows,
            "weighted_purity": sum(r["purity"] * r["n"] for r in rows if r["n"]) / max(1, n_tot),
            "mean_top5_purity": sum(r["top5_purity"] for r in rows) / k,
            "share_with_colour_word": sum(bool(r["colour_words"]) for r in rows) / k,
            "colours_covered": sorted({r["dominant_colour"] for r in rows if r["dominant_colour"]}),
            "overlap": ns.concepts.overlap(words),
        }
        if method == "kmeans":
            out["figure"] = (top, words)
    return out


def shift_part(
    base: Any, ft: Any, name: str, samples: list[ns.Sample], toi: str, layer: int, k: int, figures: Path | None
) -> dict[str, Any]:
    """One shift analysis: capture both models, fit both dictionaries, analyze, sweep alpha."""
    at = ns.positions.token_of_interest(toi)
    a = ns.capture(base, samples, layer=layer, at=at, max_new_tokens=24, progress=False)
    b = ns.capture(ft, a.samples, layer=layer, at=at, max_new_tokens=24, progress=False)
    a, b = ns.pair(a, b)
    k = min(k, len(a) // 2)
    da = ns.concepts.fit(a, k=k, method="kmeans", seed=0)
    db = ns.concepts.fit(b, k=k, method="kmeans", seed=0)
    rep = ns.shift.analyze(a, b, da, db, alpha=1.0, vlm=base)
    keywords = list(zoo.COLORS) if name == "shapes-colors" else list(zoo.BACKGROUNDS)
    sweep = rep.alpha_sweep([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], keywords=keywords, vlm=base)
    gain = rep.recovery_shifted - rep.recovery_original
    ok = ~torch.isnan(gain)
    t_gain = rep.t_overlap_gain if getattr(rep, "t_overlap_gain", None) is not None else None
    res = {
        "fine_tune": name,
        "toi": toi,
        "layer": base.layer_index(layer),
        "k": k,
        "n_paired": len(a),
        "mean_cos_original": float(rep.recovery_original[ok].mean()),
        "mean_cos_shifted": float(rep.recovery_shifted[ok].mean()),
        "mean_cos_gain": float(gain[ok].mean()),
        "share_recovered": float((gain[ok] > 0).float().mean()),
        "summary": rep.summary(),
        "alpha_sweep": sweep.to_dict(),
        "dynamics": dict(Counter(rep.dynamics)),
        "new": int(rep.new.numel()),
    }
    if t_gain is not None:
        res["mean_t_overlap_gain"] = (
            float(t_gain[~torch.isnan(t_gain)].mean()) if (~torch.isnan(t_gain)).any() else None
        )
    if figures is not None:
        tag = f"{name}-{toi}-l{res['layer']}-k{k}"
        figures.mkdir(parents=True, exist_ok=True)
        for fig, what in (
            (plots.plot_recovery(rep), "recovery"),
            (plots.plot_gain_vs(rep), "gain_vs"),
            (plots.plot_alpha_sweep(sweep), "alpha_sweep"),
            (plots.plot_similarity_matrix(rep), "similarity"),
        ):
            fig.savefig(figures / f"shift-{tag}-{what}.png", dpi=90, bbox_inches="tight")
        res["figures"] = tag
    return res


def main() -> None:
    """Run both parts and print / save the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="caption samples (default 400)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figures", type=Path, default=None, help="folder for PNG figures")
    ap.add_argument("--zoo-dir", type=Path, default=None, help="checkpoints folder (default: the shipped zoo)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.zoo_dir is not None:
        zoo.CHECKPOINTS = args.zoo_dir
    t0 = time.perf_counter()
    base = zoo.load("shapes-base")
    samples = zoo.dataset(args.n, style="generic", task="caption", seed=31)
    results: dict[str, Any] = {"n_samples": args.n}
    conc = concepts_part(base, samples, n_words=10)
    top, words = conc.pop("figure")
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        ns.concepts.plot_top_samples(top, words=words).savefig(
            args.figures / "concepts-circle-kmeans.png", dpi=90, bbox_inches="tight"
        )
    results["concepts"] = conc
    mid = base.n_layers // 2
    runs = []
    for name in ("shapes-colors", "shapes-places"):
        ft = zoo.load(name)
        for toi in ("circle", "square"):
            for layer in (-1, mid):
                for k in (20, 6):
                    figs = args.figures if (toi == "circle" and layer == -1 and k == 20) else None
                    runs.append(shift_part(base, ft, name, samples, toi, layer, k, figs))
                    r = runs[-1]
                    print(
                        f"{name:14s} {toi:7s} L{r['layer']} K={r['k']:2d} n={r['n_paired']:3d} "
                        f"cos {r['mean_cos_original']:.3f} -> {r['mean_cos_shifted']:.3f} "
                        f"recovered {r['share_recovered']:.0%} dyn {r['dynamics']}",
                        flush=True,
                    )
    results["shift"] = runs
    results["seconds"] = round(time.perf_counter() - t0, 1)
    for m, v in conc["methods"].items():
        print(
            f"concepts {m}: weighted purity {v['weighted_purity']:.2f}, top-5 purity {v['mean_top5_purity']:.2f}, "
            f"colour word in {v['share_with_colour_word']:.0%} of concepts, colours {v['colours_covered']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
