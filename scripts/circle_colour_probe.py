"""How much of the circle's colour the last-layer state at the "circle" token of shapes-base's captions holds.

    python scripts/circle_colour_probe.py      # 5-fold cross-validated logistic regression accuracy

docs/zoo.md quotes the figure; the concept results on the shapes world rest on it.
"""

from __future__ import annotations

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

import nnshift as ns
from nnshift import zoo


def main() -> None:
    torch.set_num_threads(1)
    vlm = zoo.load("shapes-base")
    caps = zoo.dataset(400, style="generic", task="caption", seed=0)
    acts = ns.capture(vlm, caps, -1, ns.positions.token_of_interest("circle"), max_new_tokens=24, progress=False)
    colour = [next(o["color"] for o in s.meta["objects"] if o["shape"] == "circle") for s in acts.samples]
    score = cross_val_score(LogisticRegression(max_iter=2000), acts.tensor.numpy(), colour, cv=5).mean()
    print(f"{len(colour)} captions with 'circle'; colour of the circle from the state: {score:.3f} (5-fold CV)")


if __name__ == "__main__":
    main()
