"""The map block of every solver: the best affine map from a reference to one group.

For a reference (pi~, nu_i, Om_i) and a group with parameters (mu_i, S_i) this
minimises (THEORY section 4a)

    f(G, t) = sum_i pi~_i KL(N(G nu_i + t, G Om_i G^T) || N(mu_i, S_i))

over invertible G and vectors t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from fairsteer.linalg import inv_sqrtm_spd, symmetrize

Array = NDArray[np.float64]


@dataclass(frozen=True)
class GroupFactors:
    """Factorisations of one group's covariances, computed once and reused."""

    means: Array  # (K, d)
    covs: Array  # (K, d, d), possibly a broadcast view when shared
    shared: bool
    precisions: Array  # (K, d, d) or (1, d, d) when shared
    root: Array  # S^1/2 of the (first) covariance
    inv_root: Array  # S^-1/2 of the (first) covariance
    logdets: Array  # (K,)

    @classmethod
    def of(cls, means: Array, covs: Array, shared: bool) -> GroupFactors:
        base = covs[:1] if shared else covs
        w, V = np.linalg.eigh(symmetrize(base))
        if np.any(w <= 0):
            from fairsteer.errors import InputError

            raise InputError("a covariance is not positive definite; use shrinkage")
        Vt = np.swapaxes(V, -1, -2)
        root = (V * np.sqrt(w)[..., None, :]) @ Vt
        inv_root = (V / np.sqrt(w)[..., None, :]) @ Vt
        precisions = (V / w[..., None, :]) @ Vt
        logdets = np.log(w).sum(axis=-1)
        if shared:
            logdets = np.repeat(logdets, means.shape[0])
        return cls(means, covs, shared, precisions, root[0], inv_root[0], logdets)


def closed_form(
    pi: Array, nu: Array, Om_pooled: Array, target: GroupFactors, S_pooled: Array | None = None
) -> tuple[Array, Array]:
    """Global minimiser of f for shared covariances (THEORY 4a closed form).

    ``Om_pooled`` is the reference's (shared) covariance; ``S_pooled`` the group's,
    default its shared covariance. Used with pooled covariances as a start for
    the per-class search.
    """
    mbar_r = pi @ nu
    mbar_a = pi @ target.means
    dr = nu - mbar_r
    da = target.means - mbar_a
    C = Om_pooled + (dr.T * pi) @ dr
    B = (dr.T * pi) @ da
    if S_pooled is None:
        S_root, S_inv_root = target.root, target.inv_root
    else:
        S_inv_root = inv_sqrtm_spd(S_pooled)
        S_root = np.linalg.inv(S_inv_root)
    C_inv_root = inv_sqrtm_spd(C)
    E = C_inv_root @ B @ S_inv_root
    U, s, Vt = np.linalg.svd(E.T)
    g = (U * ((s + np.sqrt(s**2 + 4.0)) / 2.0)) @ Vt
    G = S_root @ g @ C_inv_root
    t = mbar_a - G @ mbar_r
    return G, t


def map_objective(pi: Array, nu: Array, Om: Array, target: GroupFactors, G: Array, t: Array):
    """f(G, t) and its gradient (dG, dt); f = inf for a singular G.

    Costs O(K d^3): used by the per-class search (shared covariances use the
    closed form and never need it).

    With P_i = S_i^-1 and r_i = mu_i - G nu_i - t:
    grad_G = sum_i pi_i (P_i G Om_i - P_i r_i nu_i^T) - G^-T, grad_t = -sum_i pi_i P_i r_i.
    """
    sign, logabsdet = np.linalg.slogdet(G)
    if sign == 0 or not np.isfinite(logabsdet):
        return np.inf, None, None
    K, d = nu.shape
    P = target.precisions
    if target.shared:
        P = np.broadcast_to(P, (K, d, d))
    r = target.means - nu @ G.T - t  # (K, d)
    Pr = np.einsum("kde,ke->kd", P, r)
    GOm = G @ Om  # (K, d, d) via broadcasting
    PGOm = P @ GOm
    trace = np.einsum("kdd->k", PGOm @ np.swapaxes(np.broadcast_to(G, (K, d, d)), -1, -2))
    maha = np.einsum("kd,kd->k", r, Pr)
    logdet_om = np.linalg.slogdet(Om)[1]
    logdet_tilde = 2.0 * logabsdet + logdet_om
    kl = 0.5 * (trace + maha - d + target.logdets - logdet_tilde)
    value = float(pi @ kl)
    dG = np.einsum("k,kde->de", pi, PGOm) - np.einsum("k,kd,ke->de", pi, Pr, nu)
    dG -= np.linalg.inv(G).T
    dt = -(pi @ Pr)
    return value, dG, dt


def local_search(
    pi: Array,
    nu: Array,
    Om: Array,
    target: GroupFactors,
    G0: Array,
    t0: Array,
    max_iter: int = 500,
    gtol: float = 1e-10,
) -> tuple[Array, Array, float, int, float]:
    """Quasi-Newton (L-BFGS) descent on f from (G0, t0).

    Returns G, t, f, iterations and the final gradient norm.
    """
    d = nu.shape[1]

    def fun(z: Array) -> tuple[float, Array]:
        G, t = z[: d * d].reshape(d, d), z[d * d :]
        value, dG, dt = map_objective(pi, nu, Om, target, G, t)
        if dG is None:
            return 1e300, np.zeros_like(z)
        return value, np.concatenate([dG.ravel(), dt])

    z0 = np.concatenate([G0.ravel(), t0])
    res = minimize(
        fun,
        z0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-15, "maxcor": 30},
    )
    G, t = res.x[: d * d].reshape(d, d), res.x[d * d :]
    value, dG, dt = map_objective(pi, nu, Om, target, G, t)
    gnorm = float(np.sqrt(np.sum(dG**2) + np.sum(dt**2))) if dG is not None else np.inf
    return G, t, value, int(res.nit), gnorm


def best_map(
    pi: Array,
    nu: Array,
    Om: Array,
    target: GroupFactors,
    *,
    shared: bool,
    rng: np.random.Generator,
    n_random: int = 4,
    warm: tuple[Array, Array] | None = None,
) -> tuple[Array, Array, dict]:
    """argmin f over invertible G: closed form if shared, else a multi-start search.

    Per-class starts: the closed form with pooled (prior-weighted) covariances,
    the closed form with each class's own covariances, each of those reflected
    along its weakest direction (the other component of GL(d)), ``warm`` if
    given, and ``n_random`` seeded perturbations of the best closed form.
    Every start is refined by L-BFGS; the best local minimum is kept.
    """
    if shared:
        G, t = closed_form(pi, nu, Om[0], target)
        return G, t, {"starts": 1, "iterations": 0, "grad_norm": 0.0}
    K, d = nu.shape
    Om_pool = np.einsum("k,kde->de", pi, Om)
    S_pool = np.einsum("k,kde->de", pi, target.covs)
    starts = [closed_form(pi, nu, Om_pool, target, S_pool)]
    for i in range(K):
        starts.append(closed_form(pi, nu, Om[i], target, target.covs[i]))
    reflected = []
    for G, _ in starts[: 1 + K]:
        U, s, Vt = np.linalg.svd(G)
        flip = np.eye(d)
        flip[-1, -1] = -1.0
        Gr = U @ np.diag(s) @ flip @ Vt
        reflected.append((Gr, pi @ target.means - Gr @ (pi @ nu)))
    starts += reflected
    if warm is not None:
        starts.append(warm)
    G0 = starts[0][0]
    scale = np.linalg.norm(G0) / np.sqrt(d)
    for _ in range(n_random):
        Gp = G0 + 0.5 * scale * rng.standard_normal((d, d))
        starts.append((Gp, pi @ target.means - Gp @ (pi @ nu)))
    best = None
    values = []
    total_it = 0
    for G0, t0 in starts:
        G, t, value, nit, gnorm = local_search(pi, nu, Om, target, G0, t0)
        values.append(value)
        total_it += nit
        if best is None or value < best[2]:
            best = (G, t, value, gnorm)
    G, t, value, gnorm = best
    info = {
        "starts": len(starts),
        "iterations": total_it,
        "grad_norm": gnorm,
        "objective": value,
        "start_values": values,
    }
    return G, t, info
