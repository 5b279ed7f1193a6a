"""Recipe: find and remove a fine-tune's bias with the shift analysis and steering (shapes world).

shapes-biased answers "red" to "what color is the circle?" whatever the circle's colour. The recipe
(1) runs the shift analysis between the base and the biased model on circle-colour questions (last
prompt token) and reports the concepts whose grounding words turn to the bias colour (the concepts that
carry the bias); (2) steers the biased model with add vectors: a target-answer vector (its own "red"
answers -> its answers of the other colours, on colour questions of every shape), the reversed shift of
the bias concepts (base minus fine-tune on their samples), and, fine-grained, the reversed shift of each
fine-tune concept applied to the samples whose own state the fine-tune's dictionary assigns to it;
(3) reports the bias rate on circles that are not red, the circle-colour accuracy and the accuracy on
every other question, before and after.
Every question is steered (the concept-wise vectors pick their concept from the model's own states).

    python recipes/debias.py --model shapes-base --finetune shapes-biased --layer 3 --alpha 1 --out runs/debias
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import common
import torch

import nnshift as ns
from nnshift.zoo import behaviours
from nnshift.zoo.evaluate import vqa_correct


def accuracy(samples: Sequence[ns.Sample], answers: Sequence[str]) -> float:
    """Exact-match accuracy (the zoo's scoring)."""
    return sum(map(vqa_correct, samples, answers)) / max(1, len(samples))


def project_out_patch(vec: ns.steering.SteeringVector, alpha: float = 1.0) -> Any:
    """Directional ablation of ``vec``'s direction (``op="project_out"``: ``h - alpha (h . s_hat) s_hat``; alpha 1
    removes the whole component), reported beside the add vectors."""
    return vec.patch(alpha=alpha, op="project_out")


def bias_concepts(report: Any, acts_a: ns.Activations, answers_b: Sequence[str], color: str) -> list[dict[str, Any]]:
    """Per base concept: members, grounding words before / after the shift, and how often the fine-tune says
    ``color`` on its members whose true colour is another."""
    rows = []
    for i in range(report.k):
        idx = [m for m in range(len(acts_a)) if int(report.assignment[m]) == i]
        wrong = [m for m in idx if acts_a.samples[m].answers[0] != color]
        rows.append(
            {
                "concept": i,
                "members": len(idx),
                "true_colors": sorted({acts_a.samples[m].answers[0] for m in idx}),
                "words_original": (report.words_original or [[]] * report.k)[i][:3],
                "words_shifted": (report.words_shifted or [[]] * report.k)[i][:3],
                "magnitude": float(report.magnitude[i]),
                "finetune_says_bias_color": sum(answers_b[m] == color for m in wrong) / max(1, len(wrong)),
                "carries_bias": False,
            }
        )
    for r in rows:
        r["carries_bias"] = bool(r["words_shifted"][:1] == [color] and r["words_original"][:1] != [color])
    return rows


def conceptwise_shift(
    ft: ns.VLM,
    acts_a: ns.Activations,
    acts_b: ns.Activations,
    dico_b: Any,
    samples: Sequence[ns.Sample],
    alpha: float,
    batch_size: int,
) -> ns.steering.PatchSet:
    """Fine-grained, concept-wise: each sample gets the reversed shift (base minus fine-tune) of the fine-tune
    concept its own state is assigned to (``dico_b.assign`` on the fine-tune's states: no ground truth)."""
    train = dico_b.assign(acts_b)
    layer = int(acts_b.info["layer"])
    ev = ns.capture(ft, samples, layer=layer, at="last_prompt", batch_size=batch_size, progress=False)
    assigned = dico_b.assign(ev).tolist()
    patches = []
    for j in sorted(set(train.tolist())):
        idx = [m for m in range(len(acts_b)) if int(train[m]) == j]
        vec = ns.steering.coarse(acts_b.select(idx), acts_a.select(idx))
        patches.append(vec.patch(alpha=alpha, rows=[a == j for a in assigned]))
    return ns.steering.PatchSet(patches)


def gated_conceptwise_shift(
    acts_a: ns.Activations, acts_b: ns.Activations, dico_b: Any, alpha: float, margin: float = 0.05
) -> tuple[ns.steering.PatchSet, float]:
    """The concept-wise reversed shift behind concept gates, decided inside the trace (no capture pass): concept
    j's patch edits a position only when the fine-tune's current state there is nearest (by cosine) to j and
    closer than ``threshold``, the lowest cosine of j's training members to their concept minus ``margin``;
    (patches, threshold)."""
    train = dico_b.assign(acts_b)
    nearest = ns.metrics.cosine_matrix(acts_b.tensor.float(), dico_b.concepts.float()).max(dim=1).values
    threshold = float(nearest.min()) - margin
    patches = []
    for j in sorted(set(train.tolist())):
        idx = [m for m in range(len(acts_b)) if int(train[m]) == j]
        vec = ns.steering.coarse(acts_b.select(idx), acts_a.select(idx))
        gate = ns.steering.ConceptGate.from_dictionary(dico_b, j, rule="assign", threshold=threshold)
        patches.append(vec.patch(alpha=alpha, gate=gate))
    return ns.steering.PatchSet(patches), threshold


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0], finetune=True)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=5)
    args = ap.parse_args(argv)
    common.check_args(args)
    if args.data != "shapes":
        raise SystemExit("error: this recipe needs a fine-tune with a known bias: the shapes world (--data shapes)")
    args.finetune = args.finetune or "shapes-biased"
    shape, color = behaviours.BIAS_SHAPE, behaviours.BIAS_COLOR
    res = common.Results("debias", args)
    base = common.load_model(args.model, args.lora, args)
    ft = common.load_model(args.finetune, args.finetune_lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    colour_q = ns.zoo.dataset(args.n_train, task="vqa", question_kind="color_of_shape", seed=13 + args.seed)
    circle_q = [s for s in colour_q if behaviours.names_shape(s.prompt, shape)]
    bias_eval = behaviours.bias_questions(args.n_eval, seed=5000 + args.seed)
    rest_eval = [s for s in common.vqa(args, "eval", args.n_eval, seed=3) if not behaviours.is_bias_question(s)]

    # 1. the shift analysis on circle-colour questions
    acts_a = ns.capture(base, circle_q, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    acts_b = ns.capture(ft, circle_q, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    acts_a, acts_b = ns.pair(acts_a, acts_b)
    k = min(args.k, len(acts_a))
    dico_a = ns.concepts.fit(acts_a, k=k, method="kmeans", seed=args.seed)
    dico_b = ns.concepts.fit(acts_b, k=k, method="kmeans", seed=args.seed)
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, vlm=base)
    concepts = bias_concepts(report, acts_a, ns.generate(ft, acts_b.samples, **run), color)
    carriers = [c["concept"] for c in concepts if c["carries_bias"]]
    members = [m for m in range(len(acts_a)) if int(report.assignment[m]) in carriers]

    # 2. the vectors (add), all computed at --layer
    acts_col = ns.capture(ft, colour_q, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    acts_col.answers = ns.generate(ft, acts_col.samples, **run)
    others = [c for c in ns.zoo.COLORS if c != color]
    vectors = {"target_answer": ns.steering.target_answer(acts_col, color, others)}
    if members:
        vectors["reversed_concept_shift"] = ns.steering.coarse(acts_b.select(members), acts_a.select(members))
    patches = {name: v.patch(alpha=args.alpha) for name, v in vectors.items()}
    patches["project_out_target_answer"] = project_out_patch(vectors["target_answer"])

    # 3. before / after on the fine-tune, and the base for reference
    def measure(bias_answers: Sequence[str], rest_answers: Sequence[str]) -> dict[str, float]:
        return {
            "bias_rate": behaviours.bias_rate(bias_eval, bias_answers),
            "circle_color_accuracy": accuracy(bias_eval, bias_answers),
            "other_accuracy": accuracy(rest_eval, rest_answers),
        }

    measured = {
        "base": measure(ns.generate(base, bias_eval, **run), ns.generate(base, rest_eval, **run)),
        "finetune": measure(ns.generate(ft, bias_eval, **run), ns.generate(ft, rest_eval, **run)),
    }
    for name, p in patches.items():
        measured[f"finetune+{name}"] = measure(ns.steer(ft, bias_eval, p, **run), ns.steer(ft, rest_eval, p, **run))
    cw = [
        conceptwise_shift(ft, acts_a, acts_b, dico_b, ev, args.alpha, args.batch_size) for ev in (bias_eval, rest_eval)
    ]
    measured["finetune+conceptwise_reversed_shift"] = measure(
        ns.steer(ft, bias_eval, cw[0], **run), ns.steer(ft, rest_eval, cw[1], **run)
    )
    gated, res["gate_threshold"] = gated_conceptwise_shift(acts_a, acts_b, dico_b, args.alpha)
    measured["finetune+gated_conceptwise_reversed_shift"] = measure(
        ns.steer(ft, bias_eval, gated, **run), ns.steer(ft, rest_eval, gated, **run)
    )
    res["layer"], res["alpha"], res["k"] = acts_a.info["layer"], args.alpha, k
    res["bias"] = {"shape": shape, "color": color}
    res["n_circle_questions"], res["n_bias_eval"], res["n_rest_eval"] = len(acts_a), len(bias_eval), len(rest_eval)
    res["concepts"], res["bias_concepts"] = concepts, carriers
    unit = torch.nn.functional.normalize(report.shift_vectors[carriers], dim=-1)
    pairs = (unit @ unit.T)[~torch.eye(len(carriers), dtype=torch.bool)]
    res["bias_concepts_shift_cosine"] = float(pairs.mean()) if pairs.numel() else None
    res["shift_summary"] = report.summary()
    res["vector_norms"] = {name: float(torch.as_tensor(v.norm)) for name, v in vectors.items()}
    res["project_out"] = "measured (alpha 1: full directional ablation)"
    res["measured"] = measured
    report.save(res.out / "shift")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
