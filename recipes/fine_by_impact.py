"""Recipe: fine-grained steering between concepts, chosen by measured impact (the paper's section 5.2).

Learn K concepts on the states of one kind of question (e.g. "what colour is ...?"), make every
concept-pair vector u_j - u_i, measure on held-out questions which answers each one changes, and rank
the pairs by impact; the best pair is applied again and its answer changes reported.

    python recipes/fine_by_impact.py --data vqav2 --questions ... --annotations ... --eval-questions ... \
        --eval-annotations ... --images coco/all --answer-type other --k 20 --out runs/fine
    python recipes/fine_by_impact.py --model shapes-base --question-kind color_of_shape --k 8 --out runs/fine
"""

from __future__ import annotations

import sys
from collections import Counter

import common

import nnshift as ns


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--answer-type", default="other", help="the questions the concepts are learnt on (VQAv2)")
    ap.add_argument("--question-kind", default=None, help="shapes world only: e.g. color_of_shape")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=5)
    ap.add_argument("--top", type=int, default=5, help="pairs reported")
    args = ap.parse_args(argv)
    common.check_args(args)
    res = common.Results("fine-grained steering by impact", args)
    vlm = common.load_model(args.model, args.lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    if args.data == "shapes" and args.question_kind:
        train = ns.zoo.dataset(args.n_train, task="vqa", question_kind=args.question_kind, seed=13)
        evalset = ns.zoo.dataset(args.n_eval, task="vqa", question_kind=args.question_kind, seed=14)
    else:
        train = common.vqa(args, "train", args.n_train, args.answer_type, seed=1)
        evalset = common.vqa(args, "eval", args.n_eval, args.answer_type, seed=3)
    acts = ns.capture(vlm, train, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    dico = ns.concepts.fit(acts, k=min(args.k, len(acts)), method="kmeans", seed=args.seed)
    before = ns.generate(vlm, evalset, **run)
    vectors = ns.steering.fine_all(dico)
    ranked = ns.steering.by_impact(vlm, evalset, vectors, alpha=args.alpha, baseline=before, **run, progress=False)
    best = ranked[0]
    after = ns.steer(vlm, evalset, vectors[best.key].patch(alpha=args.alpha), **run)
    res["layer"], res["k"], res["candidates"] = acts.info["layer"], dico.k, len(vectors)
    res["top"] = [{"pair": list(r.key), "targets": r.targets, "score": r.score} for r in ranked[: args.top]]
    res["best_pair"] = list(best.key)
    res["answers_before"] = dict(Counter(before).most_common(8))
    res["answers_after_best"] = dict(Counter(after).most_common(8))
    res["changed_by_best"] = sum(a != b for a, b in zip(before, after, strict=True))
    res["n_eval"] = len(evalset)
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
