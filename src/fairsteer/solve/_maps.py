"""The map block of every solver: the best affine map from a reference to one group.

For a reference (pi~, nu_i, Om_i) and a group with parameters (mu_i, S_i) this
minimises (THEORY section 4a)

    f(G, t) = sum_i pi~_i KL(N(G nu_i + t, G Om_i G^T) || N(mu_i, S_i))

over invertible G and vectors t.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular
from scipy.optimize import minimize

from fairsteer.errors import InputError
from fairsteer.linalg import symmetrize

Array = NDArray[np.float64]


class GroupFactors:
    """Cholesky factors of one group's covariances, computed once and reused.

    ``chol`` has shape (K, d, d), or (1, d, d) for a shared covariance;
    ``precisions`` (the inverses) are computed on first use.
    """

    def __init__(self, means: Array, covs: Array, shared: bool) -> None:
        self.means, self.covs, self.shared = means, covs, shared
        try:
            self.chol = np.linalg.cholesky(symmetrize(covs[:1] if shared else covs))
        except np.linalg.LinAlgError:
            raise InputError("a covariance is not positive definite; use shrinkage") from None
        logdets = 2.0 * np.log(np.diagonal(self.chol, axis1=-2, axis2=-1)).sum(axis=-1)
        self.logdets = np.repeat(logdets, means.shape[0]) if shared else logdets
        self._precisions: Array | None = None

    @classmethod
    def of(cls, means: Array, covs: Array, shared: bool) -> GroupFactors:
        return cls(means, covs, shared)

    @property
    def precisions(self) -> Array:
        if self._precisions is None:
            eye = np.eye(self.chol.shape[-1])
            inv_chol = np.stack([solve_triangular(L, eye, lower=True) for L in self.chol])
            self._precisions = np.swapaxes(inv_chol, -1, -2) @ inv_chol
        return self._precisions


def closed_form(
    pi: Array,
    nu: Array,
    Om_pooled: Array,
    target: GroupFactors,
    S_pooled: Array | None = None,
    *,
    value_only: bool = False,
) -> tuple[Array, Array] | float:
    """Global minimiser of f for shared covariances (THEORY 4a closed form).

    ``Om_pooled`` is the reference's (shared) covariance; ``S_pooled`` the group's,
    default its shared covariance. Used with pooled covariances as a start for
    the per-class search.

    THEORY writes the solution with symmetric square roots; any factors
    C = L L^T and S = R R^T give the same G: with G = R g L^-1 the objective
    becomes 1/2 ||g||_F^2 - tr(g E) - ln|det g| + const, E = L^-1 B R^-T, so
    Cholesky factors (an order of magnitude cheaper than eigh) suffice.

    With ``value_only`` the minimum value of f is returned instead, from the
    singular values s of E alone (no singular vectors): with
    sigma = (s + sqrt(s^2 + 4)) / 2,

        min f = 1/2 [sum(sigma^2 - 2 sigma s - 2 ln sigma)
                     + sum_i pi_i (mu_i - mbar)^T S^-1 (mu_i - mbar) - d
                     + ln det C - ln det Om].
    """
    mbar_r = pi @ nu
    mbar_a = pi @ target.means
    dr = nu - mbar_r
    da = target.means - mbar_a
    C = Om_pooled + (dr.T * pi) @ dr
    R = target.chol[0] if S_pooled is None else np.linalg.cholesky(symmetrize(S_pooled))
    try:
        L = np.linalg.cholesky(symmetrize(C))
    except np.linalg.LinAlgError:
        raise InputError("a reference covariance is not positive definite") from None
    # E = P Q^T with P = L^-1 Dr^T diag(sqrt pi), Q = R^-1 Da^T diag(sqrt pi):
    # rank <= K, so the SVD of E comes from thin QRs and a K x K SVD.
    root_pi = np.sqrt(pi)[:, None]
    P = solve_triangular(L, (dr * root_pi).T, lower=True)
    Q = solve_triangular(R, (da * root_pi).T, lower=True)
    d, K = P.shape
    if d > K:
        Qp, Rp = np.linalg.qr(P)
        Qq, Rq = np.linalg.qr(Q)
        Um, s, Vmt = np.linalg.svd(Rq @ Rp.T)  # E^T = Qq (Rq Rp^T) Qp^T
        U, V = Qq @ Um, Qp @ Vmt.T
    else:
        U, s, Vt = np.linalg.svd(Q @ P.T)
        V = Vt.T
    sigma = (s + np.sqrt(s**2 + 4.0)) / 2.0
    if value_only:
        logdet_C = 2.0 * np.log(np.diagonal(L)).sum()
        logdet_Om = np.linalg.slogdet(Om_pooled)[1]
        inner = np.sum(sigma**2 - 2.0 * sigma * s - 2.0 * np.log(sigma))
        return 0.5 * float(inner + np.sum(Q**2) - d + logdet_C - logdet_Om)
    g = (U * sigma) @ V.T
    if U.shape[1] < d:
        # Zero singular values: sigma = 1, and any orthogonal map between the
        # complements of span(V) and span(U) attains the minimum. The ideal
        # model is the same for every choice (the complement never meets the
        # class-mean directions); we take the pairing of complete-QR bases.
        U_perp = np.linalg.qr(U, mode="complete")[0][:, U.shape[1] :]
        V_perp = np.linalg.qr(V, mode="complete")[0][:, V.shape[1] :]
        g += U_perp @ V_perp.T
    G = solve_triangular(L, (R @ g).T, lower=True, trans="T").T
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
    """Quasi-Newton (L-BFGS) descent on f from (G0, t0), in whitened coordinates.

    The search runs over (g, tau) with G = R g W^-1 and t = R tau, where R R^T
    and W W^T are Cholesky factorisations of the prior-pooled covariances of
    the target and of the reference: for well-matched laws g is close to
    orthogonal whatever the feature scales, which keeps L-BFGS well
    conditioned. The gradient transforms as grad_g = R^T grad_G W^-T,
    grad_tau = R^T grad_t. Returns G, t, f, iterations and the final gradient
    norm (in the original coordinates).
    """
    d = nu.shape[1]
    R = np.linalg.cholesky(symmetrize(np.einsum("k,kde->de", pi, target.covs)))
    W = np.linalg.cholesky(symmetrize(np.einsum("k,kde->de", pi, Om)))
    W_inv = solve_triangular(W, np.eye(d), lower=True)

    def unpack(z: Array) -> tuple[Array, Array]:
        return R @ z[: d * d].reshape(d, d) @ W_inv, R @ z[d * d :]

    def fun(z: Array) -> tuple[float, Array]:
        G, t = unpack(z)
        value, dG, dt = map_objective(pi, nu, Om, target, G, t)
        if dG is None:
            return 1e300, np.zeros_like(z)
        return value, np.concatenate([(R.T @ dG @ W_inv.T).ravel(), R.T @ dt])

    g0 = solve_triangular(R, G0 @ W, lower=True)
    z0 = np.concatenate([g0.ravel(), solve_triangular(R, t0, lower=True)])
    res = minimize(
        fun,
        z0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-15, "maxcor": 30},
    )
    G, t = unpack(res.x)
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
