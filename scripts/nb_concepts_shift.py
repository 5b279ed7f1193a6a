"""Cell sources of notebooks 01 (concepts) and 02 (fine-tuning shift), and the cell helpers; see build_notebooks.py."""

from __future__ import annotations

import textwrap

__all__ = ["NB01", "NB02", "SETUP", "code", "md"]

SETUP = """%matplotlib inline
import warnings
warnings.filterwarnings("ignore")
from transformers.utils import logging
logging.disable_progress_bar()  # no "Loading weights" bars
import torch
import nnshift as ns
from nnshift import zoo, plots
torch.manual_seed(0)
torch.set_num_threads(1)  # the shapes models are tiny: one thread is as fast and never thrashes"""


def md(text: str) -> tuple[str, str]:
    """A markdown cell (indentation and surrounding blank lines removed)."""
    return ("md", textwrap.dedent(text).strip())


def code(text: str) -> tuple[str, str]:
    """A code cell (indentation and surrounding blank lines removed)."""
    return ("code", textwrap.dedent(text).strip())


NB01 = [
    md("""
    # 1. Concepts of a token of interest

    Capture the residual stream of `shapes-base` where it says *circle*, learn a concept dictionary, and ground
    each concept in words and images. The shapes world knows the truth (every circle's colour), so we can check
    what the concepts found.

    **The method (CoX-LMM).** Pick a token of interest (TOI), here *circle*. For every image whose generated
    caption contains the TOI, keep the residual stream `h_l(x)` at layer `l` at the position where the model
    produces it. Stack these `M` vectors into `Z` (`[M, D]`) and factor `Z ≈ U V`: the rows of `U` are the
    `K` concepts, `V` says how much each sample uses each concept. A concept is then read in two ways: in
    words (decode it through the model's final norm and unembedding) and in images (the samples that activate
    it most)."""),
    code(SETUP),
    code('base = zoo.load("shapes-base")\nbase'),
    code('samples = zoo.dataset(240, style="generic", task="caption", seed=1)\nsamples[0].image.resize((144, 144))'),
    code("""
    acts = ns.capture(base, samples, layer=-1, at=ns.positions.token_of_interest("circle"),
                      max_new_tokens=24, progress=False)
    print(acts)
    print(acts.answers[:3])
    print(f"{len(acts)} of {len(samples)} captions say 'circle' and give one row each; "
          f"the other {len(acts.skipped)} are skipped")
    named = sum(any(c in a.replace(",", " ").split() for c in zoo.COLORS) for a in acts.answers)
    print(f"{named} of {len(acts)} of these captions name a colour")"""),
    md("""
    `ns.capture` generated a caption for every image and kept the residual stream at the last layer
    (`layer=-1`) at the first position where the caption says *circle*. A sample whose caption never says the
    token has no such position, so it is skipped, not padded: the rows of `acts` are exactly the set
    `X_TOI` of the paper. `acts.answers` keeps the generated text, `acts.samples` the images and their
    metadata."""),
    md("""
    ## K-means with K = number of colours

    The shift paper uses K-means: the concepts are the centroids, and a sample belongs to its nearest centroid.
    Each line below is one concept decoded into its top words (the concept vector passed through the final norm
    and the unembedding, as if it were the last hidden state)."""),
    code("""
    dico = ns.concepts.fit(acts, k=len(zoo.COLORS), method="kmeans", seed=0)
    words = dico.ground_text(base, top=8)
    for i, w in enumerate(words):
        print(i, " ".join(w))
    first_colour = [next((x for x in w if x in zoo.COLORS), None) for w in words]
    print(f"'circle' is in {sum('circle' in w for w in words)} of {dico.k} word lists")
    print(f"{sum(c is not None for c in first_colour)} of {dico.k} concepts have a colour among their top 8 words; "
          f"{len({c for c in first_colour if c})} different colours lead them")"""),
    md("""
    How to read it: *circle* can rank high in every list because every row of `Z` was taken where the model
    was about to say it; the other words tell the concepts apart. Compare the colour words here with how
    often the captions themselves name a colour (printed after the capture): a colour that the concepts carry
    but the captions do not say is information in the residual stream beyond the text. Words can mislead, so
    the next cell checks the concepts against the ground truth."""),
    code("""
    from collections import Counter
    def circle_colour(s):
        return next(o['color'] for o in s.meta['objects'] if o['shape'] == 'circle')
    assign = dico.assign(acts).tolist()
    purities, majority = [], []
    for c in range(dico.k):
        cols = Counter(circle_colour(acts.samples[i]) for i, a in enumerate(assign) if a == c)
        n = sum(cols.values())
        majority.append(cols.most_common(1)[0][0] if n else None)
        purities.append(cols.most_common(1)[0][1] / n if n else float("nan"))
        print(c, dict(cols.most_common(3)), f'purity {purities[-1]:.2f}' if n else '')
    mean_purity = sum(purities) / len(purities)
    print(f"mean purity {mean_purity:.2f} (a concept blind to colour: about {1 / len(zoo.COLORS):.2f}); "
          f"{sum(p >= 0.9 for p in purities)} of {dico.k} concepts hold one circle colour in at least 90% of their samples")
    assert mean_purity > 1 / len(zoo.COLORS), "the concepts should separate circle colours better than chance"
    """),
    md("""
    *Purity* is the share of a concept's samples whose circle has the concept's most common colour. It is
    computed from the shapes world's ground truth, which real datasets do not have: there you rely on the
    groundings alone. High purity means the unsupervised dictionary found the colour of the TOI as its main
    axis of variation."""),
    code("top = ns.concepts.top_samples(dico, acts, n=5)\nns.concepts.plot_top_samples(top, words=words)"),
    md("""
    Each row is one concept: its grounding words and the 5 samples that activate it most (MAS, *most
    activating samples*). A concept is interpretable when its images share something visible and its words
    name it. The cell below checks the images against the first colour word of each concept, then whether the
    concept's true majority colour (from the purity cell) is among its words at all: the first word is not
    always the right one, which is why the paper reads words and images together."""),
    code("""
    agree = [sum(circle_colour(acts.samples[i]) == first_colour[k] for i in row)
             for k, row in enumerate(top.indices.tolist())]
    for k, a in enumerate(agree):
        print(f"concept {k}: first colour word {first_colour[k]!r}, {a} of {top.indices.shape[1]} top images have a circle of that colour")
    print(f"images and words agree for {sum(agree)} of {top.indices.numel()} top images")
    print(f"the true majority colour is among the top 8 words of {sum(m in w for m, w in zip(majority, words))} "
          f"of {dico.k} concepts")"""),
    md("""
    ## Other dictionaries: Semi-NMF (CoX-LMM) and PCA

    The dictionary method is a choice. CoX-LMM uses Semi-NMF (concepts free, activations non-negative), the
    shift paper K-means; PCA gives orthogonal directions. `overlap` is CoX-LMM's Overlap(U): the mean share of
    a concept's grounding words found in another concept's words. Lower means more distinct concepts."""),
    code("""
    overlaps = {"kmeans": ns.concepts.overlap(dico.ground_text(base, top=8))}
    for method in ["semi_nmf", "sparse_semi_nmf", "pca"]:
        d = ns.concepts.fit(acts, k=6, method=method, seed=0)
        w = d.ground_text(base, top=8)
        overlaps[method] = ns.concepts.overlap(w)
        print(method, "overlap", round(overlaps[method], 3), "|", " / ".join(" ".join(x[:3]) for x in w))
    best = min(overlaps, key=overlaps.get)
    print(f"most distinct groundings: {best} (overlap {overlaps[best]:.3f}); kmeans: {overlaps['kmeans']:.3f}")"""),
    md("""
    Overlap only measures how distinct the word lists are, not whether they are right: check the top words
    (and, on real data, the MAS images) before choosing a method. Dictionaries save and load without pickle:"""),
    code('dico.save("/tmp/nnshift-dico")\nns.concepts.ConceptDictionary.load("/tmp/nnshift-dico")'),
]

NB02 = [
    md("""
    # 2. How fine-tuning moved the concepts

    `shapes-colors` is `shapes-base` fine-tuned (LoRA) to name every object's colour. We capture both on the
    same images, learn a dictionary for each, and ask whether shifting the original concepts by the mean
    per-sample shift recovers the fine-tuned ones.

    **The method.** The same samples go through the original model `f^a` and the fine-tuned `f^b`, giving
    paired representations `a_m`, `b_m`. Each sample is assigned to its original concept
    (`A_k = {m : k = argmax_i |v^a_i(x_m)|}`), the per-sample shift is `δ_m = b_m − a_m`, and the concept
    shift vector is their mean over the concept's samples, `Δ_k = mean_{m ∈ A_k} δ_m`. The shifted concept
    `u^s_k = u^a_k + α Δ_k` is compared with the fine-tuned concept matched to `u^a_k` (Hungarian matching
    on cosine similarity). If the shifted concept is closer to it than the original one, the fine-tuning's
    effect on that concept is well summarised by one vector, which is what makes steering without training
    possible (notebook 3)."""),
    code(SETUP),
    code("""
    base = zoo.load("shapes-base")
    colors = zoo.load("shapes-colors")
    samples = zoo.dataset(240, style="generic", task="caption", seed=2)
    caps_a = ns.generate(base, samples[:2], max_new_tokens=24, progress=False)
    caps_b = ns.generate(colors, samples[:2], max_new_tokens=24, progress=False)
    print(caps_a)
    print(caps_b)
    def n_colour_words(t):
        return sum(w.strip(",.") in zoo.COLORS for w in t.split())
    print(f"colour words: base {sum(map(n_colour_words, caps_a))}, fine-tuned {sum(map(n_colour_words, caps_b))}")"""),
    md("""
    The fine-tune changed the captions' style on the same images: this is the behaviour whose trace in the
    residual stream we look for. We keep the token of interest *circle* from notebook 1."""),
    code("""
    toi = ns.positions.token_of_interest("circle")
    acts_a = ns.capture(base, samples, layer=-1, at=toi, max_new_tokens=24, progress=False)
    acts_b = ns.capture(colors, acts_a.samples, layer=-1, at=toi, max_new_tokens=24, progress=False)
    acts_a, acts_b = ns.pair(acts_a, acts_b)
    print(f"{len(acts_a)} samples in which both models say 'circle' ({len(samples)} images)")"""),
    md("""
    `ns.pair` keeps the samples present in both captures, in the same order, so that row `m` of `acts_a` and of
    `acts_b` is the same image: `δ_m = b_m − a_m` only makes sense for a pair."""),
    code("""
    dico_a = ns.concepts.fit(acts_a, k=6, method="kmeans", seed=0)
    dico_b = ns.concepts.fit(acts_b, k=6, method="kmeans", seed=0)
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=1.0, vlm=base)
    report"""),
    code("""
    s = report.summary()
    print(f"mean cosine to the matched fine-tuned concept: original {s['recovery_original']:.3f}, "
          f"shifted {s['recovery_shifted']:.3f}")
    print(f"{s['recovered_fraction']:.0%} of the {s['k']} concepts are closer to their match after the shift")
    print(f"shared most-activating samples with the match: {s['mas_overlap_original']:.1f}% -> {s['mas_overlap_shifted']:.1f}%")
    print(f"mean consistency {s['consistency']:.3f} (1 = every sample shifts in the same direction), "
          f"mean magnitude |Δ_k| = {s['magnitude']:.2f}")
    assert s["recovery_shifted"] > s["recovery_original"], "shifted concepts should be closer to the fine-tuned ones"
    s"""),
    md("""
    The headline numbers of the report. *Recovery* is the cosine between a concept and its matched fine-tuned
    concept: for the original concept `u^a_k`, and for the shifted one `u^s_k`. The *MAS overlap* compares the
    sets of most-activating samples instead of vectors. *Consistency* is the mean cosine between each `δ_m` of
    a concept and its `Δ_k`; *magnitude* is `|Δ_k|`. The printed lines above are the conclusion of this run."""),
    code("plots.plot_recovery(report)"),
    md("""
    One pair of bars per original concept: the similarity of the original concept (left) and of the shifted
    concept (right) to the same matched fine-tuned concept. A concept whose right bar is higher is
    *recovered*: adding the mean shift of its samples moves it to where the fine-tuned model represents the
    same samples."""),
    code("""
    gain = report.recovery_gain
    k_min, k_max = int(gain.argmin()), int(gain.argmax())
    print(f"gain per concept: {[round(g, 3) for g in gain.tolist()]}")
    print(f"smallest gain: concept {k_min} (+{gain[k_min]:.3f}), largest: concept {k_max} (+{gain[k_max]:.3f})")"""),
    code("plots.plot_similarity_matrix(report)"),
    md("""
    The cosine between every original concept (rows) and every fine-tuned concept (columns). The columns are
    reordered by the matching, so matched pairs lie on the diagonal (red squares: the Hungarian matching;
    white dots: the greedy nearest match, which may pick one fine-tuned concept twice). A bright diagonal on a
    dark background
    means each original concept has one clear counterpart; a bright row means an original concept is close to
    several fine-tuned ones, and the matching is less certain."""),
    code("""
    S = report.similarity
    diag = S[torch.arange(report.k), report.matching]
    off = (S.sum() - diag.sum()) / (S.numel() - report.k)
    print(f"matched pairs: mean cosine {diag.mean():.3f}; all other pairs: {off:.3f}")
    print(f"matched pairs are {float(diag.mean() - off):+.3f} more similar than the average other pair")
    print(f"the bijective and the greedy matching agree on {int((report.matching == report.greedy_matching).sum())} of {report.k} concepts")"""),
    code("plots.plot_gain_vs(report)"),
    md("""
    Each point is a concept: its recovery gain against the consistency (left) and the magnitude (right) of its
    shift, with Pearson's r and p. The paper finds both correlations positive: concepts whose samples all
    shift the same way, and shift far, are recovered best. With K = 6 points, read p before r."""),
    code("""
    for name in ("gain_vs_consistency", "gain_vs_magnitude"):
        c = report.correlations[name]
        sign = "positive" if c["r"] > 0 else "not positive"
        print(f"{name}: r = {c['r']:+.2f} ({sign}), p = {c['p']:.3f}, n = {c['n']}")"""),
    code("plots.plot_dynamics(report)"),
    md("""
    The concept dynamics of the paper: an original concept is *refined* when its match is close in vector
    (cosine ≥ `tau_refined`) **and** in words (T-Overlap ≥ `t_refined`), *vanished* when no fine-tuned concept
    is near (cosine < `tau_vanish`), and *changed* otherwise; a fine-tuned concept far from every original one
    is *new*. The rule and its thresholds are in docs/shift.md. The cell below shows which test decides."""),
    code("""
    t = report.thresholds
    near = int((diag >= t.tau_refined).sum())
    words_close = int((report.t_overlap_original >= t.t_refined).sum()) if report.t_overlap_original is not None else None
    print({d: report.dynamics.count(d) for d in ("refined", "changed", "vanished")}, "new:", report.new.numel())
    print(f"{near} of {report.k} matches have cosine >= {t.tau_refined}; "
          f"{words_close} of {report.k} have T-Overlap >= {t.t_refined}%")
    print(f"T-Overlap with the match per concept: {[round(x, 1) for x in report.t_overlap_original.tolist()]}")
    if words_close is not None:
        which = "the vector test (cosine)" if near <= words_close else "the word test (T-Overlap)"
        print(f"here {which} rules out more matches")"""),
    md("""
    Compare the two counts: the test that fewer matches pass is the one that keeps concepts from being
    *refined*. The thresholds are parameters of `ns.shift.analyze`; on a real model, check the labels against
    the groundings before reporting them.

    ## How far to shift: sweeping α

    `u^a + α Δ` for several α, keeping the matching: α = 0 is the original concept, α = 1 the mean shift.
    The right panel compares the shifted concepts' grounding words with their match's words (T-Overlap) and
    with the fine-tuning task's keywords (the colour names)."""),
    code("""
    sweep = report.alpha_sweep([0, 0.5, 1, 1.5, 2], keywords=list(zoo.COLORS), vlm=base)
    plots.plot_alpha_sweep(sweep)"""),
    code("""
    mr = sweep.mean_recovery.tolist()
    alphas = sweep.alphas.tolist()
    best = alphas[max(range(len(mr)), key=mr.__getitem__)]
    print("alpha:        ", alphas)
    print("mean recovery:", [round(x, 3) for x in mr], f"-> highest at alpha = {best}")
    kw = sweep.keyword_overlap.nanmean(dim=1).tolist()
    print("colour-keyword overlap (%):", [round(x, 1) for x in kw])
    trend = "rises" if kw[-1] > kw[0] else "does not rise"
    print(f"the shifted concepts' overlap with the colour names {trend} with alpha ({kw[0]:.1f}% -> {kw[-1]:.1f}%)")
    print("shifted concepts' words at alpha = 1:", [" ".join(w[:4]) for w in report.words_shifted])
    assert mr[alphas.index(1.0)] > mr[alphas.index(0.0)], "the mean shift should recover more than no shift"
    """),
    md("""
    Recovery is a cosine, so it can fall again past the best α when the shift overshoots. The keyword overlap
    asks *what* the shift adds in words: the paper observes that it rises with α, i.e. that the shift vectors
    point towards the fine-tuning task's words. The printed trend says whether this run shows it; the words
    of the shifted concepts show what they decode to instead. Reports save and load like dictionaries:"""),
    code('report.save("/tmp/nnshift-shift")\nns.shift.ShiftReport.load("/tmp/nnshift-shift")'),
]
