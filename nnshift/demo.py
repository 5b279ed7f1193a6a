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
    from nnshift.store import Activations

__all__ = ["caption_layer", "run_demo"]


def _circle_colour(meta: dict[str, Any]) -> str | None:
    """The colour of the first circle in a shapes-world sample (its ground truth)."""
    for obj in meta.get("objects", []):
        if obj.get("shape") == "circle":
            return obj.get("color")
    return None


#: strengths the demo sweeps for its two VQA steerings (docs/steering.md measures the whole range on the shapes
#: world); it keeps the strongest one that is selective on this run (no untouched answer type moves by more than
#: `nnshift.report.SELECTIVE_POINTS`), or else the weakest one, and says what it costs
ALPHAS_TYPE: tuple[float, ...] = (1.0, 1.5, 2.0)
ALPHAS_NO: tuple[float, ...] = (0.3, 0.5)
ALPHA_CAPTION = 1.0


def caption_layer(n_layers: int) -> int:
    """The layer the demo steers caption style at: ``round(0.6 L) - 1`` (the paper's 20 of 32; 1 for the zoo's 4)."""
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
    per_concept = [
        {
            "concept": c,
            "match": int(report.matching[c]),
            "cos original": float(report.recovery_original[c]),
            "cos shifted": float(report.recovery_shifted[c]),
            "consistency": float(report.consistency[c]),
            "magnitude": float(report.magnitude[c]),
            "dynamics": report.dynamics[c],
        }
        for c in range(dico_a.k)
    ]
    sec.tables.append(("per concept", per_concept))
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
class _Tried:
    """One strength of a sweep: alpha, the steering's effect (a share) and the comparison with the unsteered run."""

    alpha: float
    effect: float
    comparison: VQAComparison

    @property
    def selective(self) -> bool:
        """No untouched answer type's accuracy moved by more than `SELECTIVE_POINTS`."""
        from nnshift.report import SELECTIVE_POINTS, max_untouched_move

        return max_untouched_move(self.comparison.untouched_accuracy) <= SELECTIVE_POINTS


def _choose(tried: list[_Tried]) -> _Tried:
    """The strongest selective strength (largest effect, then smallest alpha), else the weakest strength tried."""
    ok = [t for t in tried if t.selective]
    if not ok:
        return min(tried, key=lambda t: t.alpha)
    return max(ok, key=lambda t: (t.effect, -t.alpha))


@dataclass
class _VQASteering:
    """The two VQA steerings of the demo: every strength tried, and the chosen one of each."""

    type_sweep: list[_Tried]
    no_sweep: list[_Tried]
    number_share_before: float

    @property
    def coarse(self) -> _Tried:
        """The chosen yes/no -> number strength."""
        return _choose(self.type_sweep)

    @property
    def to_no(self) -> _Tried:
        """The chosen yes -> no strength."""
        return _choose(self.no_sweep)


def _steer_vqa(base: Any, n_vqa: int, n_eval: int) -> _VQASteering:
    """Coarse yes/no -> number and target answer yes -> no at the last layer, swept over strengths, on fresh questions."""
    import nnshift as ns
    from nnshift import zoo
    from nnshift.evaluate import answer_type, compare_vqa

    last = base.n_layers - 1
    q: dict[str, Any] = {"max_new_tokens": 4, "progress": False}
    yesno = zoo.dataset(n_vqa, task="vqa", answer_type="yes/no", seed=201)
    number = zoo.dataset(n_vqa, task="vqa", answer_type="number", seed=202)
    evalset = zoo.dataset(n_eval, task="vqa", seed=203)
    before = ns.generate(base, evalset, **q)
    idx = [i for i, s in enumerate(evalset) if s.meta.get("answer_type") == "yes/no"]

    def number_share(answers: list[str]) -> float:
        return sum(answer_type(answers[i]) == "number" for i in idx) / max(1, len(idx))

    acts = _capture1(base, yesno + number, layer=last, at="last_prompt", progress=False)
    vec = ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")
    type_sweep = []
    for a in ALPHAS_TYPE:
        after = ns.steer(base, evalset, vec.patch(alpha=a), **q)
        cmp = compare_vqa(before, after, evalset, touched=["yes/no", "number"])
        type_sweep.append(_Tried(a, number_share(after), cmp))

    yn_acts = _capture1(base, yesno, layer=last, at="last_prompt", progress=False)
    yn_acts.answers = ns.generate(base, yesno, **q)
    vec_no = ns.steering.target_answer(yn_acts, "yes", "no")
    no_sweep = []
    for a in ALPHAS_NO:
        cmp = compare_vqa(
            before, ns.steer(base, evalset, vec_no.patch(alpha=a), **q), evalset, source="yes", target="no"
        )
        no_sweep.append(_Tried(a, cmp.turned / max(1, cmp.source_counts[0]), cmp))
    return _VQASteering(type_sweep=type_sweep, no_sweep=no_sweep, number_share_before=number_share(before))


@dataclass
class _CaptionSteering:
    """The caption-style steering of the demo: layer, style reports and captions before and after."""

    layer: int
    before: CaptionReport
    after: CaptionReport
    captions: list[tuple[str, str]]


def _steer_captions(base: Any, colors: Any, n_vqa: int, n_eval: int) -> _CaptionSteering:
    """Caption style generic -> colours: a coarse vector from base captions to colour words of the fine-tune."""
    import nnshift as ns
    from nnshift import zoo
    from nnshift.evaluate import caption_report

    layer = caption_layer(base.n_layers)
    caps = zoo.dataset(n_vqa, style="generic", task="caption", seed=204)
    cap_eval = zoo.dataset(max(30, n_eval // 3), style="generic", task="caption", seed=205)
    c: dict[str, Any] = {"max_new_tokens": 24, "progress": False}
    source = _capture1(base, caps, layer=layer, at=ns.positions.generated(reduce="mean"), **c)
    # target: the colour fine-tune's states where it says a colour word (greedy shapes-base rarely does)
    target = _capture1(colors, caps, layer=layer, at=ns.positions.token_of_interest(list(zoo.COLORS)), **c)
    styles = {"colors": zoo.COLORS, "places": zoo.BACKGROUNDS}
    cap_before = ns.generate(base, cap_eval, **c)
    vec = ns.steering.coarse(source, target, layer=layer)
    cap_after = ns.steer(base, cap_eval, vec.patch(alpha=ALPHA_CAPTION), **c)
    return _CaptionSteering(
        layer=layer,
        before=caption_report(cap_before, styles),
        after=caption_report(cap_after, styles),
        captions=list(zip(cap_before, cap_after, strict=True)),
    )


def _steering_figure(vqa: _VQASteering, cap: _CaptionSteering) -> Any:
    """Before / after bars of each steering's effect and of the accuracy on the answer types it should not touch."""
    from nnshift.plots import BeforeAfter, plot_before_after

    def untouched(r: VQAComparison, title: str) -> BeforeAfter:
        u = r.untouched_accuracy
        before, after = [d["before"] for d in u.values()], [d["after"] for d in u.values()]
        return BeforeAfter(title, list(u), before, after, "accuracy")

    coarse, to_no = vqa.coarse, vqa.to_no.comparison
    n = max(1, to_no.before.n)
    rb, ra = cap.before.rates, cap.after.rates
    panels = [
        BeforeAfter(
            f"yes/no questions answered with a number (alpha {coarse.alpha:g})",
            ["number"],
            [vqa.number_share_before],
            [coarse.effect],
        ),
        untouched(coarse.comparison, "yes/no -> number: accuracy on the other types"),
        BeforeAfter(
            f"answers 'yes' / 'no', all questions (yes -> no, alpha {vqa.to_no.alpha:g})",
            ["yes", "no"],
            [to_no.source_counts[0] / n, to_no.target_counts[0] / n],
            [to_no.source_counts[1] / n, to_no.target_counts[1] / n],
        ),
        untouched(to_no, "yes -> no: accuracy on the other types"),
        BeforeAfter(
            f"captions naming a colour / a background (alpha {ALPHA_CAPTION:g})",
            ["colours", "places"],
            [rb.get("colors", 0.0), rb.get("places", 0.0)],
            [ra.get("colors", 0.0), ra.get("places", 0.0)],
        ),
    ]
    return plot_before_after(panels, ncols=5)


def _sweep_rows(name: str, effect: str, tried: list[_Tried]) -> list[dict[str, Any]]:
    """One table row per strength tried: effect, accuracy moved on the untouched types, selective, chosen."""
    chosen = _choose(tried)
    return [
        {"steering": name, "alpha": t.alpha, effect: f"{t.effect:.0%}"}
        | {
            "accuracy moved on untouched types (points)": ", ".join(
                f"{k} {100 * d['delta']:+.1f}" for k, d in t.comparison.untouched_accuracy.items()
            ),
            "selective": "yes" if t.selective else "no",
            "chosen": "yes" if t is chosen else "",
        }
        for t in tried
    ]


def _vqa_findings(vqa: _VQASteering) -> list[str]:
    """The findings of the two VQA steerings, every claim computed from this run's numbers."""
    from nnshift.report import SELECTIVE_POINTS, untouched_finding

    def why(tried: list[_Tried]) -> str:
        alphas = ", ".join(f"{t.alpha:g}" for t in tried)
        if any(t.selective for t in tried):
            return f"alpha {_choose(tried).alpha:g}, the strongest selective one of {{{alphas}}}"
        return (
            f"alpha {_choose(tried).alpha:g}, the weakest of {{{alphas}}}: none kept within {SELECTIVE_POINTS:g} points"
        )

    c, n = vqa.coarse, vqa.to_no
    return [
        f"yes/no -> number ({why(vqa.type_sweep)}): the share of number answers to yes/no questions goes from "
        f"{vqa.number_share_before:.0%} to {c.effect:.0%}; {untouched_finding(c.comparison.untouched_accuracy)}.",
        f"yes -> no ({why(vqa.no_sweep)}): {n.comparison.turned} of the {n.comparison.source_counts[0]} questions "
        f"answered 'yes' ({n.effect:.0%}) are answered 'no' after steering; "
        f"{untouched_finding(n.comparison.untouched_accuracy)}.",
    ]


def _steering_section(rep: Report, vqa: _VQASteering, cap: _CaptionSteering) -> None:
    """The steering section: findings computed from this run's numbers, tables, the before / after figure."""
    sec = rep.section(
        "Steering shapes-base without training",
        "Coarse vector = mean(target states) - mean(source states) at the last prompt token of the last layer, "
        "added at every position and generation step; each VQA steering is swept over a few strengths and the "
        "strongest one that leaves the other answer types' accuracy within 2 points is shown. Caption style: from "
        "the mean generated-token state of shapes-base captions to the states where shapes-colors says a colour "
        f"word, at layer {cap.layer} (alpha = {ALPHA_CAPTION:g}).",
    )
    sec.findings += _vqa_findings(vqa)
    rb, ra = cap.before.rates, cap.after.rates
    sec.findings.append(
        f"caption style: captions naming a colour go from {rb.get('colors', 0):.0%} to {ra.get('colors', 0):.0%}, "
        f"naming a background from {rb.get('places', 0):.0%} to {ra.get('places', 0):.0%}."
    )
    sweep = _sweep_rows("yes/no -> number", "effect", vqa.type_sweep) + _sweep_rows("yes -> no", "effect", vqa.no_sweep)
    sec.tables.append(("strengths tried (effect: number answers to yes/no questions; 'yes' turned to 'no')", sweep))
    acc = [(t.comparison.before.accuracy_by_type, t.comparison.after.accuracy_by_type) for t in (vqa.coarse, vqa.to_no)]
    nan = float("nan")
    sec.tables.append(
        (
            "VQA accuracy by answer type (the chosen strengths)",
            [
                {"answer type": t, "unsteered": acc[0][0].get(t, nan)}
                | {"yes/no -> number": acc[0][1].get(t, nan), "yes -> no": acc[1][1].get(t, nan)}
                for t in sorted(acc[0][0])
            ],
        )
    )
    sec.tables.append(("example captions", [{"unsteered": b, "steered": a} for b, a in cap.captions[:4]]))
    rep.figure(sec, _steering_figure(vqa, cap), "steering", "Steering effects, unsteered vs steered")
    rep.results["steering"] = {
        "yesno_to_number": _sweep_results(vqa.type_sweep) | {"number_share_before": vqa.number_share_before},
        "yes_to_no": _sweep_results(vqa.no_sweep),
        "caption_style": {"layer": cap.layer, "alpha": ALPHA_CAPTION, "before": rb, "after": ra},
    }


def _sweep_results(tried: list[_Tried]) -> dict[str, Any]:
    """results.json entry of one sweep: the chosen alpha, its effect and comparison, and every strength tried."""
    chosen = _choose(tried)
    return {
        "alpha": chosen.alpha,
        "effect": chosen.effect,
        "selective": chosen.selective,
        "report": chosen.comparison.to_dict(),
        "sweep": [{"alpha": t.alpha, "effect": t.effect, "selective": t.selective} for t in tried],
    }
