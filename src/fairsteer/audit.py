"""Ideality audit: how far is a model from ideal (:ref:`theory-2` and :ref:`theory-3`).

For a model we report the supremum over costs of the DP, EO and equalized-odds
gaps of its group-aware Bayes-optimal classifier h_c, the gaps at cost 1/2, and
the affine-equivalence residuals of section 3 (prior spread, Gram residual,
and the KL to the nearest affinely-equivalent model).

How the gaps are computed
-------------------------
- Binary, shared covariance: closed form. Given Y the log-likelihood ratio of
  group a is N(+-delta_a^2/2, delta_a^2) (delta_a = Mahalanobis distance of
  the class means), h_c predicts 1 iff LLR >= logit(c) - logit(pi[a,1]), so
  every rate is a normal CDF. The supremum over c is found on a grid of 4001
  points in logit(c) in [-40, 40] refined by a bounded Brent search: accurate
  to ~1e-9.
- Otherwise: Monte Carlo, ``n_samples`` draws per cell. Binary: the supremum
  over ALL thresholds is exact on the sample; by the DKW inequality each
  cell's empirical rate curve is within eps = sqrt(ln(2/alpha)/(2n)) of the
  truth uniformly in c (alpha = 1e-3 per cell), so each reported gap is within
  2 eps. Multi-class: the family of class-weighted 0-1 losses
  C[i, j] = w_i 1{i != j}, i.e. h_w(x) = argmax_j w_j P(Y=j | x, a), over the
  uniform weights, the K weights (1 + 4 e_k)/(K + 4) and ``n_costs`` seeded
  Dirichlet(1) draws; the maximum is a lower bound on the supremum over all
  costs, each rate within a Hoeffding bound with a union bound over the family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, logit, logsumexp, ndtr

from fairsteer.bayes import log_joint
from fairsteer.errors import InputError
from fairsteer.model import GaussianModel

__all__ = ["IDEAL_KL_TOL", "Audit", "audit"]

Array = NDArray[np.float64]
IDEAL_KL_TOL = 1e-8  # solvers reach ~1e-12 on equivalent models; data noise is >> 1e-8
ALPHA = 1e-3


@dataclass(frozen=True)
class Audit:
    """Distance of a model from ideal.

    Attributes
    ----------
    is_ideal : bool
        True when an affinely-equivalent ideal model is within
        ``IDEAL_KL_TOL`` nats (:ref:`theory-3`'s sufficient condition; then every gap
        is zero for every cost).
    method : {"closed-form", "monte-carlo"}
        How the gaps were computed.
    accuracy : float
        Bound on the absolute error of each reported gap.
    dp_gap, eo_gap, equalized_odds_gap : float
        Supremum over costs (binary) or over the documented cost family
        (multi-class) of the Bayes classifier's gaps.
    dp_cost, eo_cost, equalized_odds_cost : float or list
        Cost c (binary) or class weights (multi-class) attaining each supremum.
    dp_gap_half, eo_gap_half, equalized_odds_gap_half : float
        Gaps at cost 1/2 (0-1 loss).
    bayes_error : float
        Error rate of the Bayes classifier at cost 1/2 (0-1 loss).
    prior_residual : float
        max over groups a, b and classes i of ``|pi[a,i] - pi[b,i]|``.
    gram_residual : float or None
        Shared covariance: max_{a,b} ||D_a^T S_a^-1 D_a - D_b^T S_b^-1 D_b||_F
        relative to the largest Gram norm (0 iff the feature parts are affinely
        equivalent). None for per-class covariances (the test is then only
        necessary).
    nearest_ideal_kl : float
        KL (nats) to the nearest affinely-equivalent model keeping one group
        (affirmative action with the best reference): 0 iff ideal by :ref:`theory-3`.
    nearest_ideal_converged : bool
        Whether the solver behind ``nearest_ideal_kl`` met its convergence
        tolerance (see :func:`fairsteer.solve.affirmative_action`).
    """

    is_ideal: bool
    method: str
    accuracy: float
    dp_gap: float
    eo_gap: float
    equalized_odds_gap: float
    dp_cost: Any
    eo_cost: Any
    equalized_odds_cost: Any
    dp_gap_half: float
    eo_gap_half: float
    equalized_odds_gap_half: float
    bayes_error: float
    prior_residual: float
    gram_residual: float | None
    nearest_ideal_kl: float
    nearest_ideal_converged: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()
        }

    def summary(self) -> str:
        """Human-readable report (printed by ``fairsteer audit``)."""
        verdict = "IDEAL" if self.is_ideal else "NOT ideal"
        lines = [
            f"verdict: {verdict} (nearest affinely-equivalent model at KL = "
            f"{self.nearest_ideal_kl:.4g} nats"
            + ("" if self.nearest_ideal_converged else "; solver did NOT converge")
            + ")",
            f"Bayes-optimal classifier gaps ({self.method}, accurate to +-{self.accuracy:.2g}):",
            f"  {'':22s}{'sup over costs':>16s}{'at cost 1/2':>14s}",
            f"  {'demographic parity':22s}{self.dp_gap:16.4f}{self.dp_gap_half:14.4f}",
            f"  {'equal opportunity':22s}{self.eo_gap:16.4f}{self.eo_gap_half:14.4f}",
            f"  {'equalized odds':22s}{self.equalized_odds_gap:16.4f}"
            f"{self.equalized_odds_gap_half:14.4f}",
            f"Bayes error at cost 1/2 = {self.bayes_error:.4f}",
            f"prior residual max|pi[a]-pi[b]| = {self.prior_residual:.4g}",
        ]
        if self.gram_residual is not None:
            lines.append(f"Gram residual (shared covariance) = {self.gram_residual:.4g}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _spread(x: Array, axis: int = 0) -> Array:
    return x.max(axis=axis) - x.min(axis=axis)


def binary_rates(model: GaussianModel, costs: ArrayLike) -> tuple[Array, Array]:
    """Exact TPR and FPR of h_c per group for a binary shared-covariance model.

    Given Y the log-likelihood ratio of group a is N(+-delta_a^2/2, delta_a^2);
    h_c predicts 1 iff LLR >= logit(c) - logit(pi[a,1]) (:ref:`theory-3`).

    Returns
    -------
    tpr, fpr : ndarray of shape (len(costs), m)
    """
    if model.n_classes != 2 or not model.shared_covariance:
        raise InputError("closed-form rates need a binary model with shared covariance")
    d = model.means[:, 1] - model.means[:, 0]
    P = np.linalg.inv(model.covariances[:, 0])
    delta = np.sqrt(np.einsum("ad,ade,ae->a", d, P, d))
    pi1 = model.class_priors[:, 1]
    c = np.atleast_1d(np.asarray(costs, dtype=np.float64))
    with np.errstate(divide="ignore"):
        u = logit(c)  # +-inf at c = 1, 0: predict never / always
    tau = u[:, None] - (np.log(pi1) - np.log1p(-pi1))[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (tau <= 0) * 1.0
        # ndtr(-z) is the standard normal's survival function at z
        tpr = np.where(delta > 0, ndtr(-(tau - delta**2 / 2) / delta), step)
        fpr = np.where(delta > 0, ndtr(-(tau + delta**2 / 2) / delta), step)
    return tpr, fpr


def binary_gap_curves(model: GaussianModel, costs: ArrayLike) -> dict[str, Array]:
    """DP, EO and equalized-odds gaps of h_c at every cost (closed form, binary shared)."""
    tpr, fpr = binary_rates(model, costs)
    pi1 = model.class_priors[:, 1]
    sel = pi1 * tpr + (1 - pi1) * fpr
    w = model.group_weights
    error = (w * (pi1 * (1 - tpr) + (1 - pi1) * fpr)).sum(axis=1)
    return {
        "dp": _spread(sel, axis=1),
        "eo": _spread(tpr, axis=1),
        "equalized_odds": np.maximum(_spread(tpr, axis=1), _spread(fpr, axis=1)),
        "error": error,
    }


def _binary_closed_form(model: GaussianModel) -> dict[str, Any]:
    from scipy.optimize import minimize_scalar  # 0.3 s to import: only when used

    def gaps(u: float) -> Array:
        curves = binary_gap_curves(model, [expit(u)])
        return np.array([curves["dp"][0], curves["eo"][0], curves["equalized_odds"][0]])

    grid = np.linspace(-40.0, 40.0, 4001)
    curves = binary_gap_curves(model, expit(grid))
    values = np.stack([curves["dp"], curves["eo"], curves["equalized_odds"]], axis=1)
    out: dict[str, Any] = {}
    for k, name in enumerate(("dp", "eo", "equalized_odds")):
        j = int(np.argmax(values[:, k]))
        lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)]
        res = minimize_scalar(
            lambda u, k=k: -gaps(u)[k],
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12},
        )
        best_u, best = (res.x, -res.fun) if -res.fun >= values[j, k] else (grid[j], values[j, k])
        out[name] = float(best)
        out[name + "_cost"] = float(expit(best_u))
        out[name + "_half"] = float(gaps(0.0)[k])
    out["error"] = float(binary_gap_curves(model, [0.5])["error"][0])
    out["method"], out["accuracy"] = "closed-form", 1e-9
    return out


def _sample_posteriors(
    model: GaussianModel, n: int, rng: np.random.Generator
) -> tuple[Array, NDArray[np.intp]]:
    m, K, d = model.means.shape
    L = np.linalg.cholesky(model.covariances)
    Z = np.empty((m, K, n, d))
    for a in range(m):
        for i in range(K):
            Z[a, i] = model.means[a, i] + rng.standard_normal((n, d)) @ L[a, i].T
    codes = np.repeat(np.arange(m), K * n)
    lj = log_joint(model, Z.reshape(-1, d), codes)
    post = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    return post.reshape(m, K, n, K), codes


def _binary_monte_carlo(model: GaussianModel, n: int, rng: np.random.Generator) -> dict[str, Any]:
    post, _ = _sample_posteriors(model, n, rng)
    score = post[..., 1]  # (m, K, n)
    m = model.n_groups
    cand = np.unique(np.concatenate([score.ravel(), [0.5, np.inf]]))
    srt = np.sort(score, axis=-1)
    # rate[a, i, c] = P(score >= cand[c] | a, i), exact on the sample
    rate = 1.0 - np.stack(
        [[np.searchsorted(srt[a, i], cand, side="left") / n for i in range(2)] for a in range(m)]
    )
    pi1 = model.class_priors[:, 1][:, None]
    sel = pi1 * rate[:, 1] + (1 - pi1) * rate[:, 0]
    tpr, fpr = rate[:, 1], rate[:, 0]
    curves = {
        "dp": _spread(sel),
        "eo": _spread(tpr),
        "equalized_odds": np.maximum(_spread(tpr), _spread(fpr)),
    }
    half = int(np.searchsorted(cand, 0.5))
    out: dict[str, Any] = {}
    for name, curve in curves.items():
        j = int(np.argmax(curve))
        out[name] = float(curve[j])
        out[name + "_cost"] = float(min(cand[j], 1.0))
        out[name + "_half"] = float(curve[half])
    miss = pi1[:, 0] * (1 - tpr[:, half]) + (1 - pi1[:, 0]) * fpr[:, half]
    out["error"] = float(model.group_weights @ miss)
    eps = np.sqrt(np.log(2 / ALPHA) / (2 * n))
    out["method"], out["accuracy"] = "monte-carlo", float(2 * eps)
    return out


def _multiclass_monte_carlo(
    model: GaussianModel, n: int, n_costs: int, rng: np.random.Generator
) -> dict[str, Any]:
    m, K, _ = model.means.shape
    post, _ = _sample_posteriors(model, n, rng)
    weights = [np.full(K, 1.0 / K)]
    weights += [(1 + 4 * np.eye(K)[k]) / (K + 4) for k in range(K)]
    weights += list(rng.dirichlet(np.ones(K), size=n_costs))
    pi = model.class_priors
    best: dict[str, Any] = {"dp": -1.0, "eo": -1.0, "equalized_odds": -1.0}
    for idx, w in enumerate(weights):
        pred = np.argmax(post * w, axis=-1)  # (m, K, n)
        R = np.stack([(pred == j).mean(axis=-1) for j in range(K)], axis=-1)  # (m, K, K)
        sel = np.einsum("ai,aij->aj", pi, R)
        values = {
            "dp": float(_spread(sel).max()),
            "eo": float(_spread(np.einsum("aii->ai", R)).max()),
            "equalized_odds": float(_spread(R).max()),
        }
        if idx == 0:
            best["error"] = float(
                model.group_weights @ np.sum(pi * (1 - np.einsum("aii->ai", R)), 1)
            )
        for name, v in values.items():
            if idx == 0:
                best[name + "_half"] = v
            if v > best[name]:
                best[name], best[name + "_cost"] = v, [float(x) for x in w]
    n_rates = len(weights) * m * K * K
    eps = np.sqrt(np.log(2 * n_rates / ALPHA) / (2 * n))
    best["method"], best["accuracy"] = "monte-carlo", float(2 * eps)
    return best


def _gram_residual(model: GaussianModel) -> float | None:
    if not model.shared_covariance or model.n_groups < 2:
        return None if model.n_groups >= 2 else 0.0
    D = model.means[:, 1:] - model.means[:, :1]  # (m, K-1, d)
    P = np.linalg.inv(model.covariances[:, 0])
    gram = D @ P @ np.swapaxes(D, -1, -2)
    diff = max(np.linalg.norm(gram[a] - gram[b]) for a in range(len(gram)) for b in range(a))
    return float(diff / max(np.linalg.norm(gram, axis=(1, 2)).max(), 1e-300))


def audit(
    model: GaussianModel,
    *,
    n_samples: int = 100_000,
    n_costs: int = 64,
    seed: int = 0,
    nearest: Any = None,
) -> Audit:
    """Audit a model: Bayes-classifier fairness gaps and distance from ideal.

    Parameters
    ----------
    model : GaussianModel
    n_samples : int
        Monte-Carlo draws per (group, class) cell where no closed form exists.
    n_costs : int
        Random class-weight vectors of the multi-class cost family.
    seed : int
        Seed of the Monte-Carlo draws.
    nearest : Solution, optional
        An affirmative-action solution of this very model with the reference
        chosen by the solver (``solve(model)``), reused instead of solving
        again; anything else is ignored and the model is solved.

    Returns
    -------
    Audit
        See the module docstring for how each number is computed and its accuracy.
    """
    from fairsteer.solve import affirmative_action

    pi = model.class_priors
    prior_residual = float(_spread(pi).max())
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    if model.n_classes == 2 and model.shared_covariance:
        gaps = _binary_closed_form(model)
    elif model.n_classes == 2:
        gaps = _binary_monte_carlo(model, n_samples, rng)
    else:
        gaps = _multiclass_monte_carlo(model, n_samples, n_costs, rng)
        notes.append(
            "multi-class gaps are the maximum over the class-weighted 0-1 cost family: "
            "a lower bound on the supremum over all cost matrices"
        )
    if model.n_groups == 1:
        notes.append("a single group is ideal by definition")
    if not _reusable(nearest, model):
        nearest = affirmative_action(model, seed=seed)
    converged = bool(nearest.diagnostics.get("converged", True))
    if not converged:
        notes.append(
            "the nearest-ideal solver stopped before its tolerance: the KL is an upper bound"
        )
    kl = max(nearest.kl, 0.0)
    return Audit(
        is_ideal=bool(kl <= IDEAL_KL_TOL),
        method=gaps["method"],
        accuracy=gaps["accuracy"],
        dp_gap=gaps["dp"],
        eo_gap=gaps["eo"],
        equalized_odds_gap=gaps["equalized_odds"],
        dp_cost=gaps["dp_cost"],
        eo_cost=gaps["eo_cost"],
        equalized_odds_cost=gaps["equalized_odds_cost"],
        dp_gap_half=gaps["dp_half"],
        eo_gap_half=gaps["eo_half"],
        equalized_odds_gap_half=gaps["equalized_odds_half"],
        bayes_error=gaps["error"],
        prior_residual=prior_residual,
        gram_residual=_gram_residual(model),
        nearest_ideal_kl=kl,
        nearest_ideal_converged=converged,
        notes=notes,
    )


def _reusable(solution: Any, model: GaussianModel) -> bool:
    """True for an affirmative solution of ``model`` whose reference the solver chose."""
    from fairsteer.solve import Solution

    if not isinstance(solution, Solution) or solution.method != "affirmative":
        return False
    tried = solution.diagnostics.get("kl_by_reference", {})
    if len(tried) != model.n_groups or solution.ideal.groups != model.groups:
        return False
    if solution.ideal.means.shape != model.means.shape:
        return False
    # Affirmative action keeps the reference group's cells bit for bit.
    r = list(model.groups).index(solution.reference_group)
    return bool(
        np.array_equal(solution.ideal.means[r], model.means[r])
        and np.array_equal(solution.ideal.covariances[r], model.covariances[r])
        and np.allclose(solution.ideal.group_weights, model.group_weights, rtol=1e-12)
    )
