"""All subgroups: every group may move towards a common reference.

THEORY section 4b. The program min KL(D~ || D) over ideal Gaussian D~ is
non-convex; block-coordinate descent with a closed-form (or globally searched)
block at every step never increases the objective:

1. maps: for each group a, (G_a, t_a) = the section-4a map from the reference
   (nu, Om) with priors pi~ to group a;
2. reference, per class i: H_i = sum_a w_a G_a^T S[a,i]^-1 G_a,
   Om_i = H_i^-1, nu_i = H_i^-1 sum_a w_a G_a^T S[a,i]^-1 (mu[a,i] - t_a);
3. priors: pi~_i proportional to exp(sum_a w_a (ln pi[a,i] - KL(F~[a,i] || F[a,i]))).

The reference is only defined up to an affine map; after every sweep it is
fixed by G_0 = I, t_0 = 0 (group 0's map is the identity).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from fairsteer.linalg import kl_gaussian_cells, symmetrize
from fairsteer.model import GaussianModel
from fairsteer.solve._maps import GroupFactors, best_map, local_search
from fairsteer.solve.affirmative import affirmative_action
from fairsteer.solve.solution import Solution

__all__ = ["all_subgroups"]

Array = NDArray[np.float64]


class _State:
    """Reference (pi, nu, Om) and maps (G, t) of one descent run."""

    def __init__(self, pi: Array, nu: Array, Om: Array, G: Array, t: Array) -> None:
        self.pi, self.nu, self.Om, self.G, self.t = pi, nu, Om, G, t

    def copy(self) -> _State:
        return _State(
            self.pi.copy(), self.nu.copy(), np.array(self.Om), self.G.copy(), self.t.copy()
        )


def _cell_kl(model: GaussianModel, s: _State, shared: bool) -> Array:
    m, K, d = model.means.shape
    means = s.nu @ np.swapaxes(s.G, -1, -2) + s.t[:, None, :]
    if shared:
        covs = np.broadcast_to(
            symmetrize(s.G @ s.Om[0] @ np.swapaxes(s.G, -1, -2))[:, None], (m, K, d, d)
        )
    else:
        covs = symmetrize(s.G[:, None] @ s.Om[None] @ np.swapaxes(s.G, -1, -2)[:, None])
    return kl_gaussian_cells(means, covs, model.means, model.covariances)


def _total(model: GaussianModel, s: _State, cell_kl: Array) -> float:
    logpi = np.log(model.class_priors)
    prior_kl = np.sum(s.pi * (np.log(s.pi) - logpi), axis=1)
    return float(model.group_weights @ (prior_kl + cell_kl @ s.pi))


def _update_reference(
    model: GaussianModel, s: _State, factors: list[GroupFactors], shared: bool
) -> None:
    w = model.group_weights
    m, K, d = model.means.shape
    if shared:
        H = sum(w[a] * s.G[a].T @ factors[a].precisions[0] @ s.G[a] for a in range(m))
        rhs = sum(
            w[a] * (model.means[a] - s.t[a]) @ (factors[a].precisions[0] @ s.G[a]) for a in range(m)
        )  # (K, d): row i = sum_a w_a (G_a^T P_a (mu_ai - t_a))^T
        H = symmetrize(H)
        s.nu = np.linalg.solve(H, rhs.T).T
        Om = symmetrize(np.linalg.inv(H)) * w.sum()
        s.Om = np.broadcast_to(Om, (K, d, d))
        return
    H = np.zeros((K, d, d))
    rhs = np.zeros((K, d))
    for a in range(m):
        GtP = s.G[a].T @ factors[a].precisions  # (K, d, d)
        H += w[a] * GtP @ s.G[a]
        rhs += w[a] * np.einsum("kde,ke->kd", GtP, model.means[a] - s.t[a])
    H = symmetrize(H)
    s.nu = np.linalg.solve(H, rhs[..., None])[..., 0]
    s.Om = symmetrize(np.linalg.inv(H)) * w.sum()


def _update_priors(model: GaussianModel, s: _State, cell_kl: Array) -> None:
    w = model.group_weights
    score = (w[:, None] * (np.log(model.class_priors) - cell_kl)).sum(axis=0) / w.sum()
    s.pi = np.exp(score - logsumexp(score))


def _fix_gauge(s: _State) -> None:
    G0, t0 = s.G[0].copy(), s.t[0].copy()
    G0_inv = np.linalg.inv(G0)
    s.nu = s.nu @ G0.T + t0
    K, d = s.nu.shape
    if s.Om.strides[0] == 0:
        s.Om = np.broadcast_to(symmetrize(G0 @ s.Om[0] @ G0.T), (K, d, d))
    else:
        s.Om = symmetrize(G0 @ s.Om @ G0.T)
    s.G = s.G @ G0_inv
    s.t = s.t - s.G @ t0
    s.G[0], s.t[0] = np.eye(d), np.zeros(d)


def _descend(
    model: GaussianModel,
    s: _State,
    factors: list[GroupFactors],
    shared: bool,
    rng: np.random.Generator,
    max_iter: int,
    tol: float,
) -> tuple[_State, float, dict]:
    history = []
    value = _total(model, s, _cell_kl(model, s, shared))
    history.append(value)
    decrease = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        # 1. maps (closed form if shared; warm-started local search otherwise,
        #    a full multi-start search on the first sweep).
        for a in range(model.n_groups):
            if shared:
                s.G[a], s.t[a], _ = best_map(s.pi, s.nu, s.Om, factors[a], shared=True, rng=rng)
            elif it == 1:
                s.G[a], s.t[a], _ = best_map(
                    s.pi,
                    s.nu,
                    s.Om,
                    factors[a],
                    shared=False,
                    rng=rng,
                    n_random=2,
                    warm=(s.G[a].copy(), s.t[a].copy()),
                )
            else:
                s.G[a], s.t[a], *_ = local_search(s.pi, s.nu, s.Om, factors[a], s.G[a], s.t[a])
        # 2. reference, 3. priors
        _update_reference(model, s, factors, shared)
        _update_priors(model, s, _cell_kl(model, s, shared))
        _fix_gauge(s)
        new = _total(model, s, _cell_kl(model, s, shared))
        decrease = value - new
        value = new
        history.append(value)
        if decrease <= tol * (1.0 + abs(value)):
            break
    return s, value, {"iterations": it, "last_decrease": float(decrease), "history": history}


def all_subgroups(
    model: GaussianModel,
    *,
    seed: int = 0,
    n_random_starts: int = 2,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> Solution:
    """Nearest ideal model when every group may move (THEORY 4b).

    Parameters
    ----------
    model : GaussianModel
    seed : int
        Seed of the random starts.
    n_random_starts : int
        Extra starts: the best affirmative start with its reference means and
        priors perturbed.
    max_iter : int
        Maximum block-coordinate sweeps per start.
    tol : float
        Stop a run when a sweep lowers the KL by less than ``tol * (1 + KL)``.

    Returns
    -------
    Solution
        ``method="all-subgroups"``. Never worse than the best affirmative
        solution: the descent starts from every group's affirmative solution
        and each block step is a minimiser over its block.
    """
    shared = model.shared_covariance
    m, K, d = model.means.shape
    rng = np.random.default_rng(seed)
    factors = [GroupFactors.of(model.means[a], model.covariances[a], shared) for a in range(m)]
    affirmative = [affirmative_action(model, reference=g, seed=seed) for g in model.groups]
    best_affirmative = min(affirmative, key=lambda sol: sol.kl)
    starts: list[_State] = []
    for sol in affirmative:
        st = _State(
            sol.reference_priors.copy(),
            sol.reference_means.copy(),
            np.array(sol.reference_covariances),
            sol.G.copy(),
            sol.t.copy(),
        )
        _fix_gauge(st)
        starts.append(st)
    base = starts[int(np.argmin([sol.kl for sol in affirmative]))]
    spread = np.sqrt(np.mean(np.diagonal(base.Om, axis1=-2, axis2=-1)))
    for _ in range(n_random_starts):
        st = base.copy()
        st.nu = st.nu + 0.3 * spread * rng.standard_normal(st.nu.shape)
        st.pi = 0.5 * st.pi + 0.5 * rng.dirichlet(np.ones(K))
        starts.append(st)
    runs = []
    best = None
    for st in starts:
        if shared:
            st.Om = np.broadcast_to(st.Om[0], (K, d, d))
        final, value, info = _descend(model, st, factors, shared, rng, max_iter, tol)
        runs.append({"kl": value, **{k: v for k, v in info.items() if k != "history"}})
        if best is None or value < best[1]:
            best = (final, value, info)
    final, value, info = best
    diagnostics = {
        "solver": "block-coordinate descent",
        "starts": len(starts),
        "iterations": info["iterations"],
        "last_decrease": info["last_decrease"],
        "runs": runs,
        "best_affirmative_kl": best_affirmative.kl,
    }
    if not shared:
        grads = [
            local_search(
                final.pi, final.nu, final.Om, factors[a], final.G[a], final.t[a], max_iter=0
            )[4]
            for a in range(1, m)
        ]
        diagnostics["grad_norm"] = float(max(grads, default=0.0))
    solution = Solution.from_maps(
        model,
        "all-subgroups",
        final.pi,
        final.nu,
        final.Om,
        final.G,
        final.t,
        diagnostics=diagnostics,
    )
    if solution.kl > best_affirmative.kl:
        # Cannot happen in exact arithmetic (every start is an affirmative solution
        # and no block step increases the KL); guard against round-off.
        diagnostics["fell_back_to_affirmative"] = True
        return Solution.from_maps(
            model,
            "all-subgroups",
            best_affirmative.reference_priors,
            best_affirmative.reference_means,
            best_affirmative.reference_covariances,
            best_affirmative.G,
            best_affirmative.t,
            diagnostics=diagnostics,
        )
    return solution
