"""Recipe: steering caption style (the paper's COCO captions: e.g. towards naming colours).

Source: the mean generated-token state of the base model's captions; target: the states where a model
that writes in the target style (a fine-tune, or the same model with a style prompt) says a style word.
The coarse vector is added at one middle layer; style rates and CIDEr-D before and after.

    python recipes/caption_style.py --data coco --captions dataset_coco.json --images coco/ \
        --target-model runs/llava-colors --style-words red,green,blue,yellow --layer 19 --out runs/style
    python recipes/caption_style.py --model shapes-base --target-model shapes-colors --layer 2 --out runs/style
"""

from __future__ import annotations

import sys

import common

import nnshift as ns


def main(argv: list[str] | None = None) -> None:
    """Run the recipe with command-line options."""
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--target-model", default=None, help="the model whose captions have the style (default --model)")
    ap.add_argument("--target-lora", default=None, help="or the style as an adapter on --model")
    ap.add_argument("--style-words", default=None, help="comma-separated; default: the shapes world's colours")
    ap.add_argument("--layer", type=int, default=19, help="the paper steers LLaVA-1.5 captions at layer 20 (19)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=25)
    args = ap.parse_args(argv)
    common.check_args(args)
    words = args.style_words.split(",") if args.style_words else list(ns.zoo.COLORS)
    res = common.Results("caption style", args)
    vlm = common.load_model(args.model, args.lora, args)
    styled = vlm
    if args.target_model or args.target_lora:
        styled = common.load_model(args.target_model or args.model, args.target_lora, args)
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    train = common.captions(args, "train", args.n_train, seed=1)
    evalset = common.captions(args, "eval", args.n_eval, seed=2)
    source = ns.capture(vlm, train, layer=args.layer, at=ns.positions.generated(reduce="mean"), **run)
    target = ns.capture(styled, train, layer=args.layer, at=ns.positions.token_of_interest(words), **run)
    vec = ns.steering.coarse(source, target)
    before = ns.generate(vlm, evalset, **run)
    after = ns.steer(vlm, evalset, vec.patch(alpha=args.alpha), **run)
    rep = ns.evaluate.compare_captions(before, after, {"style": words}, references=[s.answers for s in evalset])
    res["layer"], res["alpha"], res["n_eval"] = source.info["layer"], args.alpha, len(evalset)
    res["n_source_rows"], res["n_target_rows"] = len(source), len(target)
    res["style_rate"] = [rep.before.rates["style"], rep.after.rates["style"]]
    res["cider_d"] = list(rep.cider or ())
    res["examples"] = [[b, a] for b, a in list(zip(before, after, strict=True))[:3]]
    vec.save(res.out / "vector")
    res.write()


if __name__ == "__main__":
    main(sys.argv[1:])
