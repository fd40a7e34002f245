"""Affirmative action: one reference group stays, every other group moves.

THEORY section 4a. With reference group r, pi~ = pi[r], nu_i = mu[r, i] and
Om_i = S[r, i]; group r keeps its law (G_r = I, t_r = 0) and every other group
a gets the affine map minimising

    f(G, t) = sum_i pi~_i KL(N(G mu[r,i] + t, G S[r,i] G^T) || N(mu[a,i], S[a,i])).

Shared covariance: the closed form (global minimum over all invertible G).
Per-class covariance: a multi-start quasi-Newton search over general G.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel
from fairsteer.solve._maps import GroupFactors, best_map, closed_form
from fairsteer.solve.solution import Solution

__all__ = ["affirmative_action"]


def _reference_index(model: GaussianModel, reference: Hashable) -> int:
    names = [str(g) for g in model.groups]
    if str(reference) not in names:
        raise InputError(
            f"unknown reference group {reference!r}; the model's groups are {list(model.groups)}"
        )
    return names.index(str(reference))


def affirmative_action(
    model: GaussianModel,
    *,
    reference: Hashable | None = None,
    seed: int = 0,
    n_random_starts: int = 4,
) -> Solution:
    r"""Nearest ideal model that keeps one reference group in place.

    Parameters
    ----------
    model : GaussianModel
    reference : group name, optional
        The group that stays. Default: the group whose choice gives the
        smallest total KL (every group is tried).
    seed : int
        Seed of the random extra starts of the per-class search.
    n_random_starts : int
        Random perturbed starts per group (per-class covariance only).

    Returns
    -------
    Solution
        ``method="affirmative"``, ``reference_group`` the kept group.

    Notes
    -----
    Shared covariance (THEORY 4a): with :math:`\bar m = \sum_i \tilde\pi_i \mu_{\cdot,i}`,
    :math:`C = S_r + \sum_i \tilde\pi_i (\mu_{r,i}-\bar m_r)(\mu_{r,i}-\bar m_r)^T`,
    :math:`B = \sum_i \tilde\pi_i (\mu_{r,i}-\bar m_r)(\mu_{a,i}-\bar m_a)^T`,
    :math:`E = C^{-1/2} B S_a^{-1/2}` and the SVD :math:`E^T = U \operatorname{diag}(s) V^T`:

    .. math::

        g = U \operatorname{diag}\big((s + \sqrt{s^2 + 4})/2\big) V^T,\quad
        G = S_a^{1/2} g C^{-1/2},\quad t = \bar m_a - G \bar m_r .

    The total KL adds :math:`\sum_{a \ne r} w_a \mathrm{KL}(\pi_r \| \pi_a)` for the priors.
    """
    shared = model.shared_covariance
    factors = [
        GroupFactors.of(model.means[a], model.covariances[a], shared) for a in range(model.n_groups)
    ]
    if reference is not None:
        candidates = [_reference_index(model, reference)]
    elif shared:
        # The minimum KL of every reference from singular values alone; only the
        # best reference's maps are then built.
        values = {r: _shared_kl(model, r, factors) for r in range(model.n_groups)}
        candidates = [min(values, key=values.get)]
    else:
        candidates = list(range(model.n_groups))
    best: Solution | None = None
    tried = {}
    for r in candidates:
        sol = _solve_for_reference(model, r, factors, shared, seed, n_random_starts)
        tried[str(model.groups[r])] = sol.kl
        if best is None or sol.kl < best.kl:
            best = sol
    assert best is not None
    if reference is None and shared:
        tried = {str(model.groups[r]): v for r, v in values.items()}
    best.diagnostics["kl_by_reference"] = tried
    return best


def _shared_kl(model: GaussianModel, r: int, factors: list[GroupFactors]) -> float:
    """Total KL of the affirmative solution with reference r (shared covariance)."""
    pi_r = model.class_priors[r]
    total = 0.0
    for a in range(model.n_groups):
        if a == r:
            continue
        pi_a = model.class_priors[a]
        prior_kl = float(np.sum(pi_r * (np.log(pi_r) - np.log(pi_a))))
        f = closed_form(pi_r, model.means[r], model.covariances[r, 0], factors[a], value_only=True)
        total += model.group_weights[a] * (prior_kl + f)
    return total


def _solve_for_reference(
    model: GaussianModel,
    r: int,
    factors: list[GroupFactors],
    shared: bool,
    seed: int,
    n_random_starts: int,
) -> Solution:
    m, _, d = model.means.shape
    pi = model.class_priors[r]
    nu = model.means[r]
    Om = model.covariances[r]
    G = np.empty((m, d, d))
    t = np.empty((m, d))
    per_group = {}
    rng = np.random.default_rng(seed)
    for a in range(m):
        if a == r:
            G[a], t[a] = np.eye(d), np.zeros(d)
            continue
        G[a], t[a], info = best_map(
            pi, nu, Om, factors[a], shared=shared, rng=rng, n_random=n_random_starts
        )
        per_group[str(model.groups[a])] = info
    grad = max((i["grad_norm"] for i in per_group.values()), default=0.0)
    diagnostics = {
        "solver": "closed-form" if shared else "multi-start L-BFGS over general G",
        "grad_norm": grad,
        "groups": per_group,
    }
    return Solution.from_maps(
        model,
        "affirmative",
        pi,
        nu,
        Om,
        G,
        t,
        reference_group=model.groups[r],
        diagnostics=diagnostics,
    )
