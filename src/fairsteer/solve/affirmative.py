"""Affirmative action: one reference group stays, every other group moves.

:ref:`theory-4a`. With reference group r, pi~ = pi[r], nu_i = mu[r, i] and
Om_i = S[r, i]; group r keeps its law (G_r = I, t_r = 0) and every other group
a gets the affine map minimising

    f(G, t) = sum_i pi~_i KL(N(G mu[r,i] + t, G S[r,i] G^T) || N(mu[a,i], S[a,i])).

Both cases are solved on the per-group standardised model (:ref:`theory-4d`, see
:mod:`fairsteer.solve._frame`), so units and offsets of the features do not
change the answer. Shared covariance: the closed form (global minimum over all
invertible G), computed in the span of the standardised class means.
Per-class covariance: a multi-start trust-region Newton search over general G
(:func:`fairsteer.solve._maps.best_map`).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel
from fairsteer.solve._frame import Frame, SharedReduction
from fairsteer.solve._maps import (
    GTOL,
    MAX_ITER,
    best_map,
    cholesky,
    closed_form_standard,
    parallel_map,
    small_blas,
)
from fairsteer.solve.solution import (
    Solution,
    chain_rule_kl,
    solution_from_reduction,
    solution_from_standard,
)

__all__ = ["affirmative_action"]

Array = NDArray[np.float64]


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
    n_random_starts: int = 2,
    gtol: float = GTOL,
    max_iter: int = MAX_ITER,
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
    gtol : float
        Per-class covariance: a map has converged when the norm of the
        gradient in standardised (dimensionless) coordinates is at most
        ``gtol``.
    max_iter : int
        Per-class covariance: trust-region Newton iterations per start.

    Returns
    -------
    Solution
        ``method="affirmative"``, ``reference_group`` the kept group;
        ``diagnostics["converged"]`` says whether every map met ``gtol``.

    Notes
    -----
    Shared covariance (:ref:`theory-4a`): with :math:`\bar m = \sum_i \tilde\pi_i \mu_{\cdot,i}`,
    :math:`C = S_r + \sum_i \tilde\pi_i (\mu_{r,i}-\bar m_r)(\mu_{r,i}-\bar m_r)^T`,
    :math:`B = \sum_i \tilde\pi_i (\mu_{r,i}-\bar m_r)(\mu_{a,i}-\bar m_a)^T`,
    :math:`E = C^{-1/2} B S_a^{-1/2}` and the SVD :math:`E^T = U \operatorname{diag}(s) V^T`:

    .. math::

        g = U \operatorname{diag}\big((s + \sqrt{s^2 + 4})/2\big) V^T,\quad
        G = S_a^{1/2} g C^{-1/2},\quad t = \bar m_a - G \bar m_r .

    The total KL adds :math:`\sum_{a \ne r} w_a \mathrm{KL}(\pi_r \| \pi_a)` for the priors.
    """
    if reference is not None:
        candidates = [_reference_index(model, reference)]
    else:
        candidates = list(range(model.n_groups))
    if model.shared_covariance:
        return _shared(model, candidates)
    with small_blas(model.n_features):
        return _per_class(model, candidates, seed, n_random_starts, gtol, max_iter)


# ------------------------------------------------------------------ shared


def _shared_maps(red: SharedReduction, pi_all: Array, r: int) -> tuple[Array, Array, Array]:
    """Reduced maps g'_a, tau'_a from group r to every group, and the cell KLs."""
    m, K, q = red.y.shape
    pi = pi_all[r]
    nu = red.y[r]
    nbar = pi @ nu
    dn = nu - nbar
    eye = np.eye(q)
    C_chol = cholesky(eye + (dn.T * pi) @ dn) if q else np.zeros((0, 0))
    g = np.empty((m, q, q))
    tau = np.empty((m, q))
    cell_kl = np.zeros((m, K))
    for a in range(m):
        if a == r or q == 0:
            g[a], tau[a] = eye, np.zeros(q)
            if a == r:
                continue
        else:
            mu = red.y[a]
            mbar = pi @ mu
            g[a], *_ = closed_form_standard(pi, dn, C_chol, mu - mbar, eye)
            tau[a] = mbar - g[a] @ nbar
        cell_kl[a] = reduced_cell_kl(g[a], eye, nu, tau[a], red.y[a])
    return g, tau, cell_kl


def reduced_cell_kl(g: Array, Om: Array, nu: Array, tau: Array, y: Array) -> Array:
    """KL(N(g nu_i + tau, g Om g^T) || N(y_i, I)) for every class i (reduced space)."""
    q = g.shape[0]
    if q == 0:
        return np.zeros(len(y))
    Sig = g @ Om @ g.T
    _, logdet = np.linalg.slogdet(Sig)
    r = y - nu @ g.T - tau
    return 0.5 * (np.trace(Sig) + np.sum(r**2, axis=1) - q - logdet)


def _shared(model: GaussianModel, candidates: list[int]) -> Solution:
    red = SharedReduction.of(model)
    pi_all = model.class_priors
    w = model.group_weights
    results = {}
    for r in candidates:
        g, tau, cell_kl = _shared_maps(red, pi_all, r)
        total, prior_kl = chain_rule_kl(w, pi_all[r], pi_all, cell_kl)
        results[r] = (total, g, tau, cell_kl, prior_kl)
    r = min(results, key=lambda k: results[k][0])
    total, g, tau, cell_kl, prior_kl = results[r]
    diagnostics = {
        "solver": "closed form in the span of the standardised class means",
        "subspace_dim": red.q,
        "converged": True,
        "grad_norm": 0.0,
        "kl_by_reference": {str(model.groups[k]): v[0] for k, v in results.items()},
    }
    q = red.q
    return solution_from_reduction(
        model,
        red,
        "affirmative",
        pi_all[r],
        red.y[r],
        np.eye(q),
        g,
        tau,
        cell_kl,
        gauge=r,
        reference_group=model.groups[r],
        diagnostics=diagnostics,
    )


# --------------------------------------------------------------- per-class


def per_class_reference(
    pi: Array,
    mu: Array,
    S: Array,
    r: int,
    names: tuple,
    seed: int,
    n_random: int,
    gtol: float,
    max_iter: int,
) -> tuple[Array, Array, dict]:
    """Standardised maps g, tau from group r to every group (per-class), with diagnostics.

    ``pi`` are the reference priors, ``mu`` (m, K, d) and ``S`` (m, K, d, d) the
    standardised model.
    """
    m, _K, d = mu.shape
    rng = np.random.default_rng(seed)
    g = np.empty((m, d, d))
    tau = np.empty((m, d))
    per_group = {}
    for a in range(m):
        if a == r:
            g[a], tau[a] = np.eye(d), np.zeros(d)
            continue
        res = best_map(
            pi, mu[r], S[r], mu[a], S[a], rng=rng, n_random=n_random, gtol=gtol, max_iter=max_iter
        )
        g[a], tau[a] = res.G, res.t
        per_group[str(names[a])] = {
            "converged": res.converged,
            "grad_norm": res.grad_norm,
            "objective": res.value,
            "starts": res.starts,
            "iterations": res.iterations,
            "hessian_products": res.products,
            "start_values": res.start_values,
        }
    diagnostics = {
        "solver": "multi-start trust-region Newton over general G (standardised)",
        "converged": all(v["converged"] for v in per_group.values()),
        "grad_norm": max((v["grad_norm"] for v in per_group.values()), default=0.0),
        "gtol": gtol,
        "groups": per_group,
    }
    return g, tau, diagnostics


def _per_class(
    model: GaussianModel,
    candidates: list[int],
    seed: int,
    n_random: int,
    gtol: float,
    max_iter: int,
) -> Solution:
    frame = Frame.of(model)
    mu = frame.means(np.asarray(model.means))
    S = frame.covariances(np.asarray(model.covariances))
    best: Solution | None = None
    tried = {}

    def maps_from(r: int) -> tuple[Array, Array, dict]:
        pi = model.class_priors[r]
        return per_class_reference(pi, mu, S, r, model.groups, seed, n_random, gtol, max_iter)

    for r, (g, tau, diagnostics) in zip(
        candidates, parallel_map(maps_from, candidates), strict=True
    ):
        pi = model.class_priors[r]
        sol = solution_from_standard(
            model,
            frame,
            "affirmative",
            pi,
            mu[r],
            S[r],
            g,
            tau,
            standard=(mu, S),
            gauge=r,
            reference_group=model.groups[r],
            diagnostics=diagnostics,
        )
        tried[str(model.groups[r])] = sol.kl
        if best is None or sol.kl < best.kl:
            best = sol
    assert best is not None
    best.diagnostics["kl_by_reference"] = tried
    return best
