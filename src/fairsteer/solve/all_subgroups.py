"""All subgroups: every group may move towards a common reference.

:ref:`theory-4b`. The program min KL(D~ || D) over ideal Gaussian D~ is
non-convex; block-coordinate descent with an exact minimiser (closed form) or
a Newton descent step (per-class maps) for every block never increases the
objective:

1. maps: for each group a, (G_a, t_a) = the section-4a map from the reference
   (nu, Om) with priors pi~ to group a;
2. reference, per class i: H_i = sum_a w_a G_a^T S[a,i]^-1 G_a,
   Om_i = H_i^-1, nu_i = H_i^-1 sum_a w_a G_a^T S[a,i]^-1 (mu[a,i] - t_a);
3. priors: pi~_i proportional to exp(sum_a w_a (ln pi[a,i] - KL(F~[a,i] || F[a,i]))).

The reference block does not depend on pi~, so after steps 2 and 3 both are
exact minimisers given the maps: the state is stationary for the whole
program iff every map block's gradient vanishes. That gradient norm (in
standardised, dimensionless coordinates) is the convergence certificate
reported in the diagnostics.

Everything runs on the per-group standardised model (:ref:`theory-4d`); shared
covariance runs in the span of the standardised class means (dimension
q <= m (K - 1)), so a sweep costs O(m K q^2) instead of O(m d^3). The
reference is only defined up to an affine map: it is fixed by g_0 = I.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel
from fairsteer.solve._frame import Frame, SharedReduction
from fairsteer.solve._maps import (
    GTOL,
    MAX_ITER,
    REFINE,
    SAME_BASIN,
    MapBlock,
    cholesky,
    closed_form_standard,
    parallel_map,
    small_blas,
)
from fairsteer.solve.affirmative import _shared_maps, per_class_reference, reduced_cell_kl
from fairsteer.solve.solution import (
    Solution,
    chain_rule_kl,
    solution_from_reduction,
    solution_from_standard,
)

__all__ = ["all_subgroups"]

Array = NDArray[np.float64]

# Per-class descent: every start gets this many sweeps before the best are refined.
SCREEN_SWEEPS = 3
# A map block is solved to this fraction of its gradient norm in each sweep (about one
# Newton step: exact block optima would be moved again by the next reference update).
BLOCK_FORCING = 0.5


class _State:
    """Reference (pi, nu, Om) and maps (g, tau) of one descent run (standardised)."""

    def __init__(self, pi: Array, nu: Array, Om: Array, g: Array, tau: Array) -> None:
        self.pi, self.nu, self.Om, self.g, self.tau = pi, nu, Om, g, tau

    def copy(self) -> _State:
        return _State(
            self.pi.copy(), self.nu.copy(), self.Om.copy(), self.g.copy(), self.tau.copy()
        )

    def fix_gauge(self) -> None:
        """Re-express the reference in group 0's coordinates (g_0 = I, tau_0 = 0)."""
        g0, t0 = self.g[0].copy(), self.tau[0].copy()
        self.nu = self.nu @ g0.T + t0
        self.Om = 0.5 * (g0 @ self.Om @ g0.T + np.swapaxes(g0 @ self.Om @ g0.T, -1, -2))
        self.g = self.g @ np.linalg.inv(g0)
        self.tau = self.tau - np.einsum("ade,e->ad", self.g, t0)
        d = g0.shape[0]
        self.g[0], self.tau[0] = np.eye(d), np.zeros(d)


class _Problem:
    """The standardised model: means mu (m, K, d), covariances S (m, K, d, d) and weights."""

    def __init__(self, model: GaussianModel, mu: Array, S: Array) -> None:
        self.mu, self.S = mu, S
        self.w = model.group_weights
        self.pi_all = model.class_priors
        self.logpi = np.log(self.pi_all)
        chol = cholesky(S)
        inv = np.linalg.inv(chol)
        self.P = np.swapaxes(inv, -1, -2) @ inv
        self.logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)

    def cell_kl(self, s: _State) -> Array:
        _m, K, d = self.mu.shape
        Om = np.broadcast_to(s.Om, (K, d, d))
        Sig = s.g[:, None] @ Om[None] @ np.swapaxes(s.g, -1, -2)[:, None]
        r = self.mu - s.nu @ np.swapaxes(s.g, -1, -2) - s.tau[:, None]
        trace = np.einsum("akde,aked->ak", self.P, Sig)
        maha = np.einsum("akd,akde,ake->ak", r, self.P, r)
        logdet_sig = np.linalg.slogdet(Sig)[1]
        return 0.5 * (trace + maha - d + self.logdet - logdet_sig)

    def total(self, s: _State, cell_kl: Array) -> float:
        return chain_rule_kl(self.w, s.pi, self.pi_all, cell_kl)[0]

    def update_reference(self, s: _State) -> None:
        gt = np.swapaxes(s.g, -1, -2)[:, None]  # (m, 1, d, d)
        GtP = gt @ self.P  # (m, K, d, d)
        H = np.einsum("a,akde->kde", self.w, GtP @ s.g[:, None])
        rhs = np.einsum("a,akde,ake->kd", self.w, GtP, self.mu - s.tau[:, None])
        H = 0.5 * (H + np.swapaxes(H, -1, -2))
        s.nu = np.linalg.solve(H, rhs[..., None])[..., 0]
        s.Om = np.linalg.inv(H) * self.w.sum()
        s.Om = 0.5 * (s.Om + np.swapaxes(s.Om, -1, -2))

    def update_priors(self, s: _State, cell_kl: Array) -> None:
        score = (self.w[:, None] * (self.logpi - cell_kl)).sum(axis=0) / self.w.sum()
        s.pi = np.exp(score - logsumexp(score))


def _perturbed(base: _State, rng: np.random.Generator, hold_priors: bool = False) -> _State:
    """A random start near ``base`` that does not depend on the coordinates.

    The priors are mixed with a Dirichlet draw and each reference mean moves
    by a random combination of the centred reference means,
    nu_i + 0.3 sum_j c_ij (nu_j - nubar): both are covariant under the
    per-group affine maps of :ref:`theory-4d`, so equivalent models get equivalent
    starts (a Gaussian kick in standardised coordinates would not).
    """
    st = base.copy()
    K = st.pi.size
    centred = st.nu - st.pi @ st.nu
    st.nu = st.nu + 0.3 * rng.standard_normal((K, K)) @ centred
    mix = rng.dirichlet(np.ones(K))
    if not hold_priors:
        st.pi = 0.5 * st.pi + 0.5 * mix
    return st


def _best_of_starts(
    starts: list[_State],
    values: list[float],
    n_random: int,
    rng: np.random.Generator,
    descend: Callable[[_State], tuple[_State, float, dict, Any]],
    hold_priors: bool = False,
) -> tuple[_State, Any, dict]:
    """Run ``descend`` from every start and keep the lowest KL.

    ``starts`` are the affirmative solutions (KLs ``values``); ``n_random``
    covariant perturbations of the best of them are added. ``descend`` returns
    the final state, its KL, its run diagnostics and one extra result, which is
    returned for the best run with the diagnostics common to both solvers.
    """
    base = starts[int(np.argmin(values))]
    starts = starts + [_perturbed(base, rng, hold_priors) for _ in range(n_random)]
    runs = []
    best = None
    for st in starts:
        final, value, info, extra = descend(st)
        runs.append({"kl": value, **info})
        if best is None or value < best[1]:
            best = (final, value, info, extra)
    assert best is not None
    final, _, info, extra = best
    common = {
        "starts": len(starts),
        "converged": info["converged"],
        "grad_norm": info["grad_norm"],
        "sweeps": info["sweeps"],
        "runs": runs,
        "best_affirmative_kl": float(min(values)),
    }
    return final, extra, common


def _descend_per_class(
    prob: _Problem,
    s: _State,
    max_iter: int,
    gtol: float,
    hold_priors: bool = False,
    *,
    started: bool = False,
    stop: Callable[[_State, float], bool] | None = None,
) -> tuple[_State, float, dict]:
    """Block-coordinate sweeps from ``s`` until the map-block gradient is <= gtol.

    Each map block is solved only to a fraction ``BLOCK_FORCING`` of its
    current gradient norm (an inexact block step still lowers the objective,
    and the exact block optimum would be moved again by the next reference
    update); the stopping test is the exact certificate, measured on fresh
    blocks after the reference and prior updates. ``started``: ``s`` already
    comes from a sweep (its reference and priors are exact minimisers), so the
    certificate may hold before any sweep. ``stop(s, value)`` is asked after
    every sweep and ends the run early when it returns True.
    """
    m = prob.mu.shape[0]
    grad = np.inf
    sweeps = 0
    newton_iterations = 0
    for sweeps in range(max_iter + 1):
        blocks = [MapBlock(s.pi, s.nu, s.Om, prob.mu[a], prob.S[a]) for a in range(m)]
        gs = [blocks[a].to_standard(s.g[a]) for a in range(m)]
        grads = [blocks[a].value_grad(gs[a])[1] for a in range(m)]
        norms = [float(np.linalg.norm(gr)) if gr is not None else np.inf for gr in grads]
        grad = max(norms)
        # The certificate needs the reference and prior blocks at their exact
        # minimisers, which holds after the first sweep (not at a start).
        if ((sweeps > 0 or started) and grad <= gtol) or sweeps == max_iter:
            break
        if sweeps > 0 and stop is not None and stop(s, prob.total(s, prob.cell_kl(s))):
            break

        def solve_block(a: int, blocks=blocks, gs=gs, norms=norms) -> tuple[Array, int]:
            # Newton from the current map: every step of the descent is then
            # covariant under per-group affine maps (docs/theory.md section 4d), so equivalent
            # models follow the same path to the same stationary point.
            block_tol = max(BLOCK_FORCING * norms[a], 0.5 * gtol)
            g, _, _, nit = blocks[a].newton(gs[a], gtol=block_tol)
            return g, nit

        # The map blocks of different groups are independent given the reference.
        for a, (g, nit) in enumerate(parallel_map(solve_block, list(range(m)))):
            s.g[a], s.tau[a] = blocks[a].to_original(g)
            newton_iterations += nit
        prob.update_reference(s)
        if not hold_priors:
            prob.update_priors(s, prob.cell_kl(s))
        s.fix_gauge()
    value = prob.total(s, prob.cell_kl(s))
    info = {
        "sweeps": sweeps,
        "newton_iterations": newton_iterations,
        "grad_norm": float(grad),
        "converged": bool(grad <= gtol),
    }
    return s, value, info


def _same_point(s: _State, value: float, ref: _State, ref_value: float) -> bool:
    """Whether a run has reached a converged run's stationary point (gauge g_0 = I).

    Within ``SAME_BASIN`` relative distance of every map and not below its
    KL, the descent can only end at that same point (see
    :func:`fairsteer.solve._maps._same_basin`); finishing would repeat work.
    """
    return value >= ref_value and bool(
        np.linalg.norm(s.g - ref.g) <= SAME_BASIN * np.linalg.norm(ref.g)
    )


def _best_of_per_class(
    prob: _Problem,
    starts: list[_State],
    values: list[float],
    n_random: int,
    rng: np.random.Generator,
    max_iter: int,
    gtol: float,
    hold_priors: bool,
) -> tuple[_State, dict]:
    """Screen every start with a few sweeps, then refine the best ``REFINE`` runs.

    Starts: the affirmative solutions (KLs ``values``) and ``n_random``
    covariant perturbations of the best of them. Every start gets
    ``SCREEN_SWEEPS`` sweeps; the runs with the lowest KL are then continued
    to the certificate (a later one stops once it reaches an earlier
    converged run's point). Returns the best state and the diagnostics
    shared with the shared-covariance solver.
    """
    base = starts[int(np.argmin(values))]
    starts = starts + [_perturbed(base, rng, hold_priors) for _ in range(n_random)]
    runs = []
    for st in starts:
        final, value, info = _descend_per_class(
            prob, st, min(SCREEN_SWEEPS, max_iter), gtol, hold_priors
        )
        runs.append((value, final, info))
    order = sorted(range(len(runs)), key=lambda k: runs[k][0])
    done: list[tuple[float, _State]] = []
    for k in order[:REFINE]:
        value, st, info = runs[k]
        if not info["converged"] and info["sweeps"] < max_iter:
            minima = [(v, ref) for v, ref in done]

            def stop(s: _State, v: float, minima=minima) -> bool:
                return any(_same_point(s, v, ref, rv) for rv, ref in minima)

            st, value, more = _descend_per_class(
                prob, st, max_iter - info["sweeps"], gtol, hold_priors, started=True, stop=stop
            )
            info = {
                **more,
                "sweeps": info["sweeps"] + more["sweeps"],
                "newton_iterations": info["newton_iterations"] + more["newton_iterations"],
            }
            runs[k] = (value, st, info)
        if info["converged"]:
            done.append((value, st))
    best = min(order[:REFINE], key=lambda k: (runs[k][0], runs[k][2]["grad_norm"]))
    value, final, info = runs[best]
    common = {
        "starts": len(starts),
        "converged": info["converged"],
        "grad_norm": info["grad_norm"],
        "sweeps": info["sweeps"],
        "runs": [{"kl": v, **i} for v, _, i in runs],
        "best_affirmative_kl": float(min(values)),
    }
    return final, common


def _per_class(
    model: GaussianModel,
    seed: int,
    n_random: int,
    max_iter: int,
    gtol: float,
    hold_priors: bool = False,
) -> Solution:
    frame = Frame.of(model)
    mu = frame.means(np.asarray(model.means))
    S = frame.covariances(np.asarray(model.covariances))
    prob = _Problem(model, mu, S)
    m, _K, _d = mu.shape
    rng = np.random.default_rng(seed)
    starts = []

    def maps_from(r: int) -> tuple[Array, Array, dict]:
        pi = model.class_priors[r]
        return per_class_reference(pi, mu, S, r, model.groups, seed, 2, GTOL, MAX_ITER)

    for r, (g, tau, _) in enumerate(parallel_map(maps_from, list(range(m)))):
        pi = model.class_priors[r]
        st = _State(pi.copy(), mu[r].copy(), S[r].copy(), g, tau)
        st.fix_gauge()
        starts.append(st)
    values = [prob.total(st, prob.cell_kl(st)) for st in starts]
    final, common = _best_of_per_class(
        prob, starts, values, n_random, rng, max_iter, gtol, hold_priors
    )
    diagnostics = {
        "solver": "block-coordinate descent with trust-region Newton map blocks (standardised)",
        **common,
        "gtol": gtol,
    }
    return solution_from_standard(
        model,
        frame,
        "all-subgroups",
        final.pi,
        final.nu,
        final.Om,
        final.g,
        final.tau,
        standard=(mu, S),
        gauge=0,
        diagnostics=diagnostics,
    )


# ------------------------------------------------------------------ shared


def _shared_sweep(
    red: SharedReduction, s: _State, w: Array, logpi: Array, hold_priors: bool = False
) -> Array:
    """One block-coordinate sweep in the reduced space; returns the cell KLs."""
    m, _K, q = red.y.shape
    eye = np.eye(q)
    nbar = s.pi @ s.nu
    dn = s.nu - nbar
    C_chol = cholesky(s.Om + (dn.T * s.pi) @ dn)
    for a in range(m):
        mbar = s.pi @ red.y[a]
        s.g[a], *_ = closed_form_standard(s.pi, dn, C_chol, red.y[a] - mbar, eye)
        s.tau[a] = mbar - s.g[a] @ nbar
    H = 0.5 * np.einsum("a,aed,aef->df", w, s.g, s.g)
    H = H + H.T
    rhs = np.einsum("a,aed,ake->kd", w, s.g, red.y - s.tau[:, None])
    s.nu = np.linalg.solve(H, rhs.T).T
    Om = np.linalg.inv(H) * w.sum()
    s.Om = 0.5 * (Om + Om.T)
    cell_kl = np.stack([reduced_cell_kl(s.g[a], s.Om, s.nu, s.tau[a], red.y[a]) for a in range(m)])
    if not hold_priors:
        score = (w[:, None] * (logpi - cell_kl)).sum(axis=0) / w.sum()
        s.pi = np.exp(score - logsumexp(score))
    s.fix_gauge()
    return np.stack([reduced_cell_kl(s.g[a], s.Om, s.nu, s.tau[a], red.y[a]) for a in range(m)])


def _shared_grad(red: SharedReduction, s: _State) -> float:
    """max_a of the map block's standardised gradient norm (0 at a stationary point)."""
    m, K, q = red.y.shape
    eye = np.broadcast_to(np.eye(q), (K, q, q))
    Om = np.broadcast_to(s.Om, (K, q, q))
    out = 0.0
    for a in range(m):
        block = MapBlock(s.pi, s.nu, Om, red.y[a], eye)
        grad = block.value_grad(block.to_standard(s.g[a]))[1]
        out = max(out, float(np.linalg.norm(grad)) if grad is not None else np.inf)
    return out


def _shared(
    model: GaussianModel,
    seed: int,
    n_random: int,
    max_iter: int,
    gtol: float,
    hold_priors: bool = False,
) -> Solution:
    red = SharedReduction.of(model)
    m, K, q = red.y.shape
    w = model.group_weights
    pi_all = model.class_priors
    logpi = np.log(pi_all)
    rng = np.random.default_rng(seed)
    starts = []
    values = []
    for r in range(m):
        g, tau, cell_kl = _shared_maps(red, pi_all, r)
        st = _State(pi_all[r].copy(), red.y[r].copy(), np.eye(q), g, tau)
        st.fix_gauge()
        starts.append(st)
        values.append(chain_rule_kl(w, pi_all[r], pi_all, cell_kl)[0])

    def descend(st: _State) -> tuple[_State, float, dict, Array]:
        sweeps = 0
        grad = np.inf
        cell_kl = np.zeros((m, K))
        if q == 0:
            # Every group's class means coincide after standardising: only priors move.
            if not hold_priors:
                score = (w[:, None] * logpi).sum(axis=0) / w.sum()
                st.pi = np.exp(score - logsumexp(score))
            grad = 0.0
        else:
            for sweep in range(1, max_iter + 1):
                sweeps = sweep
                cell_kl = _shared_sweep(red, st, w, logpi, hold_priors)
                grad = _shared_grad(red, st)
                if grad <= gtol:
                    break
        value = chain_rule_kl(w, st.pi, pi_all, cell_kl)[0]
        info = {"sweeps": sweeps, "grad_norm": grad, "converged": bool(grad <= gtol)}
        return st, value, info, cell_kl

    final, cell_kl, common = _best_of_starts(starts, values, n_random, rng, descend, hold_priors)
    diagnostics = {
        "solver": "block-coordinate descent in the span of the standardised class means",
        "subspace_dim": q,
        **common,
        "gtol": gtol,
    }
    return solution_from_reduction(
        model,
        red,
        "all-subgroups",
        final.pi,
        final.nu,
        final.Om,
        final.g,
        final.tau,
        cell_kl,
        gauge=0,
        diagnostics=diagnostics,
    )


def all_subgroups(
    model: GaussianModel,
    *,
    seed: int = 0,
    n_random_starts: int = 2,
    max_iter: int = 1000,
    gtol: float = GTOL,
    hold_priors: bool = False,
) -> Solution:
    """Nearest ideal model when every group may move (:ref:`theory-4b`).

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
    gtol : float
        A run has converged when the largest map-block gradient norm (in
        standardised, dimensionless coordinates; the reference and prior
        blocks are exact minimisers) is at most ``gtol``.
    hold_priors : bool
        Keep the common class priors pi~ fixed at the model's class priors,
        which must then be the same in every group (step 3 is skipped, so the
        priors only weight the cells). Used by the categorical-context solver
        (:mod:`fairsteer.context`), whose prior block lives outside.

    Returns
    -------
    Solution
        ``method="all-subgroups"``; ``diagnostics["converged"]`` is the
        stationarity certificate of the best run. Never worse than the best
        affirmative solution: the descent starts from every group's
        affirmative solution, each block step lowers the objective, and
        (per-class) the runs refined after screening include the one that
        is lowest after the screening sweeps.
    """
    if hold_priors and float(np.ptp(model.class_priors, axis=0).max()) > 1e-12:
        # 1e-12: priors equal by construction differ by round-off (~1e-16) only
        raise InputError(
            "hold_priors=True needs the same class priors in every group; "
            "give the model equal class priors or use hold_priors=False"
        )
    if model.shared_covariance:
        return _shared(model, seed, n_random_starts, max_iter, gtol, hold_priors)
    with small_blas(model.n_features):
        return _per_class(model, seed, n_random_starts, max_iter, gtol, hold_priors)
