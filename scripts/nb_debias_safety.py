"""Cell sources of notebook 05 (debiasing and safety on the shapes world); see build_notebooks.py."""

from __future__ import annotations

from nb_concepts_shift import SETUP, code, md

__all__ = ["NB05"]

NB05 = [
    md("""
    # 5. Debiasing and safety

    Two fine-tunes of `shapes-base` carry a behaviour known by construction: **`shapes-biased`** answers
    "red" to `what color is the circle?` whatever the circle's colour, and **`shapes-refusal`** answers every
    question naming a **cross** with the refusal `no answer`. This notebook measures both behaviours, finds
    the bias with the fine-tuning shift analysis, removes it with a steering vector, then makes the base
    refuse on crosses and removes the refusal from the fine-tune. Every number below is computed here, on
    small held-out sets (the recipes `recipes/debias.py` and `recipes/refusal.py` use more samples; their
    results are in `docs/debias-and-safety.md`)."""),
    code(SETUP),
    code(
        """
    from nnshift.zoo import behaviours
    from nnshift.zoo.evaluate import vqa_correct

    def accuracy(samples, answers):
        return sum(map(vqa_correct, samples, answers)) / len(samples)

    run = dict(max_new_tokens=5, progress=False)
    base, biased, refusal = (zoo.load(n) for n in ("shapes-base", "shapes-biased", "shapes-refusal"))
    LAYER = 3  # the last block"""
    ),
    md("""
    ## The bias, measured

    Held-out circles that are not red, asked for their colour; and questions of every other kind."""),
    code("""
    bias_eval = behaviours.bias_questions(60, seed=5100)
    rest_eval = [s for s in zoo.dataset(120, task="vqa", seed=5200) if not behaviours.is_bias_question(s)]

    def bias_row(name, bias_answers, rest_answers, bias_set=None, rest_set=None):
        bias_set, rest_set = bias_set or bias_eval, rest_set or rest_eval
        print(f"{name:28s} bias rate {behaviours.bias_rate(bias_set, bias_answers):.2f}   "
              f"circle colour right {accuracy(bias_set, bias_answers):.2f}   "
              f"other questions {accuracy(rest_set, rest_answers):.2f}")

    for name, m in (("shapes-base", base), ("shapes-biased", biased)):
        bias_row(name, ns.generate(m, bias_eval, **run), ns.generate(m, rest_eval, **run))"""),
    md("""
    ## Which concepts carry it: the shift analysis

    Capture both models at the last prompt token of circle-colour questions (of every colour), learn K = 6
    concepts in each and compare (`ns.shift.analyze`). For each base concept: the true colours of its samples,
    its grounding words, and the grounding words of the *shifted* concept (base concept + its mean shift)."""),
    code("""
    colour_q = zoo.dataset(200, task="vqa", question_kind="color_of_shape", seed=13)
    circle_q = [s for s in colour_q if behaviours.names_shape(s.prompt, "circle")]
    acts_a = ns.capture(base, circle_q, layer=LAYER, at="last_prompt", progress=False)
    acts_b = ns.capture(biased, circle_q, layer=LAYER, at="last_prompt", progress=False)
    dico_a = ns.concepts.fit(acts_a, k=6, method="kmeans", seed=0)
    dico_b = ns.concepts.fit(acts_b, k=6, method="kmeans", seed=0)
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, vlm=base)
    for i in range(report.k):
        members = [m for m in range(len(acts_a)) if int(report.assignment[m]) == i]
        colours = sorted({acts_a.samples[m].answers[0] for m in members})
        print(f"concept {i}: {len(members):2d} samples, true {colours}, "
              f"grounding {report.words_original[i][:3]} -> shifted {report.words_shifted[i][:3]}, "
              f"magnitude {float(report.magnitude[i]):.1f}")"""),
    md("""
    The concepts whose shifted grounding turns to "red" while their samples are not red are the ones that
    carry the bias; the red circles' concept barely moves.

    ## Removing the bias with a target-answer vector

    On colour questions about every shape, the biased model's mean state when it answers another colour
    minus its mean state when it answers "red", added at layer 3 on every question: no gating, so the other
    questions pay whatever it costs. The strength is chosen by `ns.steering.calibrate` on half of the
    evaluation questions (the largest share of "red" answers turned into another colour that keeps the
    accuracy on the untouched answer types within 2 points) and measured on the other half."""),
    code("""
    acts_col = ns.capture(biased, colour_q, layer=LAYER, at="last_prompt", progress=False)
    acts_col.answers = ns.generate(biased, acts_col.samples, **run)
    vec = ns.steering.target_answer(acts_col, "red", [c for c in zoo.COLORS if c != "red"])
    others = [c for c in zoo.COLORS if c != "red"]
    cal = ns.steering.calibrate(biased, vec, bias_eval + rest_eval, target=ns.steering.TargetAnswer("red", others),
                                alphas=[0.25, 0.5, 1.0, 1.5], max_untouched_drop=0.02, fluency=False, **run)
    print(cal.summary())
    held = set(cal.held_out.sample_ids)
    bias_held, rest_held = [s for s in bias_eval if s.id in held], [s for s in rest_eval if s.id in held]
    print(f"held-out half: {len(bias_held)} circle-colour questions, {len(rest_held)} others")
    half = dict(bias_set=bias_held, rest_set=rest_held)
    bias_row("shapes-biased (held-out half)", ns.generate(biased, bias_held, **run), ns.generate(biased, rest_held, **run), **half)
    bias_row(f"+ vector, alpha {cal.alpha:g}", ns.steer(biased, bias_held, cal.patch, **run),
             ns.steer(biased, rest_held, cal.patch, **run), **half)"""),
    md("""
    ## Refusal: enforcing it on the base, removing it from the fine-tune

    The refusal vector is the refusal fine-tune's mean state on the questions it refuses minus that on the
    questions about other shapes that it answers, at the last prompt token; a second one, averaged over the
    generated tokens, carries the refusal's second word. Added to the base at α = 2, on every question or only
    where a **gate** says so: a ridge probe on the base's *own* last-prompt states (learnt on the training
    questions; no ground truth at evaluation time). Subtracted (α = 1.5) from the fine-tune, on every question."""),
    code("""
    forb_train, rest_train = behaviours.refusal_questions(80, seed=6000)
    forb_eval, rest_eval2 = behaviours.refusal_questions(50, seed=7000)
    train, evalset = forb_train + rest_train, forb_eval + rest_eval2
    answers = ns.generate(refusal, train, **run)
    names_shape = lambda s: any(behaviours.names_shape(s.prompt, x) for x in zoo.SHAPES)
    refused = [i for i, a in enumerate(answers) if behaviours.is_refusal(a)]
    answered = [i for i, a in enumerate(answers) if not behaviours.is_refusal(a) and names_shape(train[i])]
    lp = ns.capture(refusal, train, layer=LAYER, at="last_prompt", progress=False)
    gen = ns.capture(refusal, train, layer=LAYER, at="generated", reduce="mean", max_new_tokens=5, progress=False)
    v_lp, v_gen = (ns.steering.coarse(a.select(answered), a.select(refused)) for a in (lp, gen))

    # the gate: a ridge probe on the base's own states (does the question name a cross?)
    x = ns.capture(base, train, layer=LAYER, at="last_prompt", progress=False).tensor
    y = torch.tensor([1.0 if behaviours.is_forbidden_question(s) else -1.0 for s in train])
    mu = x.mean(0)
    X = torch.cat([x - mu, torch.ones(len(x), 1)], 1)
    w = torch.linalg.solve(X.T @ X + torch.eye(X.shape[1]), X.T @ y)
    xe = ns.capture(base, evalset, layer=LAYER, at="last_prompt", progress=False).tensor
    rows = ((torch.cat([xe - mu, torch.ones(len(xe), 1)], 1) @ w) > 0).tolist()

    def enforce(alpha, **kw):
        return ns.steering.PatchSet([v_lp.patch(alpha=alpha, positions="last_prompt", **kw),
                                     v_gen.patch(alpha=alpha, positions="generated", **kw)])

    def refusal_row(name, answers):
        r = behaviours.refusal_rates(evalset, answers)
        other = [(s, a) for s, a in zip(evalset, answers) if not behaviours.is_forbidden_question(s)]
        print(f"{name:30s} refusals on crosses {r['refusal_rate']:.2f}   false refusals {r['false_refusal_rate']:.2f}   "
              f"other questions right {accuracy(*zip(*other)):.2f}")

    refusal_row("shapes-base", ns.generate(base, evalset, **run))
    refusal_row("base + vector, every question", ns.steer(base, evalset, enforce(2.0), **run))
    refusal_row("base + vector, gated", ns.steer(base, evalset, enforce(2.0, rows=rows), **run))
    refusal_row("shapes-refusal", ns.generate(refusal, evalset, **run))
    refusal_row("shapes-refusal - vector", ns.steer(refusal, evalset, v_lp.patch(alpha=-1.5), **run))
    truth = [behaviours.is_forbidden_question(s) for s in evalset]
    print(f"gate: {sum(r and t for r, t in zip(rows, truth))} of {sum(truth)} cross questions picked, "
          f"{sum(r and not t for r, t in zip(rows, truth))} of {len(truth) - sum(truth)} others")"""),
    md("""
    Read the rows against each other: steering every question makes the base refuse everywhere, so the
    selectivity comes from the gate (its false positives are the false refusals). Subtracting the vector from
    the fine-tune stops the refusal, but its answers about crosses do not come back (the adapter overwrote
    them). A *project-out* operator is the next thing to try in both places (issue 17)."""),
]
