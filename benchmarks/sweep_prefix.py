"""Cost of a sweep with and without prompt-prefix sharing, vs one steered run (issue 16: a sweep <= 3x one run).

On shapes-base, the yes/no -> number `answer_type_vector` of benchmarks/steering_sweep.py, patches at
``last_prompt | generated`` (which spare the prompt prefix, so `nnshift.steering.prefix` applies), 400 VQA
questions (seed 305), ``max_new_tokens=4``, ``batch_size=16``, one torch thread. Timed: (a) one ``ns.steer``
run (one alpha, layer 3), (b) the sweep of 5 alphas x layers [2, 3] (11 grid points; fluency off, steerability
on) with sharing switched off (the plain path) and on. Best of ``--repeats`` round-robin rounds of process CPU
time (and wall time), after a warm-up round (`steering_sweep.timed`). Also checks that both sweeps give the same answers and margins.

    python benchmarks/sweep_prefix.py --out benchmarks/results/sweep_prefix     # prints and writes cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift.positions import generated, last_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steering_sweep import meta, timed, unshared, yesno_to_number

warnings.filterwarnings("ignore")


def same_results(a: Any, b: Any) -> dict[str, Any]:
    """Whether two sweep reports have the same answers and margins (max |margin difference|)."""
    answers = all(x.answers == y.answers for x, y in zip(a.rows, b.rows, strict=True))
    diff = 0.0
    for x, y in zip(a.rows, b.rows, strict=True):
        mx, my = torch.tensor(x.sample_margin), torch.tensor(y.sample_margin)
        ok = ~(mx.isnan() & my.isnan())
        if bool(ok.any()):
            diff = max(diff, float((mx[ok] - my[ok]).abs().max()))
    return {"same_answers": answers, "max_margin_diff": diff}


def main() -> None:
    """Time the runs; print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ns.zoo.load("shapes-base")
    spec = yesno_to_number(base, argparse.Namespace(n_train=args.n_train, n=16, n_fresh=16))
    samples = ns.zoo.dataset(args.n, task="vqa", seed=305)
    positions = last_prompt() | generated()
    layers = sorted(spec.vectors)
    run = {"max_new_tokens": 4, "batch_size": args.batch_size, "progress": False}
    patch = spec.vectors[layers[-1]].patch(alpha=spec.alphas[2], positions=positions)

    def sweep(on: list[ns.Sample]) -> Callable[[], Any]:
        kw = {"target": spec.target, "alphas": spec.alphas, "layers": layers, "positions": positions}
        return lambda: ns.steering.sweep(base, spec.vectors, on, fluency=False, steerability=True, **kw, **run)

    check = {"shared": sweep(samples)(), "unshared": unshared(sweep(samples))()}  # also the warm-up
    fns = {
        "steer (one alpha)": lambda: ns.steer(base, samples, patch, **run),
        "sweep, unshared": unshared(sweep(samples)),
        "sweep, shared prefix": sweep(samples),
    }
    best = timed(fns, args.repeats)
    wall, cpu = best["steer (one alpha)"]
    doc = {
        **meta(args),
        "n_questions": len(samples),
        "positions": positions.spec(),
        "alphas": list(spec.alphas),
        "layers": layers,
        "grid_points": 1 + len(spec.alphas) * len(layers),
        "batch_size": args.batch_size,
        "max_new_tokens": 4,
        "fluency": False,
        "steerability": True,
        "repeats": args.repeats,
        "shared_equals_unshared": same_results(check["unshared"], check["shared"]),
        "seconds": {k: round(v[0], 3) for k, v in best.items()},
        "cpu_seconds": {k: round(v[1], 3) for k, v in best.items()},
        "ratio_to_steer": {k: round(v[0] / wall, 2) for k, v in best.items()},
        "cpu_ratio_to_steer": {k: round(v[1] / cpu, 2) for k, v in best.items()},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
