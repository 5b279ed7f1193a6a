"""`nnshift concepts`: a concept dictionary from captured activations, grounded in words with --model."""

from __future__ import annotations

import argparse

from nnshift.cli.common import Command, add_allow_partial, add_model_args, layer_int, positive_int
from nnshift.cli.loaders import load_acts, load_model

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `nnshift concepts`."""
    p.add_argument("--acts", required=True, help="activation store or saved Activations folder")
    p.add_argument("--layer", type=layer_int, default=None, help="layer to read when the store holds several")
    add_allow_partial(p)
    p.add_argument("--k", type=positive_int, default=20, help="number of concepts (default: 20)")
    p.add_argument("--method", default="kmeans", help="kmeans, semi_nmf, pca, nmf (default: kmeans)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_model_args(p, required=False, remote=False)
    p.add_argument("--top", type=positive_int, default=15, help="grounding words per concept (default: 15)")
    p.add_argument("--out", required=True, help="dictionary folder")


def run(args: argparse.Namespace) -> int:
    """Fit (and ground) the dictionary, save it to --out."""
    import nnshift as ns
    from nnshift.cli.common import CliError

    if args.model is None and args.lora is not None:
        raise CliError("--lora applies to --model", "add --model (the model to ground the concepts with)")
    acts = load_acts(args.acts, "--acts", args.layer, args.allow_partial)
    dico = ns.concepts.fit(acts, k=args.k, method=args.method, seed=args.seed)
    if args.model:
        words = dico.ground_text(load_model(args), top=args.top)
        dico.info["words"] = words
        for i, w in enumerate(words):
            print(f"concept {i:2d}: {' '.join(w)}")
    dico.save(args.out)
    print(f"{dico.k} {dico.method} concepts of {len(acts)} samples -> {args.out}")
    return 0


COMMAND = Command(
    name="concepts",
    help="learn a concept dictionary from captured activations",
    description=(
        "Fit K concepts (kmeans, semi_nmf, pca, nmf) on an activation store and "
        "ground them in words when --model is given."
    ),
    example="nnshift concepts --acts runs/base-circle --k 20 --method kmeans --out runs/base-circle-k20",
    add_arguments=add_arguments,
    run=run,
)
