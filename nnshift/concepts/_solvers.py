"""Numerical kernels shared by the concept methods: all torch, float32, on the input's device.

Row convention: data ``Z`` is ``[M, D]``, codes ``V`` are ``[M, K]``, concepts ``U`` are ``[K, D]``
and ``Z ≈ V @ U``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "generator",
    "sqnorm",
    "nonneg_lasso_cd",
    "nonneg_lasso",
    "objective",
    "randomized_svd",
    "sq_distances",
    "kmeans_plusplus",
    "lloyd",
    "project_rows_unit_ball",
    "unit_ball_lstsq",
    "sparse_semi_nmf",
]

_TINY = 1e-12


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


@contextmanager
def _few_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for loops of small CPU ops (thread start-up costs more than it saves there)."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def sqnorm(x: Float[Tensor, "m d"]) -> float:
    """``‖x‖²_F``: float32 row sums (pairwise summation) accumulated in float64."""
    return float(x.pow(2).sum(dim=1).double().sum())


def nonneg_lasso_cd(
    b: Float[Tensor, "m k"],
    gram: Float[Tensor, "k k"],
    v0: Float[Tensor, "m k"],
    lam: float,
    max_sweeps: int = 1000,
    tol: float = 1e-6,
) -> tuple[Float[Tensor, "m k"], int]:
    """Coordinate descent for ``min_{V>=0} 0.5 tr(V G Vᵀ) - tr(Bᵀ V) + lam·sum(V)`` (rows independent).

    With ``B = Z Uᵀ`` and ``G = U Uᵀ`` this is ``min_{V>=0} 0.5‖Z - V U‖² + lam‖V‖₁`` up to a constant.
    Stops when the largest change of a sweep is at most ``tol`` times the largest code (``tol <= 0``:
    run exactly ``max_sweeps`` sweeps). Returns the codes and the number of sweeps run.
    """
    k = gram.shape[0]
    gram = gram.contiguous()
    neg = v0.t().neg().contiguous()  # [K, M] = -Vᵀ: rows are contiguous columns of V
    r = (b - lam).t().contiguous() + gram @ neg  # [K, M] = (B - lam - V G)ᵀ
    inv = [1.0 / max(float(x), _TINY) for x in gram.diagonal().tolist()]
    rows_r, rows_n, rows_g = r.unbind(0), neg.unbind(0), gram.unbind(0)
    sweeps = 0
    with _few_threads(neg.device):
        for sweeps in range(1, max_sweeps + 1):  # noqa: B007
            prev = neg.clone() if tol > 0 else None
            for j in range(k):
                # v_j <- max(0, v_j + r_j / G_jj); delta = max(-v_j, r_j / G_jj)
                delta = rows_r[j].mul(inv[j]).clamp_(min=rows_n[j])
                rows_n[j].sub_(delta)
                r.addr_(rows_g[j], delta, alpha=-1.0)
            if prev is not None:
                change = float((neg - prev).abs().max())
                if change <= tol * max(float(neg.abs().max()), _TINY):
                    break
    return neg.t().neg().contiguous(), sweeps


def nonneg_lasso(
    z: Float[Tensor, "m d"],
    concepts: Float[Tensor, "k d"],
    lam: float,
    max_sweeps: int = 1000,
    tol: float = 1e-6,
) -> Float[Tensor, "m k"]:
    """Non-negative (sparse) least squares codes: ``argmin_{v>=0} 0.5‖z - v U‖² + lam‖v‖₁`` per row."""
    b = z @ concepts.t()
    gram = concepts @ concepts.t()
    k = gram.shape[0]
    ridge = 1e-6 * float(gram.diagonal().mean().clamp_min(_TINY)) * torch.eye(k, device=gram.device)
    # unconstrained least squares, clipped at 0: a cheap warm start
    v0 = torch.linalg.solve(gram + ridge, (b - lam).t()).t().clamp_(min=0.0)
    v, _ = nonneg_lasso_cd(b, gram, v0, lam, max_sweeps=max_sweeps, tol=tol)
    return v


def objective(
    zz: float,
    b: Float[Tensor, "m k"],
    gram: Float[Tensor, "k k"],
    v: Float[Tensor, "m k"],
    lam: float,
) -> float:
    """``0.5‖Z - V U‖² + lam‖V‖₁`` from ``‖Z‖²``, ``B = Z Uᵀ`` and ``G = U Uᵀ`` (small terms in float64)."""
    v64 = v.double()
    cross = float((b.double() * v64).sum())
    quad = float((gram.double() * (v64.t() @ v64)).sum())
    return 0.5 * max(zz - 2.0 * cross + quad, 0.0) + lam * float(v64.sum())


def randomized_svd(
    z: Float[Tensor, "m d"],
    k: int,
    gen: torch.Generator,
    oversample: int = 10,
    n_iter: int = 6,
) -> tuple[Float[Tensor, "m k"], Float[Tensor, " k"], Float[Tensor, "k d"]]:
    """Top-``k`` SVD ``z ≈ P diag(s) Q`` by a seeded randomized range finder with power iterations.

    Falls back to the exact SVD when ``min(M, D)`` is small. Signs are fixed so that the largest
    absolute coordinate of each right singular vector is positive.
    """
    m, d = z.shape
    q = min(k + oversample, m, d)
    if min(m, d) <= 512 or q >= min(m, d):
        p, s, qt = torch.linalg.svd(z, full_matrices=False)
        p, s, qt = p[:, :k], s[:k], qt[:k]
    else:
        omega = torch.randn(d, q, generator=gen, device=z.device, dtype=z.dtype)
        y, _ = torch.linalg.qr(z @ omega)
        for _ in range(n_iter):
            w, _ = torch.linalg.qr(z.t() @ y)
            y, _ = torch.linalg.qr(z @ w)
        small = y.t() @ z  # [q, d]
        ps, s, qt = torch.linalg.svd(small, full_matrices=False)
        p = (y @ ps)[:, :k]
        s, qt = s[:k], qt[:k]
    idx = qt.abs().argmax(dim=1)
    signs = torch.sign(qt.gather(1, idx[:, None]).squeeze(1))
    signs[signs == 0] = 1.0
    return p * signs, s, qt * rearrange(signs, "k -> k 1")


def sq_distances(
    x: Float[Tensor, "m d"],
    c: Float[Tensor, "k d"],
    xx: Float[Tensor, "m 1"] | None = None,
    cc: Float[Tensor, " k"] | None = None,
) -> Float[Tensor, "m k"]:
    """Squared Euclidean distances ``‖x_m - c_k‖²`` (clamped at 0); ``xx``, ``cc``: precomputed squared norms."""
    xx = (x * x).sum(dim=1, keepdim=True) if xx is None else xx
    cc = (c * c).sum(dim=1) if cc is None else cc
    cross = einsum(x, c, "m d, k d -> m k")
    return (xx - 2.0 * cross + cc).clamp_(min=0.0)


def kmeans_plusplus(x: Float[Tensor, "m d"], k: int, gen: torch.Generator) -> Float[Tensor, "k d"]:
    """Greedy k-means++ seeding (2 + ⌊ln k⌋ candidates per step, keep the one that lowers the potential most)."""
    m = x.shape[0]
    n_local = 2 + int(math.log(k))
    norms = (x * x).sum(dim=1)
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = int(torch.randint(m, (1,), generator=gen, device=x.device))
    centers[0] = x[first]
    closest = sq_distances(x, x[first : first + 1], xx=norms[:, None]).squeeze(1)
    potential = float(closest.double().sum())
    for c in range(1, k):
        if potential <= 0.0:  # fewer distinct points than k: pick at random
            cand = torch.randint(m, (n_local,), generator=gen, device=x.device)
        else:
            draws = torch.rand(n_local, generator=gen, device=x.device, dtype=torch.float64) * potential
            cand = torch.searchsorted(closest.double().cumsum(0), draws).clamp_(max=m - 1)
        d_cand = sq_distances(x[cand], x, xx=norms[cand][:, None], cc=norms)
        d_cand = torch.minimum(closest[None, :], d_cand)
        pots = d_cand.double().sum(dim=1)
        best = int(pots.argmin())
        closest, potential = d_cand[best], float(pots[best])
        centers[c] = x[cand[best]]
    return centers


def lloyd(
    x: Float[Tensor, "m d"],
    centers: Float[Tensor, "k d"],
    max_iter: int,
    tol: float,
) -> tuple[Float[Tensor, "k d"], Int[Tensor, " m"], list[float], int, bool]:
    """Lloyd iterations from ``centers``; empty clusters take the points farthest from their centroid.

    Stops when labels no longer change or the total squared centroid shift is at most
    ``tol · mean feature variance`` (scikit-learn's rule). Returns centers, labels, the inertia of
    each iteration's assignment, the number of iterations and whether it converged.
    """
    k = centers.shape[0]
    tol_abs = tol * float(x.var(dim=0, unbiased=False).mean())
    xx = (x * x).sum(dim=1, keepdim=True)
    labels_prev: Tensor | None = None
    history: list[float] = []
    converged = False
    it = 0
    centers = centers.clone()
    for it in range(1, max_iter + 1):  # noqa: B007
        d2 = sq_distances(x, centers, xx=xx)
        mind, labels = d2.min(dim=1)
        history.append(float(mind.double().sum()))
        if labels_prev is not None and torch.equal(labels, labels_prev):
            converged = True
            break
        onehot = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device).scatter_(1, labels[:, None], 1.0)
        counts = onehot.sum(dim=0)
        new = (onehot.t() @ x) / counts.clamp(min=1.0)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            far = mind.topk(int(empty.numel())).indices
            new[empty] = x[far]
        shift = float(((new - centers) ** 2).sum())
        centers = new
        labels_prev = labels
        if shift <= tol_abs:
            converged = True
            break
    labels = sq_distances(x, centers, xx=xx).argmin(dim=1)
    return centers, labels, history, it, converged


def project_rows_unit_ball(u: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """Each row divided by ``max(‖row‖, 1)``."""
    return u / u.norm(dim=1, keepdim=True).clamp(min=1.0)


def unit_ball_lstsq(
    a: np.ndarray, cc: np.ndarray, mu0: np.ndarray | None = None, max_iter: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min_U 0.5 tr(U A Uᵀ) - <C, U>`` s.t. ``‖u_k‖ <= 1`` in the K-dimensional dual.

    The solution is ``U = (A + diag(μ))⁻¹ C`` with multipliers ``μ >= 0``; they maximize the concave
    dual ``g(μ) = -0.5 tr((A + diag μ)⁻¹ C Cᵀ) - 0.5 Σ μ``, found by projected Newton with
    backtracking. Only ``A`` and ``C Cᵀ`` (``[K, K]``, float64) are needed. Returns
    ``(A + diag μ)⁻¹`` and ``μ``.
    """
    k = a.shape[0]
    eye = np.eye(k)
    ridge = 1e-12 * max(float(np.trace(a)) / k, 1e-300)
    mu = np.zeros(k) if mu0 is None else np.maximum(mu0, 0.0)

    def dual(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        mi = np.linalg.inv(a + np.diag(m) + ridge * eye)
        uu = mi @ cc @ mi
        return mi, uu, -0.5 * float(np.sum(mi * cc)) - 0.5 * float(m.sum())

    mi, uu, g = dual(mu)
    for _ in range(max_iter):
        grad = 0.5 * (np.diag(uu) - 1.0)
        free = ~((mu <= 0.0) & (grad <= 0.0))
        if not free.any() or np.abs(grad[free]).max() <= 1e-10:
            break
        hess = mi * uu  # = -∇²g, positive semi-definite
        hf = hess[np.ix_(free, free)]
        step = np.zeros(k)
        step[free] = np.linalg.solve(hf + 1e-12 * max(float(np.trace(hf)), 1e-300) * np.eye(hf.shape[0]), grad[free])
        t = 1.0
        while True:
            cand = np.maximum(mu + t * step, 0.0)
            mi_c, uu_c, g_c = dual(cand)
            if g_c >= g - 1e-14 * abs(g) or t < 1e-10:
                break
            t *= 0.5
        if t < 1e-10:
            break
        mu, mi, uu, g = cand, mi_c, uu_c, g_c
    return mi, mu


def _atom_step(
    z: Float[Tensor, "m d"],
    v: Float[Tensor, "m k"],
    c: Float[Tensor, "k d"],
    u_prev: Float[Tensor, "k d"],
    mu: np.ndarray,
    gen: torch.Generator,
) -> Float[Tensor, "k d"]:
    """Exact atoms for codes ``v`` (``c = vᵀ z``): `unit_ball_lstsq` on used atoms, data rows for unused ones."""
    k = v.shape[1]
    a = (v.t() @ v).double().cpu().numpy()
    cc = (c @ c.t()).double().cpu().numpy()
    alive = np.diag(a) > 1e-10 * max(float(np.trace(a)) / k, 1e-300)
    u = u_prev.clone()
    if alive.any():
        idx = np.flatnonzero(alive)
        mi, mu_a = unit_ball_lstsq(a[np.ix_(idx, idx)], cc[np.ix_(idx, idx)], mu[idx])
        mu[idx] = mu_a
        sel = torch.as_tensor(idx, device=z.device)
        u[sel] = torch.as_tensor(mi, dtype=z.dtype, device=z.device) @ c[sel]
    for j in np.flatnonzero(~alive):  # an unused atom restarts from a random data row
        row = z[int(torch.randint(z.shape[0], (1,), generator=gen, device=z.device))]
        u[int(j)] = row / row.norm().clamp_min(1e-12)
        mu[int(j)] = 0.0
    return project_rows_unit_ball(u)


def sparse_semi_nmf(
    z: Float[Tensor, "m d"],
    u0: Float[Tensor, "k d"],
    lam: float,
    gen: torch.Generator,
    max_iter: int = 500,
    tol: float = 1e-6,
    inner_sweeps: int = 2,
    extrapolate: bool = True,
) -> tuple[Float[Tensor, "k d"], Float[Tensor, "m k"], list[float], int, bool]:
    """``min 0.5‖Z - VU‖² + lam‖V‖₁`` s.t. ``V >= 0``, ``‖u_k‖ <= 1`` by alternating block updates.

    U-step: exact, through `unit_ball_lstsq` (two ``[K, K]`` Gram matrices). V-step:
    ``inner_sweeps`` sweeps of non-negative lasso coordinate descent, warm-started. With
    ``extrapolate``, both blocks are extrapolated (``X̂ = X + β (X - X_prev)``) with an adaptive β
    that shrinks (and the extrapolation restarts) whenever the objective goes up (Ang & Gillis,
    2019); the best iterate is returned. Without it the objective never increases. Stops when the
    best objective improved by less than ``tol`` (relative) per iteration over 5 iterations.
    Big products per iteration: ``Z Uᵀ`` and ``Vᵀ Z``.
    """
    k = u0.shape[0]
    zz = sqnorm(z)
    eye = torch.eye(k, device=z.device)
    u = project_rows_unit_ball(u0.clone())
    b = z @ u.t()
    g = u @ u.t()
    v0 = torch.linalg.solve(g + 1e-6 * float(g.diagonal().mean()) * eye, (b - lam).t()).t().clamp(min=0.0)
    v, _ = nonneg_lasso_cd(b, g, v0, lam, max_sweeps=2 * inner_sweeps, tol=0.0)
    c = v.t() @ z
    obj = objective(zz, b, g, v, lam)
    hist = [obj]
    best = (obj, u, v)
    best_hist = [obj]
    mu = np.zeros(k)
    beta, beta_bar = (0.5, 1.0) if extrapolate else (0.0, 0.0)
    v_hat, c_hat = v, c
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        u_new = _atom_step(z, v_hat, c_hat, u, mu, gen)
        b_new = z @ u_new.t()
        if beta > 0:
            u_hat = u_new + beta * (u_new - u)
            scale = 1.0 / u_hat.norm(dim=1).clamp(min=1.0)
            u_hat = u_hat * scale[:, None]
            b_hat = ((1.0 + beta) * b_new - beta * b) * scale[None, :]
        else:
            u_hat, b_hat = u_new, b_new
        g_hat = u_hat @ u_hat.t()
        v_new, _ = nonneg_lasso_cd(b_hat, g_hat, v_hat.clamp(min=0.0), lam, max_sweeps=inner_sweeps, tol=0.0)
        c_new = v_new.t() @ z
        obj_new = objective(zz, b_hat, g_hat, v_new, lam)
        hist.append(obj_new)
        if obj_new < best[0]:
            best = (obj_new, u_hat, v_new)
        best_hist.append(best[0])
        restart = False
        if extrapolate:
            if obj_new > obj:
                beta_bar, beta, restart = beta, beta / 1.5, True
            else:
                beta, beta_bar = min(beta_bar, 1.1 * beta), min(1.0, 1.05 * beta_bar)
        if beta > 0 and not restart:
            v_hat = v_new + beta * (v_new - v)
            c_hat = (1.0 + beta) * c_new - beta * c
        else:
            v_hat, c_hat = v_new, c_new
        u, b, v, c, obj = u_new, b_new, v_new, c_new, obj_new
        if it >= 5 and best_hist[-6] - best_hist[-1] <= 5 * tol * abs(best_hist[-1]):
            converged = True
            break
    return best[1], best[2], hist, it, converged
