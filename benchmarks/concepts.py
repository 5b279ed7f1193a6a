"""Benchmark: nnshift concept methods against the reference implementation's scikit-learn calls.

    python benchmarks/concepts.py                 # the reference scale: 2,600 x 4,096, K = 20
    python benchmarks/concepts.py --m 650 --d 1024 --quick

* "Semi-NMF": nnshift ``sparse_semi_nmf`` (λ = 1, the reference's objective) against
  ``sklearn.decomposition.DictionaryLearning(n_components=20, positive_code=True, fit_algorithm="cd",
  transform_algorithm="lasso_cd", alpha=1)`` as mshukor/xl-vlms calls it (``max_iter=5000``).
  Both losses are evaluated by one independent numpy function, ``0.5‖Z - V U‖² + λ‖V‖₁`` in
  float64, on each method's own training codes.
* k-means: nnshift ``kmeans`` against ``sklearn.cluster.KMeans(n_clusters=20, max_iter=5000)``;
  inertia evaluated the same way (sum of squared distances to the nearest centroid, float64).

The data are synthetic hidden states: a positive mean offset + sparse non-negative mixtures of
low-rank directions + Gaussian noise, row norms around 60-80 (like an LLM's residual stream).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch


def hidden_states(m: int, d: int, rank: int = 48, seed: int = 0) -> np.ndarray:
    """Synthetic [m, d] float32 'hidden states': offset + sparse non-negative low-rank part + noise."""
    rng = np.random.default_rng(seed)
    offset = np.abs(rng.normal(size=d)) * 0.9 + rng.normal(size=d) * 0.3  # positive mean offset
    offset *= 50.0 / np.linalg.norm(offset)
    atoms = rng.normal(size=(rank, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = rng.exponential(size=(m, rank)) * (rng.random((m, rank)) < 0.15) * 15.0
    noise = rng.normal(size=(m, d)) * (12.0 / np.sqrt(d))
    return (offset + codes @ atoms + noise).astype(np.float32)


def sparse_objective(z: np.ndarray, codes: np.ndarray, concepts: np.ndarray, lam: float) -> float:
    """0.5‖Z - V U‖²_F + λ‖V‖₁ in float64 (the one evaluation used for both implementations)."""
    z64, v64, u64 = z.astype(np.float64), codes.astype(np.float64), concepts.astype(np.float64)
    return float(0.5 * np.sum((z64 - v64 @ u64) ** 2) + lam * np.abs(v64).sum())


def inertia(z: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, float64."""
    z64, c64 = z.astype(np.float64), centers.astype(np.float64)
    d2 = (z64**2).sum(1)[:, None] - 2 * z64 @ c64.T + (c64**2).sum(1)[None, :]
    return float(np.maximum(d2.min(1), 0).sum())


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print a Markdown table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=2600)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn-max-iter", type=int, default=5000, help="DictionaryLearning max_iter (reference: 5000)")
    ap.add_argument("--skip-sklearn", action="store_true", help="time nnshift only")
    ap.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    import sklearn
    from sklearn.cluster import KMeans
    from sklearn.decomposition import DictionaryLearning

    import nnshift.concepts as nc

    z = hidden_states(args.m, args.d, seed=args.seed)
    zt = torch.from_numpy(z)
    norms = np.linalg.norm(z, axis=1)
    lam = 1.0
    rows: list[dict] = []

    # warm-up (first-call overheads of torch kernels), not timed
    nc.fit(zt[:200, :256], k=5, method="sparse_semi_nmf", seed=0)

    dico, t = _timed(lambda: nc.fit(zt, k=args.k, method="sparse_semi_nmf", seed=args.seed))
    assert dico.codes is not None
    rows.append(
        {
            "impl": "nnshift sparse_semi_nmf (λ=1)",
            "seconds": t,
            "loss": sparse_objective(z, dico.codes.numpy(), dico.concepts.numpy(), lam),
            "iterations": dico.diagnostics["n_iter"],
            "rel_error": dico.diagnostics["reconstruction_error"],
        }
    )
    if not args.skip_sklearn:
        dl = DictionaryLearning(
            n_components=args.k,
            positive_code=True,
            fit_algorithm="cd",
            transform_algorithm="lasso_cd",
            alpha=lam,
            max_iter=args.sklearn_max_iter,
            random_state=args.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codes, t = _timed(lambda: dl.fit_transform(z))
        rows.append(
            {
                "impl": f"sklearn DictionaryLearning (alpha=1, cd/lasso_cd, max_iter={args.sklearn_max_iter})",
                "seconds": t,
                "loss": sparse_objective(z, codes, dl.components_, lam),
                "iterations": int(dl.n_iter_),
                "rel_error": float(np.linalg.norm(z - codes @ dl.components_) / np.linalg.norm(z)),
            }
        )

    km, t = _timed(lambda: nc.fit(zt, k=args.k, method="kmeans", seed=args.seed, max_iter=5000))
    rows.append(
        {
            "impl": "nnshift kmeans",
            "seconds": t,
            "loss": inertia(z, km.concepts.numpy()),
            "iterations": km.diagnostics["n_iter"],
            "rel_error": km.diagnostics["reconstruction_error"],
        }
    )
    if not args.skip_sklearn:
        skm = KMeans(n_clusters=args.k, max_iter=5000, random_state=args.seed)
        _, t = _timed(lambda: skm.fit(z))
        rows.append(
            {
                "impl": "sklearn KMeans (k-means++, max_iter=5000)",
                "seconds": t,
                "loss": inertia(z, skm.cluster_centers_),
                "iterations": int(skm.n_iter_),
                "rel_error": float(np.sqrt(inertia(z, skm.cluster_centers_)) / np.linalg.norm(z)),
            }
        )

    env = {
        "shape": [args.m, args.d],
        "k": args.k,
        "row_norm_mean": float(norms.mean()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(
        f"data {args.m} x {args.d} float32, K={args.k}, mean row norm {env['row_norm_mean']:.1f}; "
        f"{env['cpu_count']} CPU cores, torch {env['torch']} ({env['torch_threads']} threads), sklearn {env['sklearn']}"
    )
    print("| implementation | time (s) | loss | iterations | relative error |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['seconds']:.2f} | {r['loss']:.6g} | {r['iterations']} | {r['rel_error']:.4f} |")
    if not args.skip_sklearn:
        s_nn, s_sk = rows[0], rows[1]
        print(
            f"\nsemi_nmf speed-up {s_sk['seconds'] / s_nn['seconds']:.1f}x, "
            f"loss ratio nnshift/sklearn {s_nn['loss'] / s_sk['loss']:.5f}"
        )
        k_nn, k_sk = rows[2], rows[3]
        print(
            f"kmeans speed-up {k_sk['seconds'] / k_nn['seconds']:.1f}x, "
            f"inertia ratio nnshift/sklearn {k_nn['loss'] / k_sk['loss']:.5f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
