"""Recipe: fine-tuning shift analysis (the paper's section 4): how did fine-tuning move the concepts of a word?

Capture both models at the token of interest in their own captions, learn K concepts per model, compute
the concept shift vectors, the shifted concepts and how well they recover the fine-tuned ones, and the
concept dynamics; write results.json and the figures.

    python recipes/shift_analysis.py --model llava-hf/llava-1.5-7b-hf --finetune-lora runs/lora-colors \
        --data coco --captions dataset_coco.json --images coco/ --token dog --out runs/shift-dog
    python recipes/shift_analysis.py --model shapes-base --finetune shapes-colors --token circle \
        --n-train 300 --k 6 --layer -1 --out runs/shift-circle
"""

from __future__ import annotations

import sys

import common

import nnshift as ns


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0], finetune=True)
    ap.add_argument("--token", default="dog", help="the token of interest")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    args = ap.parse_args(argv)
    if args.data is None and args.model in ns.zoo.names():
        args.data = "shapes"
    common.check_args(args)
    if args.finetune is None and args.finetune_lora is None:
        raise SystemExit("error: pass --finetune (a model) or --finetune-lora (an adapter on --model)")
    res = common.Results("shift analysis", args)
    base = common.load_model(args.model, args.lora, args)
    ft = common.load_model(args.finetune or args.model, args.finetune_lora, args)
    samples = common.captions(args, "train", args.n_train, seed=args.seed)
    toi = ns.positions.token_of_interest(args.token)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    acts_a = ns.capture(base, samples, layer=args.layer, at=toi, **run)
    acts_b = ns.capture(ft, acts_a.samples, layer=args.layer, at=toi, **run)
    acts_a, acts_b = ns.pair(acts_a, acts_b)
    k = min(args.k, len(acts_a))
    dico_a = ns.concepts.fit(acts_a, k=k, method="kmeans", seed=args.seed)
    dico_b = ns.concepts.fit(acts_b, k=k, method="kmeans", seed=args.seed)
    report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=args.alpha, vlm=base)
    report.save(res.out / "shift")
    res["n_samples"], res["n_paired"], res["k"] = len(samples), len(acts_a), k
    res["layer"], res["alpha"] = acts_a.info["layer"], args.alpha
    res["summary"] = report.summary()
    res.figure(ns.plots.plot_recovery(report), "recovery")
    res.figure(ns.plots.plot_dynamics(report), "dynamics")
    res.figure(ns.plots.plot_similarity_matrix(report), "similarity")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
