"""Recipe: steering towards a target answer (the paper's yes -> no).

The vector is the mean state of questions the model answers "no" minus that of questions it answers
"yes" (its own answers, last prompt token); evaluated on held-out questions: how many "yes" turn "no",
and what the untouched answer types keep.

    python recipes/target_yes_no.py --data vqav2 --questions ... --annotations ... --eval-questions ... \
        --eval-annotations ... --images coco/all --out runs/yes-no
    python recipes/target_yes_no.py --model shapes-base --layer 3 --alpha 0.3 --out runs/yes-no
"""

from __future__ import annotations

import sys

import common

import nnshift as ns


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--source", default="yes")
    ap.add_argument("--target", default="no")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--positions", default="all")
    ap.add_argument("--max-new-tokens", type=int, default=5)
    args = ap.parse_args(argv)
    common.check_args(args)
    res = common.Results("target answer", args)
    vlm = common.load_model(args.model, args.lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    train = common.vqa(args, "train", args.n_train, "yes/no", seed=1)
    evalset = common.vqa(args, "eval", args.n_eval, seed=3)
    acts = ns.capture(vlm, train, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    acts.answers = ns.generate(vlm, acts.samples, **run)  # the model's own answers
    vec = ns.steering.target_answer(acts, args.source, args.target)
    before = ns.generate(vlm, evalset, **run)
    after = ns.steer(vlm, evalset, vec.patch(alpha=args.alpha, positions=args.positions), **run)
    rep = ns.evaluate.compare_vqa(before, after, evalset, source=args.source, target=args.target)
    res["layer"], res["alpha"], res["n_eval"] = acts.info["layer"], args.alpha, len(evalset)
    res["source_answers_before"] = rep.source_counts[0]
    res["turned_to_target"] = rep.turned
    res["turned_share"] = rep.turned / max(1, rep.source_counts[0])
    res["source_counts"], res["target_counts"] = list(rep.source_counts), list(rep.target_counts)
    res["untouched_accuracy"] = rep.untouched_accuracy
    res["changed"] = rep.changed
    vec.save(res.out / "vector")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
