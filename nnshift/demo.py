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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from nnshift.evaluate import CaptionReport, VQAComparison
    from nnshift.report import Report
    from nnshift.steering import Calibration
    from nnshift.store import Activations

__all__ = ["caption_layer", "run_demo"]


def _circle_colour(meta: dict[str, Any]) -> str | None:
    """The colour of the first circle in a shapes-world sample (its ground truth)."""
    for obj in meta.get("objects", []):
        if obj.get("shape") == "circle":
            return obj.get("color")
    return None


#: strengths `nnshift.steering.calibrate` tries for each steering (at the last layer for VQA, at `caption_layer`
#: for captions): the point with the highest target rate on a validation half of the evaluation samples whose
#: untouched accuracy drops by at most `MAX_UNTOUCHED_DROP` is kept, and the report shows its numbers on the other,
#: held-out half (docs/steering.md "Sweeps and calibration" measures the whole range on the shapes world)
ALPHAS_TYPE: tuple[float, ...] = (1.0, 1.5, 2.0)
ALPHAS_NO: tuple[float, ...] = (0.25, 0.3, 0.5)
ALPHAS_CAPTION: tuple[float, ...] = (0.5, 1.0)
MAX_UNTOUCHED_DROP = 0.02


def caption_layer(n_layers: int) -> int:
    """The first caption-style layer the demo calibrates: ``round(0.6 L) - 1`` (the paper's 20 of 32; 1 of 4)."""
    return max(0, round(0.6 * n_layers) - 1)


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


def _capture1(vlm: Any, samples: Any, **kwargs: Any) -> Activations:
    """`nnshift.capture` at one layer: its `Activations` (the demo never captures several layers at once)."""
    import nnshift as ns

    acts = ns.capture(vlm, samples, **kwargs)
    assert not isinstance(acts, dict), "the demo captures one layer at a time"  # an invariant, not a user error
    return acts


def _run(out: str | Path, fast: bool, progress: bool) -> Path:
    """The stages of `run_demo`, each timed in the report."""
    from nnshift.report import Report

    n_cap, n_vqa, n_eval = (60, 40, 60) if fast else (240, 100, 150)
    rep = Report(
        "nnshift demo: how fine-tuning moved the concepts of a tiny LLaVA, and steering it",
        out,
        subtitle="The shapes world: procedural images with known ground truth, a tiny LLaVA (shapes-base) and its "
        "colour fine-tune (shapes-colors, LoRA). Every number is in results.json.",
    )
    with _stages(rep, progress) as stage:
        with stage("capture"):
            base, colors, acts_a, acts_b = _capture_stage(rep, n_cap)
        with stage("concepts"):
            dico_a, dico_b = _concepts_stage(rep, base, acts_a, acts_b)
        with stage("shift"):
            _shift_stage(rep, base, acts_a, acts_b, dico_a, dico_b)
        with stage("steering"):
            vqa = _steer_vqa(base, n_vqa, n_eval)
            cap = _steer_captions(base, colors, n_vqa, n_eval)
            _steering_section(rep, vqa, cap)
        with stage("report"):
            rep.write()
    return rep.write()  # again, with the report stage's own time


@contextmanager
def _stages(rep: Report, progress: bool) -> Iterator[Callable[[str], Any]]:
    """A ``stage(name)`` context manager factory that times each stage into ``rep.timings`` (and a progress bar)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=5, desc="nnshift demo", unit="stage")

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        rep.timings[name] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)

    try:
        yield stage
    finally:
        if bar is not None:
            bar.close()


def _capture_stage(rep: Report, n_cap: int) -> tuple[Any, Any, Activations, Activations]:
    """Load both models, capture the "circle" states of their captions, pair them; the Capture section."""
    import nnshift as ns
    from nnshift import zoo

    base = zoo.load("shapes-base")
    colors = zoo.load("shapes-colors")
    samples = zoo.dataset(n_cap, style="generic", task="caption", seed=101)
    toi = ns.positions.token_of_interest("circle")
    acts_a = _capture1(base, samples, layer=-1, at=toi, max_new_tokens=24, progress=False)
    acts_b = _capture1(colors, acts_a.samples or [], layer=-1, at=toi, max_new_tokens=24, progress=False)
    acts_a, acts_b = ns.pair(acts_a, acts_b)
    sec = rep.section(
        "Capture",
        "Both models caption the same images with the same generic prompt ('describe the image'). For each "
        "caption that says 'circle', the residual stream of the last layer is kept at the state that produces "
        "the word.",
    )
    counts = {
        "samples": len(samples),
        "base says circle": len(acts_a) + len(set(acts_a.skipped)),
        "paired (both say circle)": len(acts_a),
        "hidden size": acts_a.dim,
        "layer": acts_a.info["layer"],
    }
    sec.tables.append(("captured samples", [counts]))
    examples = zip(acts_a.ids[:4], acts_a.answers, acts_b.answers, strict=False)
    sec.tables.append(
        ("example captions (base | colour fine-tune)", [{"id": i, "base": a, "colors": b} for i, a, b in examples])
    )
    rep.results["capture"] = {"n_samples": len(samples), "n_paired": len(acts_a), "layer": acts_a.info["layer"]}
    return base, colors, acts_a, acts_b


def _purity_rows(assign: list[int], truth: list[str | None], words: list[list[str]], k: int) -> list[dict[str, Any]]:
    """Per concept: its samples, their dominant circle colour, purity (share of that colour) and top words."""
    rows = []
    for c in range(k):
        members = [truth[i] for i, a in enumerate(assign) if a == c]
        top_colour, top_n = Counter(members).most_common(1)[0] if members else ("-", 0)
        purity = top_n / len(members) if members else float("nan")
        rows.append(
            {"concept": c, "samples": len(members), "dominant circle colour": top_colour, "purity": purity}
            | {"words": words[c][:6]}
        )
    return rows


def _concepts_stage(rep: Report, base: Any, acts_a: Activations, acts_b: Activations) -> tuple[Any, Any]:
    """K-means dictionaries of both models, grounded in words and images, purity against the circle colour."""
    import nnshift as ns
    from nnshift import zoo

    k = len(zoo.COLORS)
    dico_a = ns.concepts.fit(acts_a, k=k, method="kmeans", seed=0)
    dico_b = ns.concepts.fit(acts_b, k=k, method="kmeans", seed=0)
    words_a = dico_a.ground_text(base, top=8)
    truth = [_circle_colour(s.meta) for s in acts_a.samples or []]
    rows = _purity_rows(dico_a.assign(acts_a).tolist(), truth, words_a, k)
    purities = [r["purity"] for r in rows]
    valid = [p for p in purities if p == p]
    mean_purity = sum(valid) / max(1, len(valid))
    sec = rep.section(
        "Concepts of 'circle' in shapes-base",
        f"K-means with K = {k} (the number of colours) on the circle states; each concept is grounded in words "
        "(through the final norm and the unembedding) and in its most activating images.",
    )
    sec.findings.append(
        f"Mean purity {mean_purity:.2f}: the share of a concept's samples whose circle has the concept's "
        f"dominant colour (1/{k} = {1 / k:.2f} would be chance)."
    )
    sec.tables.append(("concepts", rows))
    top = ns.concepts.top_samples(dico_a, acts_a, n=5)
    fig = ns.concepts.plot_top_samples(top, words=words_a)
    rep.figure(sec, fig, "concepts_top_samples", "Most activating images of each concept, with its top words")
    rep.results["concepts"] = {"k": k, "purity": purities, "mean_purity": mean_purity, "words": words_a}
    return dico_a, dico_b


def _shift_stage(rep: Report, base: Any, acts_a: Activations, acts_b: Activations, dico_a: Any, dico_b: Any) -> None:
    """Shift analysis base -> colour fine-tune: recovery, consistency, dynamics, alpha sweep and their figures."""
    import nnshift as ns
    from nnshift import plots, zoo

    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=1.0, vlm=base)
    gain = (report.recovery_shifted - report.recovery_original).nan_to_num()
    sweep = report.alpha_sweep([0.0, 0.5, 1.0, 1.5, 2.0], keywords=list(zoo.COLORS), vlm=base)
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
    sec.tables.append(("per concept", report.per_concept()))
    figures: list[tuple[Callable[[], Any], str, str]] = [
        (lambda: plots.plot_recovery(report), "shift_recovery", "Recovery: original vs shifted concept"),
        (lambda: plots.plot_similarity_matrix(report), "shift_similarity", "Cosine between original and fine-tuned"),
        (lambda: plots.plot_gain_vs(report), "shift_gain_vs", "Recovery gain vs consistency and magnitude"),
        (lambda: plots.plot_alpha_sweep(sweep), "shift_alpha_sweep", "Recovery and colour-word overlap vs alpha"),
    ]
    for make, name, caption in figures:
        try:
            rep.figure(sec, make(), name, caption)
        except Exception as exc:  # a figure must never sink the report
            sec.findings.append(f"figure {name} failed: {exc}")
    rep.results["shift"] = {"summary": report.summary(), "gain": gain.tolist(), "alpha_sweep": sweep.to_dict()}


@dataclass
class _Calibrated:
    """One calibrated steering: the `Calibration` and its held-out numbers (unsteered vs the chosen point)."""

    calibration: Calibration
    effect_before: float
    effect: float
    comparison: Any = None  # a VQAComparison for a VQA steering


def _calibrated_vqa(cal: Calibration, samples: list[Any], **compare: Any) -> _Calibrated:
    """A VQA calibration with the `compare_vqa` of its held-out answers (unsteered vs the chosen point)."""
    from nnshift.evaluate import compare_vqa

    before, after, by_id = cal.held_out_unsteered, cal.held_out_row, {s.id: s for s in samples}
    cmp = compare_vqa(before.answers, after.answers, [by_id[i] for i in cal.held_out.sample_ids], **compare)
    return _Calibrated(cal, before.target_rate, after.target_rate, cmp)


@dataclass
class _VQASteering:
    """The two calibrated VQA steerings of the demo."""

    coarse: _Calibrated
    to_no: _Calibrated


def _steer_vqa(base: Any, n_vqa: int, n_eval: int) -> _VQASteering:
    """Coarse yes/no -> number and target answer yes -> no at the last layer, each calibrated on fresh questions."""
    import nnshift as ns
    from nnshift import zoo
    from nnshift.steering import AnswerTypeTarget, TargetAnswer

    last = base.n_layers - 1
    q: dict[str, Any] = {"max_new_tokens": 4, "progress": False}
    yesno = zoo.dataset(n_vqa, task="vqa", answer_type="yes/no", seed=201)
    number = zoo.dataset(n_vqa, task="vqa", answer_type="number", seed=202)
    evalset = zoo.dataset(n_eval, task="vqa", seed=203)
    acts = _capture1(base, yesno + number, layer=last, at="last_prompt", progress=False)
    vec = ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")
    yn_acts = _capture1(base, yesno, layer=last, at="last_prompt", progress=False)
    yn_acts.answers = ns.generate(base, yesno, **q)
    vec_no = ns.steering.target_answer(yn_acts, "yes", "no")
    c = {"max_untouched_drop": MAX_UNTOUCHED_DROP, "fluency": False, **q}
    cal_type = ns.steering.calibrate(
        base, vec, evalset, target=AnswerTypeTarget("yes/no", "number"), alphas=ALPHAS_TYPE, **c
    )
    cal_no = ns.steering.calibrate(base, vec_no, evalset, target=TargetAnswer("yes", "no"), alphas=ALPHAS_NO, **c)
    return _VQASteering(
        coarse=_calibrated_vqa(cal_type, evalset, touched=["yes/no", "number"]),
        to_no=_calibrated_vqa(cal_no, evalset, source="yes", target="no"),
    )


@dataclass
class _CaptionSteering:
    """The caption-style steering of the demo: layer, calibration, style reports and held-out captions before/after."""

    layer: int
    steering: _Calibrated
    before: CaptionReport
    after: CaptionReport
    captions: list[tuple[str, str]]


def _steer_captions(base: Any, colors: Any, n_vqa: int, n_eval: int) -> _CaptionSteering:
    """Caption style generic -> colours: a coarse vector from base captions to colour words of the fine-tune."""
    import nnshift as ns
    from nnshift import zoo
    from nnshift.evaluate import caption_report
    from nnshift.steering import CaptionStyle

    layer = caption_layer(base.n_layers)
    caps = zoo.dataset(n_vqa, style="generic", task="caption", seed=204)
    n_cap = max(30, n_eval // 3)
    cap_eval = zoo.dataset(n_cap, style="generic", task="caption", seed=205)
    c: dict[str, Any] = {"max_new_tokens": 24, "progress": False}
    layers = sorted({layer, min(layer + 1, base.n_layers - 1)})  # calibrate chooses the layer too
    source = ns.capture(base, caps, layer=layers, at=ns.positions.generated(reduce="mean"), **c)
    # target: the colour fine-tune's states where it says a colour word (greedy shapes-base rarely does)
    target = ns.capture(colors, caps, layer=layers, at=ns.positions.token_of_interest(list(zoo.COLORS)), **c)
    assert isinstance(source, dict) and isinstance(target, dict)  # a list of layers gives {layer: Activations}
    vecs = {k: ns.steering.coarse(source[k], target[k], layer=k) for k in layers}
    keep = zoo.dataset(2 * n_cap, task="vqa", seed=206)  # questions whose accuracy the style must keep
    cal = ns.steering.calibrate(
        base, vecs, cap_eval, target=CaptionStyle("colors"), alphas=ALPHAS_CAPTION, keep=keep,
        max_untouched_drop=MAX_UNTOUCHED_DROP, fluency=False, **c,
    )  # fmt: skip
    before, after = cal.held_out_unsteered, cal.held_out_row
    styles = {"colors": zoo.COLORS, "places": zoo.BACKGROUNDS}
    return _CaptionSteering(
        layer=cal.layer,
        steering=_Calibrated(cal, before.target_rate, after.target_rate),
        before=caption_report(before.answers, styles),
        after=caption_report(after.answers, styles),
        captions=list(zip(before.answers, after.answers, strict=True)),
    )


def _steering_figure(vqa: _VQASteering, cap: _CaptionSteering) -> Any:
    """Before / after bars (held-out samples) of each steering's effect and of the accuracy it should not touch."""
    from nnshift.plots import BeforeAfter, plot_before_after

    def untouched(r: VQAComparison, title: str) -> BeforeAfter:
        u = r.untouched_accuracy
        before, after = [d["before"] for d in u.values()], [d["after"] for d in u.values()]
        return BeforeAfter(title, list(u), before, after, "accuracy")

    coarse, no = vqa.coarse, vqa.to_no
    to_no = no.comparison
    n = max(1, to_no.before.n)
    rb, ra = cap.before.rates, cap.after.rates
    panels = [
        BeforeAfter(
            f"yes/no questions answered with a number (alpha {coarse.calibration.alpha:g})",
            ["number"],
            [coarse.effect_before],
            [coarse.effect],
        ),
        untouched(coarse.comparison, "yes/no -> number: accuracy on the other types"),
        BeforeAfter(
            f"answers 'yes' / 'no', all questions (yes -> no, alpha {no.calibration.alpha:g})",
            ["yes", "no"],
            [to_no.source_counts[0] / n, to_no.target_counts[0] / n],
            [to_no.source_counts[1] / n, to_no.target_counts[1] / n],
        ),
        untouched(to_no, "yes -> no: accuracy on the other types"),
        BeforeAfter(
            f"captions naming a colour / a background (alpha {cap.steering.calibration.alpha:g})",
            ["colours", "places"],
            [rb.get("colors", 0.0), rb.get("places", 0.0)],
            [ra.get("colors", 0.0), ra.get("places", 0.0)],
        ),
    ]
    return plot_before_after(panels, ncols=5)


def _validation_rows(name: str, c: _Calibrated) -> list[dict[str, Any]]:
    """One table row per strength tried on the validation half: target rate, untouched drop, chosen."""
    cal = c.calibration
    return [
        {"steering": name, "layer": r.layer, "alpha": r.alpha, "target rate": f"{r.target_rate:.0%}"}
        | {"untouched accuracy drop (points)": f"{100 * r.max_drop:+.1f}", "chosen": "yes" if r is cal.chosen else ""}
        for r in cal.validation.steering
    ]


def _why(c: _Calibrated) -> str:
    """How the strength was chosen, from the calibration itself."""
    cal = c.calibration
    alphas = ", ".join(f"{r.alpha:g}" for r in cal.validation.steering)
    n_val, n_held = len(cal.validation.sample_ids), len(cal.held_out.sample_ids)
    limit = 100 * cal.max_untouched_drop
    if cal.met:
        how = f"the strongest of {{{alphas}}} that kept the untouched accuracy within {limit:g} points"
    else:
        how = f"the least damaging of {{{alphas}}}: none kept the untouched accuracy within {limit:g} points"
    return f"alpha {cal.alpha:g}, {how} on {n_val} validation samples; measured on {n_held} held-out ones"


def _vqa_findings(vqa: _VQASteering) -> list[str]:
    """The findings of the two VQA steerings, every claim computed from this run's held-out numbers."""
    from nnshift.report import untouched_finding

    c, n = vqa.coarse, vqa.to_no
    return [
        f"yes/no -> number ({_why(c)}): the share of number answers to yes/no questions goes from "
        f"{c.effect_before:.0%} to {c.effect:.0%}; {untouched_finding(c.comparison.untouched_accuracy)}.",
        f"yes -> no ({_why(n)}): {n.comparison.turned} of the {n.comparison.source_counts[0]} questions "
        f"answered 'yes' ({n.effect:.0%}) are answered 'no' after steering; "
        f"{untouched_finding(n.comparison.untouched_accuracy)}.",
    ]


def _steering_section(rep: Report, vqa: _VQASteering, cap: _CaptionSteering) -> None:
    """The steering section: findings computed from this run's numbers, tables, the before / after figure."""
    sec = rep.section(
        "Steering shapes-base without training",
        "Coarse vector = mean(target states) - mean(source states) at the last prompt token of the last layer, "
        "added at every position and generation step. Each steering's strength is chosen by "
        "ns.steering.calibrate: the highest target rate on a validation half of the evaluation samples that "
        f"keeps the other answer types' accuracy within {100 * MAX_UNTOUCHED_DROP:g} points; every number below "
        "is measured on the other, held-out half. Caption style: from the mean generated-token state of "
        "shapes-base captions to the states where shapes-colors says a colour word, at the layer calibrate "
        f"chose ({cap.layer}), keeping the accuracy of VQA questions.",
    )
    sec.findings += _vqa_findings(vqa)
    rb, ra = cap.before.rates, cap.after.rates
    held = cap.steering.calibration.held_out_row
    sec.findings.append(
        f"caption style ({_why(cap.steering)}): captions naming a colour go from {rb.get('colors', 0):.0%} to "
        f"{ra.get('colors', 0):.0%}, naming a background from {rb.get('places', 0):.0%} to "
        f"{ra.get('places', 0):.0%}; largest drop of the kept questions' accuracy: {100 * held.max_drop:+.1f} points."
    )
    rows = [*_validation_rows("yes/no -> number", vqa.coarse), *_validation_rows("yes -> no", vqa.to_no)]
    rows += _validation_rows("caption style", cap.steering)
    sec.tables.append(("strengths tried on the validation half (calibrate)", rows))
    c, n = vqa.coarse.comparison, vqa.to_no.comparison
    nan = float("nan")
    sec.tables.append(
        (
            "VQA accuracy by answer type (held-out questions, the calibrated strengths)",
            [
                {"answer type": t, "unsteered": c.before.accuracy_by_type.get(t, nan)}
                | {"yes/no -> number": c.after.accuracy_by_type.get(t, nan)}
                | {"yes -> no": n.after.accuracy_by_type.get(t, nan)}
                for t in sorted(c.before.accuracy_by_type)
            ],
        )
    )
    sec.tables.append(("example held-out captions", [{"unsteered": b, "steered": a} for b, a in cap.captions[:4]]))
    rep.figure(
        sec, _steering_figure(vqa, cap), "steering", "Steering effects on held-out samples, unsteered vs steered"
    )
    rep.results["steering"] = {
        "yesno_to_number": _calibration_results(vqa.coarse),
        "yes_to_no": _calibration_results(vqa.to_no),
        "caption_style": _calibration_results(cap.steering) | {"before": rb, "after": ra},
    }


def _calibration_results(c: _Calibrated) -> dict[str, Any]:
    """results.json entry of one calibrated steering: the point, its held-out numbers, every validation row."""
    cal = c.calibration
    out: dict[str, Any] = {
        "layer": cal.layer,
        "alpha": cal.alpha,
        "met": cal.met,
        "max_untouched_drop": cal.max_untouched_drop,
        "n_validation": len(cal.validation.sample_ids),
        "n_held_out": len(cal.held_out.sample_ids),
        "effect_before": c.effect_before,
        "effect": c.effect,
        "held_out_drop": cal.held_out_row.max_drop,
        "validation": [
            {"layer": r.layer, "alpha": r.alpha, "target_rate": r.target_rate, "max_drop": r.max_drop}
            for r in cal.validation.steering
        ],
    }
    if c.comparison is not None:
        out["report"] = c.comparison.to_dict()
    return out
