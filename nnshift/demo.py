"""`nnshift demo`: the whole method on the shapes world, written as an HTML report.

Stages: capture (base and colour fine-tune, token of interest "circle"), concepts (k-means, grounded in
words and images, purity against the known circle colour), shift analysis (shift vectors, recovery,
consistency, dynamics, alpha sweep), steering (coarse yes/no -> number, target answer yes -> no,
caption style generic -> colours) and evaluation. Every number shown is also in ``results.json``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_demo"]


def _circle_colour(meta: dict[str, Any]) -> str | None:
    """The colour of the first circle in a shapes-world sample (its ground truth)."""
    for obj in meta.get("objects", []):
        if obj.get("shape") == "circle":
            return obj.get("color")
    return None


def _bar(ax: Any, labels: list[str], before: list[float], after: list[float], title: str, ylabel: str) -> None:
    import numpy as np

    x = np.arange(len(labels))
    ax.bar(x - 0.2, before, 0.4, label="unsteered", color="#8e8e93")
    ax.bar(x + 0.2, after, 0.4, label="steered", color="#0a84ff")
    ax.set_xticks(x, labels, rotation=15)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


#: steering strengths of the demo (docs/steering.md measures the whole range on the shapes world)
ALPHA_TYPE = 1.5
ALPHA_NO = 0.3
ALPHA_CAPTION = 1.0


def run_demo(out: str | Path = "nnshift-report", fast: bool = False, progress: bool = True) -> Path:
    """Run every stage on the shapes world and write ``out/index.html``, figures and ``results.json``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        # the zoo models are tiny: one thread is as fast, and several thrash on a busy CPU
        torch.set_num_threads(1)
    try:
        return _run(out, fast, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out: str | Path, fast: bool, progress: bool) -> Path:
    """The stages of `run_demo`."""
    from matplotlib.figure import Figure

    import nnshift as ns
    from nnshift import plots, zoo
    from nnshift.evaluate import answer_type, caption_report, compare_vqa
    from nnshift.report import Report

    n_cap, n_vqa, n_eval = (60, 40, 60) if fast else (240, 100, 150)
    rep = Report(
        "nnshift demo: how fine-tuning moved the concepts of a tiny LLaVA, and steering it",
        out,
        subtitle="The shapes world: procedural images with known ground truth, a tiny LLaVA (shapes-base) and its "
        "colour fine-tune (shapes-colors, LoRA). Every number is in results.json.",
    )
    stage_bar = None
    if progress:
        from tqdm.auto import tqdm

        stage_bar = tqdm(total=5, desc="nnshift demo", unit="stage")

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        if stage_bar is not None:
            stage_bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        rep.timings[name] = time.perf_counter() - t0
        if stage_bar is not None:
            stage_bar.update(1)

    quiet: dict[str, Any] = {"progress": False}

    # 1. capture ---------------------------------------------------------------------------------
    with stage("capture"):
        base = zoo.load("shapes-base")
        colors = zoo.load("shapes-colors")
        samples = zoo.dataset(n_cap, style="generic", task="caption", seed=101)
        toi = ns.positions.token_of_interest("circle")
        acts_a = ns.capture(base, samples, layer=-1, at=toi, max_new_tokens=24, **quiet)
        acts_b = ns.capture(colors, acts_a.samples, layer=-1, at=toi, max_new_tokens=24, **quiet)
        acts_a, acts_b = ns.pair(acts_a, acts_b)
        sec = rep.section(
            "Capture",
            "Both models caption the same images with the same generic prompt ('describe the image'). For each "
            "caption that says 'circle', the residual stream of the last layer is kept at the state that produces "
            "the word.",
        )
        sec.tables.append(
            (
                "captured samples",
                [
                    {
                        "samples": len(samples),
                        "base says circle": len(acts_a) + len(set(acts_a.skipped)),
                        "paired (both say circle)": len(acts_a),
                        "hidden size": acts_a.dim,
                        "layer": acts_a.info["layer"],
                    }
                ],
            )
        )
        sec.tables.append(
            (
                "example captions (base | colour fine-tune)",
                [
                    {"id": i, "base": a, "colors": b}
                    for i, a, b in zip(acts_a.ids[:4], acts_a.answers, acts_b.answers, strict=False)
                ],
            )
        )
        rep.results["capture"] = {"n_samples": len(samples), "n_paired": len(acts_a), "layer": acts_a.info["layer"]}

    # 2. concepts --------------------------------------------------------------------------------
    with stage("concepts"):
        k = len(zoo.COLORS)
        dico_a = ns.concepts.fit(acts_a, k=k, method="kmeans", seed=0)
        dico_b = ns.concepts.fit(acts_b, k=k, method="kmeans", seed=0)
        words_a = dico_a.ground_text(base, top=8)
        assign = dico_a.assign(acts_a).tolist()
        truth = [_circle_colour(s.meta) for s in acts_a.samples or []]
        rows, purities = [], []
        for c in range(k):
            members = [truth[i] for i, a in enumerate(assign) if a == c]
            top_colour, top_n = Counter(members).most_common(1)[0] if members else ("-", 0)
            purity = top_n / len(members) if members else float("nan")
            purities.append(purity)
            rows.append(
                {
                    "concept": c,
                    "samples": len(members),
                    "dominant circle colour": top_colour,
                    "purity": purity,
                    "words": words_a[c][:6],
                }
            )
        valid = [p for p in purities if p == p]
        mean_purity = sum(valid) / max(1, len(valid))
        sec = rep.section(
            "Concepts of 'circle' in shapes-base",
            f"K-means with K = {k} (the number of colours) on the circle states; each concept is grounded in words "
            "(through the final norm and the unembedding) and in its most activating images.",
        )
        sec.findings.append(
            f"Mean purity {mean_purity:.2f}: the share of a concept's samples whose circle has the concept's "
            "dominant colour (1/6 = 0.17 would be chance)."
        )
        sec.tables.append(("concepts", rows))
        top = ns.concepts.top_samples(dico_a, acts_a, n=5)
        rep.figure(
            sec,
            ns.concepts.plot_top_samples(top, words=words_a),
            "concepts_top_samples",
            "Most activating images of each concept, with its top words",
        )
        rep.results["concepts"] = {"k": k, "purity": purities, "mean_purity": mean_purity, "words": words_a}

    # 3. shift -----------------------------------------------------------------------------------
    with stage("shift"):
        report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=1.0, vlm=base)
        gain = (report.recovery_shifted - report.recovery_original).nan_to_num()
        sweep = report.alpha_sweep([0.0, 0.5, 1.0, 1.5, 2.0], keywords=list(zoo.COLORS), vlm=base)
        summary = report.summary()
        sec = rep.section(
            "Fine-tuning shift: shapes-base -> shapes-colors",
            "Shift vector of a concept = mean over its samples of (fine-tuned state - original state); "
            "shifted concept = original + alpha * shift. Matching by the Hungarian algorithm on cosine.",
        )
        better = float((gain > 0).float().mean())
        sec.findings.append(
            f"Shifted concepts are closer to their fine-tuned match than the originals for {better:.0%} of the "
            f"concepts (mean cosine gain {float(gain.mean()):+.3f})."
        )
        sec.tables.append(
            (
                "per concept",
                [
                    {
                        "concept": c,
                        "match": int(report.matching[c]),
                        "cos original": float(report.recovery_original[c]),
                        "cos shifted": float(report.recovery_shifted[c]),
                        "consistency": float(report.consistency[c]),
                        "magnitude": float(report.magnitude[c]),
                        "dynamics": report.dynamics[c],
                    }
                    for c in range(k)
                ],
            )
        )
        figures: list[tuple[Callable[[], Figure], str, str]] = [
            (lambda: plots.plot_recovery(report), "shift_recovery", "Recovery: original vs shifted concept"),
            (
                lambda: plots.plot_similarity_matrix(report),
                "shift_similarity",
                "Cosine between original and fine-tuned concepts",
            ),
            (lambda: plots.plot_gain_vs(report), "shift_gain_vs", "Recovery gain vs consistency and magnitude"),
            (lambda: plots.plot_alpha_sweep(sweep), "shift_alpha_sweep", "Recovery and colour-word overlap vs alpha"),
        ]
        for make, name, caption in figures:
            try:
                rep.figure(sec, make(), name, caption)
            except Exception as exc:  # a figure must never sink the report
                sec.findings.append(f"figure {name} failed: {exc}")
        rep.results["shift"] = {"summary": summary, "gain": gain.tolist(), "alpha_sweep": sweep.to_dict()}

    # 4. steering --------------------------------------------------------------------------------
    with stage("steering"):
        last = base.n_layers - 1
        q = {"max_new_tokens": 4, "progress": False}
        yesno = zoo.dataset(n_vqa, task="vqa", answer_type="yes/no", seed=201)
        number = zoo.dataset(n_vqa, task="vqa", answer_type="number", seed=202)
        evalset = zoo.dataset(n_eval, task="vqa", seed=203)
        before = ns.generate(base, evalset, **q)
        acts = ns.capture(base, yesno + number, layer=last, at="last_prompt", **quiet)
        vec = ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")
        after = ns.steer(base, evalset, vec.patch(alpha=ALPHA_TYPE), **q)
        coarse_rep = compare_vqa(before, after, evalset, touched=["yes/no", "number"])
        idx = [i for i, s in enumerate(evalset) if s.meta.get("answer_type") == "yes/no"]
        share = [sum(answer_type(a[i]) == "number" for i in idx) / max(1, len(idx)) for a in (before, after)]

        yn_acts = ns.capture(base, yesno, layer=last, at="last_prompt", **quiet)
        yn_acts.answers = ns.generate(base, yesno, **q)
        vec_no = ns.steering.target_answer(yn_acts, "yes", "no")
        after_no = ns.steer(base, evalset, vec_no.patch(alpha=ALPHA_NO), **q)
        no_rep = compare_vqa(before, after_no, evalset, source="yes", target="no")
        flipped = no_rep.turned / max(1, no_rep.source_counts[0])

        mid = max(0, base.n_layers // 2)
        caps = zoo.dataset(n_vqa, style="generic", task="caption", seed=204)
        cap_eval = zoo.dataset(max(30, n_eval // 3), style="generic", task="caption", seed=205)
        c = {"max_new_tokens": 24, "progress": False}
        source = ns.capture(
            base, caps, layer=mid, at=ns.positions.generated(reduce="mean"), max_new_tokens=24, progress=False
        )
        # target: the colour fine-tune's states where it says a colour word (greedy shapes-base rarely does)
        target = ns.capture(
            colors,
            caps,
            layer=mid,
            at=ns.positions.token_of_interest(list(zoo.COLORS)),
            max_new_tokens=24,
            progress=False,
        )
        styles = {"colors": zoo.COLORS, "places": zoo.BACKGROUNDS}
        cap_before = ns.generate(base, cap_eval, **c)
        rb = caption_report(cap_before, styles)
        vec_cap = ns.steering.coarse(source, target, layer=mid)
        cap_after = ns.steer(base, cap_eval, vec_cap.patch(alpha=ALPHA_CAPTION), **c)
        ra = caption_report(cap_after, styles)

        sec = rep.section(
            "Steering shapes-base without training",
            "Coarse vector = mean(target states) - mean(source states) at the last prompt token of the last layer, "
            f"added at every position and generation step (yes/no -> number: alpha = {ALPHA_TYPE:g}; yes -> no: "
            f"alpha = {ALPHA_NO:g}; both the selective values measured in docs/steering.md). Caption style: from the mean "
            "generated-token state of shapes-base captions to the states where shapes-colors says a colour word, "
            f"at layer {mid} (alpha = {ALPHA_CAPTION:g}).",
        )

        def moved(r: Any) -> str:
            return ", ".join(f"{t} {100 * d['delta']:+.1f}" for t, d in r.untouched_accuracy.items())

        sec.findings.append(
            f"yes/no -> number: the share of number answers to yes/no questions goes from {share[0]:.0%} to "
            f"{share[1]:.0%}; accuracy moved on the other types (points): {moved(coarse_rep)}."
        )
        sec.findings.append(
            f"yes -> no: {flipped:.0%} of the yes/no questions answered 'yes' are answered 'no' after steering; "
            f"accuracy moved on the other types (points): {moved(no_rep)}."
        )
        sec.findings.append(
            f"caption style: captions naming a colour go from {rb.rates.get('colors', 0):.0%} to "
            f"{ra.rates.get('colors', 0):.0%}."
        )
        acc_b, acc_a = coarse_rep.before.accuracy_by_type, coarse_rep.after.accuracy_by_type
        sec.tables.append(
            (
                "VQA accuracy by answer type (yes/no -> number steering)",
                [
                    {"answer type": t, "unsteered": acc_b.get(t, float("nan")), "steered": acc_a.get(t, float("nan"))}
                    for t in sorted(acc_b)
                ],
            )
        )
        sec.tables.append(
            (
                "example captions",
                [{"unsteered": b, "steered": a} for b, a in list(zip(cap_before, cap_after, strict=True))[:4]],
            )
        )
        fig = Figure(figsize=(10, 3.2))
        axes = fig.subplots(1, 3)
        _bar(axes[0], ["number share"], [share[0]], [share[1]], "yes/no questions -> number", "share")
        _bar(axes[1], ["answered no"], [0.0], [flipped], "questions answered yes -> no", "share")
        _bar(
            axes[2],
            ["colours", "places"],
            [rb.rates.get("colors", 0), rb.rates.get("places", 0)],
            [ra.rates.get("colors", 0), ra.rates.get("places", 0)],
            "caption style",
            "share of captions",
        )
        fig.tight_layout()
        rep.figure(sec, fig, "steering", "Steering effects")
        rep.results["steering"] = {
            "yesno_to_number": {"number_share_on_yesno": share, "report": coarse_rep.to_dict()},
            "yes_to_no": {"flipped_share": flipped, "report": no_rep.to_dict()},
            "caption_style": {"layer": mid, "before": rb.rates, "after": ra.rates},
        }

    # 5. report ----------------------------------------------------------------------------------
    with stage("report"):
        rep.write()
    if stage_bar is not None:
        stage_bar.close()
    return rep.write()  # again, with the report stage's own time
