"""Cell sources of notebooks 03 (steering) and 04 (remote and TransformerLens); see build_notebooks.py."""

from __future__ import annotations

from nb_concepts_shift import SETUP, code, md

__all__ = ["NB03", "NB04"]

NB03 = [
    md("""
    # 3. Steering without training

    Coarse vectors (mean of a target set minus mean of a source set), target-answer vectors, fine-grained
    concept vectors chosen by their measured impact, and caption style, all applied as reusable trace-time
    patches.

    **The method.** A steering vector `s` is a direction in the residual stream at one layer `l`. The patch
    adds `α s` to the residual stream after block `l` (`f̃_l(x) = f_l(x) + α s`) at the chosen positions, at
    every generation step; no weight changes. The vectors come from representations captured on two sets of
    samples: coarse `s_c = mean(B) − mean(A)`; fine-grained `u_j − u_i` between two concepts of a dictionary.
    Evaluation compares the answers before and after on the same samples: the targeted answers should move,
    the others should not."""),
    code(SETUP + "\nfrom nnshift.evaluate import compare_vqa, caption_report"),
    code("""
    base = zoo.load("shapes-base")
    last = base.n_layers - 1
    yesno = zoo.dataset(100, task="vqa", answer_type="yes/no", seed=11)
    number = zoo.dataset(100, task="vqa", answer_type="number", seed=12)
    evalset = zoo.dataset(120, task="vqa", seed=13)
    before = ns.generate(base, evalset, max_new_tokens=4, progress=False)
    print(f"{len(evalset)} evaluation questions, e.g. {evalset[0].prompt!r} -> {before[0]!r}")"""),
    md("""
    ## Coarse: yes/no -> number

    `A` = the last prompt position of yes/no questions, `B` = of number questions (answer types from the
    references, `by="reference"`). `s_c` points from "a yes/no answer is coming" to "a number is coming". We
    sweep α and count the types of the answers on a mixed evaluation set."""),
    code("""
    acts = ns.capture(base, yesno + number, layer=last, at="last_prompt", progress=False)
    vec = ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")
    import matplotlib.pyplot as plt
    alphas, rates = (0.0, 0.5, 1.0, 1.5, 2.0), []
    for alpha in alphas:
        after = ns.steer(base, evalset, vec.patch(alpha=alpha), max_new_tokens=4, progress=False)
        r = compare_vqa(before, after, evalset, touched=["yes/no", "number"])
        rates.append({t: v[1] for t, v in r.type_rates.items()})
        print(alpha, {t: tuple(round(x, 2) for x in v) for t, v in r.type_rates.items()})
    fig, ax = plt.subplots(figsize=(6, 3))
    for t in ("yes/no", "number", "other"):
        ax.plot(alphas, [x.get(t, 0) for x in rates], marker='o', label=t)
    ax.set_xlabel('alpha'); ax.set_ylabel('share of answers'); ax.set_title('answer types under yes/no -> number steering')
    ax.legend();"""),
    md("""
    Each line is the share of the evaluation answers of one type (the type of the *predicted* answer) as α
    grows; α = 0 is the unsteered model. Steering works when the *number* line rises as the *yes/no* line
    falls. The *other* line is the cost: answers that were neither, and should stay so."""),
    code("""
    r0, r1 = rates[0], rates[-1]
    print(f"alpha {alphas[-1]}: share of number answers {r0.get('number', 0):.2f} -> {r1.get('number', 0):.2f}, "
          f"yes/no {r0.get('yes/no', 0):.2f} -> {r1.get('yes/no', 0):.2f}, other {r0.get('other', 0):.2f} -> {r1.get('other', 0):.2f}")
    kept = [a for a, x in zip(alphas, rates) if abs(x.get('other', 0) - r0.get('other', 0)) <= 0.02]
    print(f"the share of 'other' answers stays within 2 points up to alpha = {max(kept)}")
    assert r1.get("number", 0) > r0.get("number", 0), "steering should produce more number answers"
    """),
    md("""
    ## Which strength, at which layer? `calibrate`

    Reading α off a sweep on the evaluation set itself flatters it: the same answers choose α and report it.
    `ns.steering.calibrate` splits the samples in two (seeded): on the validation half it sweeps the layers
    and strengths (`ns.steering.sweep`, all of them batched in one generation per batch) and keeps the
    point with the highest target rate whose *untouched* accuracy (the answer types the target does not
    touch) drops by at most `max_untouched_drop`; then it runs only that point on the held-out half, which
    played no part in the choice. The vector is made per layer, from the same captured questions."""),
    code("""
    from nnshift.steering import AnswerTypeTarget, TargetAnswer, CaptionStyle
    per_layer = ns.capture(base, yesno + number, layer=[2, last], at="last_prompt", progress=False)
    vecs = {l: ns.steering.answer_type_vector(a, "yes/no", "number", by="reference") for l, a in per_layer.items()}
    run = {"max_new_tokens": 4, "progress": False, "fluency": False}
    cal = ns.steering.calibrate(base, vecs, evalset, target=AnswerTypeTarget("yes/no", "number"),
                                alphas=(0.5, 1.0, 1.5, 2.0), max_untouched_drop=0.02, **run)
    print(cal.summary())
    print(cal.validation.table())
    cal.validation.plot_pareto();"""),
    md("""
    The table is the validation sweep: per (layer, α) the target rate (yes/no questions answered with a
    number), the accuracy on the untouched type (*other*) and its largest drop, and the shares of the relevant
    samples whose first-token margin moved toward the target or *away* from it (anti-steerable). The figure is
    its trade-off, the Pareto front dashed. The summary line is the held-out measurement of the chosen point."""),
    md("""
    ## The patch inside your own nnsight generation

    A `Patch` is not tied to `ns.steer`: call it inside any nnsight trace or generation and it edits the
    residual stream there. This is how to combine steering with your own reads and edits."""),
    code("""
    patch = cal.patch  # the calibrated layer and strength
    inputs = base.prepare(evalset[:4])
    with base.model.generate(inputs, max_new_tokens=4, do_sample=False) as tracer:
        patch(base, inputs=inputs)
        out = tracer.result.save()
    mine = [base.decode(o[inputs["input_ids"].shape[1]:]).strip() for o in out]
    steered = ns.steer(base, evalset[:4], patch, max_new_tokens=4, progress=False)
    for q, b, a in zip(evalset[:4], before[:4], mine):
        print(f"{q.prompt!r}: {b!r} -> {a!r}")
    moved = sum(b != a for b, a in zip(before[:4], mine))
    same = sum(a == s for a, s in zip(mine, steered))
    print(f"{moved} of 4 answers changed; {same} of 4 equal what ns.steer gives with the same patch")"""),
    md("""
    The patch steers every decode step of your own `generate`, however its length is set, and the
    statements after it run even when every row stops early: no `min_new_tokens` is needed.

    ## Target answer: yes -> no

    `target_answer` takes the mean representation of the samples the model answered *no* minus that of those
    it answered *yes* (the model's own answers, not the references). Compare the vector's length with the
    states' (printed first): when they are of the same order, α = 1 replaces much of the state and the useful
    range of α is narrow, so sweep it and watch both the target and the untouched answer types."""),
    code("""
    yn = ns.capture(base, yesno, layer=last, at="last_prompt", progress=False)
    yn.answers = ns.generate(base, yesno, max_new_tokens=4, progress=False)
    vec_no = ns.steering.target_answer(yn, "yes", "no")
    print(f"|s| = {vec_no.norm:.1f}, mean |h| = {yn.tensor.norm(dim=-1).mean():.1f}")
    cal_no = ns.steering.calibrate(base, vec_no, evalset, target=TargetAnswer("yes", "no"),
                                   alphas=(0.1, 0.25, 0.3, 0.5, 1.0), max_untouched_drop=0.02, **run)
    print(cal_no.validation.table())
    print(cal_no.summary())"""),
    md("""
    Target rate here: the share of the questions the unsteered model answered *yes* that the steered one
    answers *no*. The untouched types are *number* and *other*. The rate rises fast with α while the
    untouched accuracy holds, then the untouched accuracy collapses: the selective window is narrow, which is
    why the strength is chosen on validation and checked on held-out questions."""),
    code("""
    held, un = cal_no.held_out_row, cal_no.held_out_unsteered
    print(f"held out: {held.n_relevant} questions answered 'yes', {held.target_rate:.0%} turned to 'no' at "
          f"alpha {cal_no.alpha:g} (layer {cal_no.layer}); untouched accuracy "
          + ", ".join(f"{t} {100 * un.untouched_accuracy[t]:.0f}% -> {100 * v:.0f}%" for t, v in held.untouched_accuracy.items()))
    assert held.target_rate > un.target_rate, "the calibrated strength should turn some 'yes' into 'no'"
    """),
    md("""
    ## Fine-grained: colour -> colour, chosen by impact

    Learn concepts on colour questions, then try every difference `u_j − u_i` between two concepts as a
    steering vector (`fine_all`). `by_impact` applies each one, counts how the answers change, clusters the
    answers by their relative increase (k-means, k = 2) and scores the vector by the gap between the primary
    and the secondary cluster. The primary cluster is what the vector steers *to*. By default it keeps vectors
    that steer to a single answer (`max_targets=1`) and only the best vector per target (`distinct=True`)."""),
    code("""
    colour_q = zoo.dataset(150, task="vqa", question_kind="color_of_shape", seed=14)
    colour_eval = zoo.dataset(40, task="vqa", question_kind="color_of_shape", seed=15)
    cacts = ns.capture(base, colour_q, layer=last, at="last_prompt", progress=False)
    dico = ns.concepts.fit(cacts, k=6, method="kmeans", seed=0)
    candidates = ns.steering.fine_all(dico)
    ranked = ns.steering.by_impact(base, colour_eval, candidates, alpha=1.0,
                                   max_new_tokens=4, progress=False)
    [(r.key, r.targets, round(r.score, 1)) for r in ranked[:5]]"""),
    code("""
    top_r = ranked[0]
    print(f"{len(candidates)} candidate vectors; {len(ranked)} kept, one per target answer: "
          f"{sorted(t for r in ranked for t in r.targets)}")
    print(f"the best, concepts {top_r.key}, steers to {top_r.targets} (score {top_r.score:.1f}, next {ranked[1].score:.1f})")"""),
    md("""
    `key = (i, j)` is the vector `u_j − u_i`, `targets` the answers it pushes to, `score` the gap in relative
    increase. Choosing by impact needs no label: the measured answers say what each vector does, so one
    dictionary can give a vector per target answer (printed above: the targets it found a vector for).

    ## Caption style: generic -> colours

    The source set is the mean state of the base model's generated captions; the target is where the colour
    fine-tune says a colour word. The vector is applied to the base model at a middle layer, with no
    fine-tuning. `calibrate` chooses α on half the images while keeping the accuracy of VQA questions
    (`keep=`: a caption style touches no answer type, so every kept question must keep its accuracy)."""),
    code("""
    mid = base.n_layers // 2
    caps = zoo.dataset(150, style="generic", task="caption", seed=16)
    src = ns.capture(base, caps, layer=mid, at=ns.positions.generated(reduce="mean"), max_new_tokens=24, progress=False)
    # target: where the colour fine-tune says a colour word
    colors = zoo.load("shapes-colors")
    tgt = ns.capture(colors, caps, layer=mid, at=ns.positions.token_of_interest(list(zoo.COLORS)),
                     max_new_tokens=24, progress=False)
    vec_cap = ns.steering.coarse(src, tgt, layer=mid)
    cap_eval = zoo.dataset(50, style="generic", task="caption", seed=17)
    cal_cap = ns.steering.calibrate(base, vec_cap, cap_eval, target=CaptionStyle("colors"), alphas=(0.5, 1.0, 1.5),
                                    keep=evalset[:50], max_untouched_drop=0.02, max_new_tokens=24, progress=False,
                                    fluency=False)
    print(cal_cap.summary())
    b, a = cal_cap.held_out_unsteered.answers, cal_cap.held_out_row.answers
    rb, ra = caption_report(b, ["colors"]).rates["colors"], caption_report(a, ["colors"]).rates["colors"]
    print(f"held-out captions naming a colour: {rb:.0%} unsteered -> {ra:.0%} steered ({len(b)} images)")
    assert ra > rb, "the style vector should make more captions name a colour"
    list(zip(b[:3], a[:3]))"""),
    md("""
    The pairs are (unsteered, steered) captions of the same image. The style share only counts colour words;
    whether the colours are *right* for the image is a separate question (the shapes world's metadata can
    answer it, real data needs references and a quality metric such as CIDEr-D)."""),
]

NB04 = [
    md("""
    # 4. The same patch on NDIF and as TransformerLens hooks

    A `Patch` only puts tensors and nnsight operations in the trace, so it runs with `remote=True`. Here we use
    nnsight's serverless dry run, `remote="local"`, which serialises the request exactly as for NDIF and
    executes it with local modules hidden. To use a real server, set `nnsight.CONFIG.API.HOST` and your API key
    and pass `remote=True` (see [docs/remote.md](../docs/remote.md)); the test suite does this against a local NDIF server."""),
    code(SETUP + "\nimport nnsight"),
    code("""
    base = zoo.load("shapes-base", dtype="float32")
    samples = zoo.dataset(4, task="vqa", answer_type="yes/no", seed=21)
    vec = ns.steering.SteeringVector(torch.randn(base.hidden_size), layer=-1)
    patch = vec.patch(alpha=4.0, positions="all")
    inputs = base.prepare(samples)"""),
    code("""
    gen = dict(max_new_tokens=4, do_sample=False)
    with base.model.generate(inputs, **gen) as tracer:
        patch(base, inputs=inputs)
        out_local = tracer.result.save()
    nnsight.register(ns)  # ship nnshift's code with the request: the server does not have it
    with base.model.generate(inputs, **gen, remote="local") as tracer:
        patch(base, inputs=inputs)
        out_remote = tracer.result.save()
    print(out_local[:, -4:])
    print(out_remote[:, -4:])
    print(f"local and serialised runs give the same {out_local.shape[1]} ids per row: {torch.equal(out_local, out_remote)}")
    assert torch.equal(out_local, out_remote)"""),
    md("""
    The patch's deltas are computed on your machine (`patch.bind`, from `inputs`) and travel with the request
    as plain tensors; the edit `h + delta` runs where the model runs. `nnsight.register(ns)` is needed in your
    own traces because the server has no nnshift; `ns.capture`, `ns.steer` and
    `nnshift.generation.run_generation` with `remote=True` register it for you.

    ## TransformerLens

    transformer-lens 4.x loads Hugging Face models through `TransformerBridge`, and it covers the zoo's LLaVA:
    the bridge runs the vision tower and the projector, so its forward takes the same `input_ids`,
    `attention_mask` and `pixel_values` as the nnsight model. The same `Patch` installs on the bridge's
    `hook_resid_post` points with `patch.hooked(bridge, ...)`."""),
    code("""
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(zoo.base_path("shapes-base")), device="cpu", dtype=torch.float32)
    bridge.eval()
    real = inputs["attention_mask"].bool()  # what a padding position holds is each library's own business
    def tl_logits():
        with torch.no_grad():
            return bridge(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          pixel_values=inputs["pixel_values"], return_type="logits")
    def nn_logits(p=None):
        with base.model.trace(dict(inputs)):
            if p is not None:
                p(base, inputs=inputs)
            logits = base.model.output.logits.save()
        return logits
    plain = (tl_logits() - nn_logits())[real].abs().max()
    print(f"unpatched: max |nnsight - TransformerLens| over {int(real.sum())} non-padding positions = {plain:.2e}")
    assert plain < 1e-4"""),
    md("""
    The bridge and nnsight run the same weights on the same inputs, so the logits agree to float32 rounding at
    every real (non-padding) position. Now a patch built from the model's own states: the difference between
    two samples' last-prompt states at layer 2, applied at every position."""),
    code("""
    acts = ns.capture(base, samples, layer=2, at="last_prompt", progress=False)
    p = ns.steering.SteeringVector(acts.tensor[0] - acts.tensor[1], layer=2).patch(alpha=2.0, positions="all")
    want = nn_logits(p)
    effect = (want - nn_logits())[real].abs().max()
    with p.hooked(bridge, attention_mask=inputs["attention_mask"], image_mask=base.image_token_mask(inputs["input_ids"])):
        got = tl_logits()
    gap = (got - want)[real].abs().max()
    print(f"the patch moves the logits by up to {effect:.3f}")
    print(f"patched: max |nnsight - TransformerLens| = {gap:.2e}")
    assert effect > 1e-3 and gap < 1e-4"""),
    md("""
    `attention_mask` keeps the hooks off padding, and `image_mask` tells selectors such as `"image"` and
    `"text"` which positions hold the image tokens (`vlm.image_token_mask` finds them). The patched logits
    match nnsight's while the patch changes them by far more than the gap: the same object steers both
    libraries.

    ### `run_with_cache` -> `Activations`

    A TransformerLens cache holds every hook's output; `ns.cache_activations` selects the positions exactly as
    `ns.capture` does and returns `Activations` with provenance, ready for concepts, shift analysis and
    steering vectors."""),
    code("""
    with torch.no_grad():
        _, cache = bridge.run_with_cache(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                         pixel_values=inputs["pixel_values"])
    from_tl = ns.cache_activations(cache, samples, vlm=base, layer=-1, at="last_prompt", inputs=inputs)
    ref = ns.capture(base, samples, layer=-1, at="last_prompt", progress=False)
    diff = (from_tl.tensor - ref.tensor).abs().max()
    print(from_tl)
    print(f"same ids as ns.capture: {from_tl.ids == ref.ids}; max |difference| = {diff:.2e}; source: {from_tl.info['source']!r}")
    assert from_tl.ids == ref.ids and diff < 1e-4"""),
    md("Where the edit enters: the residual stream with and without the patch, layer by layer (nnsight)."),
    code("""
    import matplotlib.pyplot as plt
    edited = 2  # the layer p edits
    def resids(patch=None):
        with base.model.trace(dict(inputs)):
            hs = list().save()
            for layer in range(base.n_layers):  # in execution order: the patch edits its layer's output
                if patch is not None and layer == edited:
                    patch(base, inputs=inputs)
                hs.append(base.get_resid(layer)[:, -1])
        return torch.stack(list(hs))
    diff = (resids(p) - resids()).norm(dim=-1).max(dim=-1).values
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(base.n_layers), diff.tolist()); ax.set_xticks(range(base.n_layers)); ax.set_xlabel('layer'); ax.set_ylabel('max ||steered - unsteered||')
    ax.set_title(f'a patch at layer {edited}: last position, per layer');
    print(f"layers before {edited}: max change {diff[:edited].max():.2e}; layer {edited} and after: "
          f"min change {diff[edited:].min():.3f}")
    assert diff[:edited].max() == 0 and diff[edited:].min() > 0"""),
    md("""
    The bars before the patched layer are zero: a residual-stream edit cannot reach back. From the patched
    layer on, the change is carried forward and transformed by every later block. The paper finds that deeper
    layers steer better; `ns.steer` with the same vector at different layers is how to check it on your model."""),
]
