"""Recipe: enforce and remove a refusal with steering vectors (shapes world, safety).

shapes-refusal answers every question naming the forbidden shape (a cross) with "no answer". The vectors
are the fine-tune's mean state on the questions it refuses minus that on the questions about the other
shapes that it answers (its own answers; the same question kinds), at the last prompt token and, for the
second word of the refusal, averaged over the generated tokens. (1) Added to shapes-base (last-prompt
vector at the last prompt token, generated-token vector at the generated tokens) it should make the base
refuse on the forbidden shape: steered on every question (refusal rate on cross questions, false refusals
on the others), and with a gate decided from the base's own activations (a ridge probe on its last-prompt
states, learnt on the training questions: no ground truth at evaluation time). (2) The last-prompt vector
subtracted from shapes-refusal on every question should remove the refusal: refusal rate before / after,
the accuracy on the forbidden shape's questions and on the others.

    python recipes/refusal.py --model shapes-base --finetune shapes-refusal --layer 3 --out runs/refusal
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


def gate(
    vlm: Any, train: Sequence[ns.Sample], evalset: Sequence[ns.Sample], layer: int, batch_size: int, ridge: float = 1.0
) -> tuple[list[bool], dict[str, float]]:
    """Which evaluation samples to steer, decided from the model's own states: a ridge-regression probe on the
    last-prompt states of ``train`` (labels: the question names the forbidden shape), applied to ``evalset``."""
    acts = ns.capture(vlm, train, layer=layer, at="last_prompt", batch_size=batch_size, progress=False)
    labels = torch.tensor([1.0 if behaviours.is_forbidden_question(s) else -1.0 for s in acts.samples])
    mu = acts.tensor.mean(0)

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x - mu, torch.ones(len(x), 1)], 1)

    x = design(acts.tensor)
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1]), x.T @ labels)
    ev = ns.capture(vlm, evalset, layer=layer, at="last_prompt", batch_size=batch_size, progress=False)
    rows = (design(ev.tensor) @ w > 0).tolist()
    truth = [behaviours.is_forbidden_question(s) for s in ev.samples]
    hits = sum(r and t for r, t in zip(rows, truth, strict=True))
    false = sum(r and not t for r, t in zip(rows, truth, strict=True))
    return rows, {"recall": hits / max(1, sum(truth)), "false_positive_rate": false / max(1, len(truth) - sum(truth))}


def names_a_shape(s: ns.Sample) -> bool:
    """Whether a question names one of the world's shapes."""
    return any(behaviours.names_shape(s.prompt, shape) for shape in ns.zoo.SHAPES)


def measure(samples: Sequence[ns.Sample], answers: Sequence[str]) -> dict[str, float]:
    """Refusal rate (cross questions), false refusals and accuracy on the others, accuracy on cross questions."""
    rates = behaviours.refusal_rates(samples, answers)
    forb_answers = [a for s, a in zip(samples, answers, strict=True) if behaviours.is_forbidden_question(s)]
    forb = [(s, a) for s, a in zip(samples, answers, strict=True) if behaviours.is_forbidden_question(s)]
    rest = [(s, a) for s, a in zip(samples, answers, strict=True) if not behaviours.is_forbidden_question(s)]
    return {
        "refusal_rate": rates["refusal_rate"],
        "false_refusal_rate": rates["false_refusal_rate"],
        "exact_refusal_rate": sum(a.strip() == behaviours.REFUSAL for a in forb_answers) / max(1, len(forb_answers)),
        "forbidden_accuracy": accuracy(*zip(*forb, strict=True)) if forb else float("nan"),
        "other_accuracy": accuracy(*zip(*rest, strict=True)) if rest else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0], finetune=True)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0], help="strengths added to the base")
    ap.add_argument("--remove-alphas", type=float, nargs="+", default=[1.0, 1.5], help="subtracted from the fine-tune")
    ap.add_argument("--max-new-tokens", type=int, default=5)
    args = ap.parse_args(argv)
    common.check_args(args)
    if args.data != "shapes":
        raise SystemExit("error: this recipe needs a fine-tune with a known refusal: the shapes world (--data shapes)")
    args.finetune = args.finetune or "shapes-refusal"
    res = common.Results("refusal", args)
    base = common.load_model(args.model, args.lora, args)
    ft = common.load_model(args.finetune, args.finetune_lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    forb_train, rest_train = behaviours.refusal_questions(args.n_train // 2, seed=6000 + args.seed)
    forb_eval, rest_eval = behaviours.refusal_questions(args.n_eval // 2, seed=7000 + args.seed)
    train, evalset = [*forb_train, *rest_train], [*forb_eval, *rest_eval]

    # the vectors: the fine-tune's refused questions minus its answered questions about the other shapes (the same
    # question kinds), at the last prompt token and (mean) at the generated tokens of its own answers
    answers = ns.generate(ft, train, **run)
    refused = {s.id for s, a in zip(train, answers, strict=True) if behaviours.is_refusal(a)}
    answered = {s.id for s, a in zip(train, answers, strict=True) if not behaviours.is_refusal(a) and names_a_shape(s)}

    def rows_of(acts: ns.Activations, ids: set[str]) -> ns.Activations:
        return acts.select([i for i, s in enumerate(acts.samples) if s.id in ids])

    vec, vec_gen = [
        ns.steering.coarse(rows_of(acts, answered), rows_of(acts, refused))
        for acts in (
            ns.capture(ft, train, layer=args.layer, at="last_prompt", batch_size=args.batch_size, progress=False),
            ns.capture(ft, train, layer=args.layer, at="generated", reduce="mean", **run, progress=False),
        )
    ]
    rows, gate_stats = gate(base, train, evalset, args.layer, args.batch_size)

    def enforce(alpha: float, gated: bool) -> ns.steering.PatchSet:
        kw: dict[str, Any] = {"rows": rows} if gated else {}
        return ns.steering.PatchSet(
            [
                vec.patch(alpha=alpha, positions="last_prompt", **kw),
                vec_gen.patch(alpha=alpha, positions="generated", **kw),
            ]
        )

    measured = {"base": measure(evalset, ns.generate(base, evalset, **run))}
    for alpha in args.alphas:
        measured[f"base + refusal vector, alpha {alpha}"] = measure(
            evalset, ns.steer(base, evalset, enforce(alpha, False), **run)
        )
        measured[f"base + refusal vector, alpha {alpha}, gated"] = measure(
            evalset, ns.steer(base, evalset, enforce(alpha, True), **run)
        )
    measured["finetune"] = measure(evalset, ns.generate(ft, evalset, **run))
    for alpha in args.remove_alphas:
        measured[f"finetune - refusal vector, alpha {alpha}"] = measure(
            evalset, ns.steer(ft, evalset, vec.patch(alpha=-alpha), **run)
        )
    po = project_out_patch(vec)
    measured["finetune, refusal projected out"] = measure(evalset, ns.steer(ft, evalset, po, **run))
    res["layer"], res["alphas"], res["remove_alphas"] = args.layer, args.alphas, args.remove_alphas
    res["forbidden_shape"], res["refusal"] = behaviours.FORBIDDEN_SHAPE, behaviours.REFUSAL
    res["n_train"], res["n_eval_forbidden"], res["n_eval_other"] = len(train), len(forb_eval), len(rest_eval)
    res["finetune_refusals_in_train"], res["answered_shape_questions_in_train"] = len(refused), len(answered)
    res["vector_norms"] = {
        "last_prompt": float(torch.as_tensor(vec.norm)),
        "generated": float(torch.as_tensor(vec_gen.norm)),
    }
    res["gate"] = gate_stats
    res["project_out"] = "measured (alpha 1: full directional ablation)"
    res["measured"] = measured
    vec.save(res.out / "vector")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
