"""Recipe: coarse steering of answer types (the paper's VQAv2 yes/no -> number).

The vector is the mean state of number questions minus that of yes/no questions (last prompt token,
reference answer types), added at every position and generation step; evaluated on held-out questions
of every type: how many yes/no questions get a number answer, and what accuracy the other types keep.

    python recipes/coarse_yesno_number.py --data vqav2 --questions v2_..._train2014_questions.json \
        --annotations v2_..._train2014_annotations.json --eval-questions v2_..._val2014_questions.json \
        --eval-annotations v2_..._val2014_annotations.json --images coco/all --out runs/coarse
    python recipes/coarse_yesno_number.py --model shapes-base --layer 3 --alpha 1.5 --out runs/coarse
"""

from __future__ import annotations

import sys

import common

import nnshift as ns


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--source-type", default="yes/no")
    ap.add_argument("--target-type", default="number")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--positions", default="all", help="where the vector is added (the reference: all)")
    ap.add_argument("--max-new-tokens", type=int, default=5)
    args = ap.parse_args(argv)
    common.check_args(args)
    res = common.Results("coarse steering: answer type", args)
    vlm = common.load_model(args.model, args.lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    src, tgt = args.source_type, args.target_type
    train = common.vqa(args, "train", args.n_train, src, seed=1) + common.vqa(args, "train", args.n_train, tgt, seed=2)
    evalset = common.vqa(args, "eval", args.n_eval, seed=3)
    acts = ns.capture(vlm, train, layer=args.layer, at="last_prompt", batch_size=args.batch_size)
    vec = ns.steering.answer_type_vector(acts, src, tgt, by="reference")
    before = ns.generate(vlm, evalset, **run)
    after = ns.steer(vlm, evalset, vec.patch(alpha=args.alpha, positions=args.positions), **run)
    rep = ns.evaluate.compare_vqa(before, after, evalset, touched=[src, tgt])
    res["layer"], res["alpha"], res["n_eval"], res["vector_norm"] = (
        acts.info["layer"],
        args.alpha,
        len(evalset),
        vec.norm,
    )
    res["target_type_share_on_source_questions"] = [common.share(a, evalset, src, tgt) for a in (before, after)]
    res["accuracy_by_type"] = {"before": rep.before.accuracy_by_type, "after": rep.after.accuracy_by_type}
    res["untouched_accuracy"] = rep.untouched_accuracy
    res["changed"] = rep.changed
    vec.save(res.out / "vector")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
