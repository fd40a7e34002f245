"""Finite-sample audit: how sure is a verdict (:ref:`theory-10`).

A model fitted on n rows of an ideal law is not exactly ideal, and the gaps
of :func:`fairsteer.audit` are estimates. This module reports them with
bootstrap intervals and tests "the true law is ideal" by a parametric
bootstrap.

Intervals (stratified nonparametric bootstrap)
----------------------------------------------
The rows of every (group, class) cell are resampled with replacement, so every
cell keeps its size; the model is refitted with the same options
(:func:`fairsteer.model_from_stats`) and audited. The interval at level
``level`` is the percentile interval of the B replicates: the
``(1 - level)/2`` and ``(1 + level)/2`` quantiles (Efron and Tibshirani 1993,
*An Introduction to the Bootstrap*, ch. 13). It is conditional on the cell
sizes: it carries the variability of the features within each cell, not that
of the class proportions within a group. For a true value on the boundary (a
gap or KL of exactly 0) the percentile interval sits above 0; the question
"is it 0?" is the test's.

Test of ideality (parametric bootstrap)
---------------------------------------
Statistic: T = the nearest-ideal KL of the fitted model (affirmative action
with the best reference, as in :func:`fairsteer.audit`). Null: the law is
ideal; the null model is the nearest ideal model D0 of the fitted one. Each of
the B null data sets keeps the size n_a of every group (P~(A) = P(A)), draws
its class counts from Multinomial(n_a, pi~) (the null's common class priors;
keeping the observed class counts would freeze the prior part of T at its
observed value, so the test could not see unequal priors), and the rows of
cell (a, i) from D0's cell law. The p-value (Davison and Hinkley 1997,
*Bootstrap Methods and their Application*, eq. 4.11) is

    p = (1 + #{b : T_b >= T_obs}) / (B + 1).

Rows are never drawn: for n rows of N(mu, S) the mean and centred scatter are
sufficient and independent, mean ~ N(mu, S / n) and scatter ~ Wishart(n - 1, S)
(Anderson 2003, *An Introduction to Multivariate Statistical Analysis*,
Theorem 3.3.2), drawn by the Bartlett decomposition (Anderson, Theorem 7.2.1).
A shared covariance pools the scatters of a group in the refit
(:meth:`fairsteer.CellStats.covariances`), exactly as for rows. Log-normal
features: the statistics are on the log scale, where the model is Gaussian.
Cost per null replicate: O(m K d^3) for the draw plus one solve, independent
of the number of rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.audit import Audit, audit
from fairsteer.errors import InputError
from fairsteer.fit import fit_model, model_from_stats
from fairsteer.model import GaussianModel
from fairsteer.options import parse_shrinkage, shrinkage_argument
from fairsteer.stats import CellStats, cell_statistics_from_codes, encode_labels

__all__ = ["DataAudit", "audit_data", "sample_cell_statistics"]

Array = NDArray[np.float64]

# Quantities that get an interval: the Audit fields of the same names.
INTERVAL_FIELDS = (
    "dp_gap",
    "eo_gap",
    "equalized_odds_gap",
    "dp_gap_half",
    "eo_gap_half",
    "equalized_odds_gap_half",
    "nearest_ideal_kl",
)
_LABELS = {
    "dp_gap": "DP gap, sup over costs",
    "eo_gap": "EO gap, sup over costs",
    "equalized_odds_gap": "equalized odds, sup",
    "dp_gap_half": "DP gap at cost 1/2",
    "eo_gap_half": "EO gap at cost 1/2",
    "equalized_odds_gap_half": "equalized odds at 1/2",
    "nearest_ideal_kl": "nearest-ideal KL (nats)",
}
# A cell of fewer rows has too few distinct resamples for a percentile
# interval to mean anything (4 rows: 35 distinct multisets).
MIN_CELL_ROWS = 5
# Class-count draws of one null data set before giving up: a cell that gets
# MIN_CELL_ROWS rows with probability below ~1/1000 makes the null meaningless.
MAX_REDRAWS = 1000
# The two bootstrap parts, in the order they run and report.
_PARTS = ("intervals", "test")


@dataclass(frozen=True)
class DataAudit:
    """An audit of data with bootstrap intervals and a test of ideality.

    Attributes
    ----------
    audit : Audit
        The audit of the model fitted on all rows (the point estimates).
    level : float
        Level of the percentile intervals.
    n_bootstrap : int
        Replicates asked for (each of the intervals and the test).
    seed : int
    options : dict
        The fit options (family, covariance, shrinkage) used for every refit.
    counts : list of list of int
        Rows per (group, class) cell.
    intervals : dict of str to (float, float)
        Percentile interval of every quantity in ``INTERVAL_FIELDS``; empty
        when the intervals were not asked for.
    p_value : float or None
        ``(1 + #{T_b >= T_obs}) / (B + 1)`` of the test of ideality; None when
        the test was not asked for.
    null_kl : ndarray
        The B null replicates of the statistic T (nats).
    n_failed : dict of str to int
        Replicates whose refit was rejected (e.g. a singular resampled
        covariance), per part ("intervals", "test"); they are left out.
    n_unconverged : int
        Replicates (both parts) whose nearest-ideal solver did not converge.
    seconds_per_replicate : dict of str to float
        Wall time per replicate of each part on this machine.
    notes : list of str
    """

    audit: Audit
    level: float
    n_bootstrap: int
    seed: int
    options: dict[str, Any]
    counts: list[list[int]]
    intervals: dict[str, tuple[float, float]]
    p_value: float | None
    null_kl: Array = field(repr=False)
    n_failed: dict[str, int]
    n_unconverged: int
    seconds_per_replicate: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the null replicates summarised by quantiles)."""
        null = self.null_kl
        quantiles = (
            {str(q): float(np.quantile(null, q)) for q in (0.5, 0.9, 0.95, 0.99)}
            if null.size
            else {}
        )
        return {
            "audit": self.audit.to_dict(),
            "level": self.level,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "options": dict(self.options),
            "counts": self.counts,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "p_value": self.p_value,
            "null_kl_quantiles": quantiles,
            "n_failed": dict(self.n_failed),
            "n_unconverged": self.n_unconverged,
            "seconds_per_replicate": dict(self.seconds_per_replicate),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """Human-readable report (printed by ``fairsteer audit DATA``)."""
        a = self.audit
        opts = self.options
        n = sum(map(sum, self.counts))
        lines = [
            f"fitted on {n} rows ({_family_text(opts['family'])} family, "
            f"{opts['covariance']} covariance"
            + (f", shrinkage {opts['shrinkage']}" if opts["shrinkage"] is not None else "")
            + f"); seed {self.seed}",
            a.summary(),
        ]
        pct = f"{100 * self.level:g}%"
        if self.intervals:
            ok = self.n_bootstrap - self.n_failed.get("intervals", 0)
            lines += [
                "",
                f"{pct} bootstrap intervals ({ok} resamples of the rows within each "
                "(group, class) cell, refitted and audited):",
                f"  {'':26s}{'estimate':>10s}   {pct + ' interval':>20s}",
            ]
            for name, (lo, hi) in self.intervals.items():
                est = getattr(a, name)
                lines.append(f"  {_LABELS[name]:26s}{est:10.4f}   [{lo:8.4f}, {hi:8.4f}]")
            lines.append(
                f"  meaning: a {pct} confidence interval for the value of the true law "
                "(percentile bootstrap, conditional on the cell sizes); a value that is truly 0 "
                "still gets an interval above 0, so whether it is 0 is the test's question"
            )
        if self.p_value is not None:
            ok = self.n_bootstrap - self.n_failed.get("test", 0)
            q95 = float(np.quantile(self.null_kl, 0.95)) if self.null_kl.size else float("nan")
            lines += [
                "",
                f'test of "the true law is ideal" (parametric bootstrap: {ok} data sets '
                "with the same group sizes drawn from the nearest ideal model, refitted):",
                f"  observed nearest-ideal KL = {a.nearest_ideal_kl:.4g} nats; under the null "
                f"its 95% quantile is {q95:.4g} nats",
                f"  p = {self.p_value:.3g}: {_verdict(self.p_value)}",
            ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _family_text(family: Any) -> str:
    """The family names of a ``Families.to_json()`` value (parameters left out)."""
    if isinstance(family, str):
        return family
    if isinstance(family, dict):
        return str(family.get("name", family))
    names = [_family_text(f) for f in family]
    return names[0] if len(set(names)) == 1 else "per-feature (" + ", ".join(names) + ")"


def _verdict(p: float) -> str:
    if p <= 0.01:
        return "strong evidence that the true law is not ideal"
    if p <= 0.05:
        return "evidence that the true law is not ideal"
    if p <= 0.1:
        return "weak evidence that the true law is not ideal"
    return (
        "no evidence that the true law is not ideal (the gaps are within sampling noise of "
        "an ideal law; this does not prove that it is ideal)"
    )


# ------------------------------------------------------------ sampling


def _wishart(df: int, chol: Array, rng: np.random.Generator) -> Array:
    r"""One draw of Wishart(df, S) with ``chol`` the Cholesky factor of S.

    For :math:`df \ge d` the Bartlett decomposition (Anderson 2003, Theorem
    7.2.1): :math:`W = L T T^T L^T` with T lower triangular,
    :math:`T_{jj}^2 \sim \chi^2_{df - j}` (j = 0..d-1) and
    :math:`T_{jl} \sim N(0, 1)` below the diagonal; O(d^3). For
    :math:`df < d` (a singular Wishart, e.g. a small cell of a shared
    covariance) the definition :math:`W = L Z^T Z L^T` with df rows
    :math:`Z \sim N(0, I_d)`, O(df d^2).
    """
    d = chol.shape[0]
    if df >= d:
        T = np.tril(rng.standard_normal((d, d)), -1)
        T[np.diag_indices(d)] = np.sqrt(rng.chisquare(df - np.arange(d)))
        A = chol @ T
    else:
        A = chol @ rng.standard_normal((d, df))
    W = A @ A.T
    return 0.5 * (W + W.T)


def sample_cell_statistics(
    model: GaussianModel, counts: ArrayLike, rng: np.random.Generator
) -> CellStats:
    r"""Cell statistics of a data set drawn from ``model``, without drawing its rows.

    For the n rows of cell (a, i), i.i.d. :math:`N(\mu_{ai}, S_{ai})`, the mean
    and the centred scatter are independent with

    .. math::

        \bar x \sim N(\mu_{ai}, S_{ai} / n), \qquad
        \sum_k (x_k - \bar x)(x_k - \bar x)^T \sim W_d(n - 1, S_{ai})

    (Anderson 2003, Theorem 3.3.2), so a refit from these statistics
    (:func:`fairsteer.model_from_stats`, with either covariance option) has
    exactly the law of a refit on rows. Parameters are on the model scale
    (log for log-normal features).

    Parameters
    ----------
    model : GaussianModel
        The law to draw from.
    counts : array-like of int, shape (m, K)
        Rows per cell; at least 1 each.
    rng : numpy.random.Generator

    Returns
    -------
    CellStats
        With the model's group and class labels.
    """
    n = np.asarray(counts)
    m, K, d = model.means.shape
    if n.shape != (m, K):
        raise InputError(f"counts must have shape ({m}, {K}), got {n.shape}")
    if np.any(n < 1) or np.any(n != np.round(n)):
        raise InputError("counts must be whole numbers >= 1 (every cell needs a row)")
    n = n.astype(np.int64)
    chol = np.linalg.cholesky(model.covariances)
    means = np.empty((m, K, d))
    scatters = np.empty((m, K, d, d))
    for a in range(m):
        for i in range(K):
            L = chol[a, i]
            means[a, i] = model.means[a, i] + L @ rng.standard_normal(d) / np.sqrt(n[a, i])
            scatters[a, i] = _wishart(int(n[a, i]) - 1, L, rng)
    return CellStats(model.groups, model.classes, n.astype(np.float64), means, scatters)


# ---------------------------------------------------------------- checks


def _check_options(n_bootstrap: Any, level: Any, seed: Any) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer):
        raise InputError(f"n_bootstrap must be a whole number >= 1, got {n_bootstrap!r}")
    if n_bootstrap < 1:
        raise InputError(
            f"n_bootstrap must be at least 1, got {n_bootstrap}; use 200 or more for 95% intervals"
        )
    if isinstance(level, bool) or not isinstance(level, int | float | np.floating):
        raise InputError(f"level must be a number strictly between 0 and 1, got {level!r}")
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")


def _check_cells(counts: Array, groups: Sequence[Hashable], classes: Sequence[Hashable]) -> None:
    small = np.argwhere(counts < MIN_CELL_ROWS)
    if small.size:
        a, i = small[0]
        raise InputError(
            f"cell (group {groups[a]!r}, class {classes[i]!r}) has {int(counts[a, i])} rows; "
            f"the bootstrap needs at least {MIN_CELL_ROWS} in every cell: collect more rows, "
            "or merge or drop that group"
        )


# ------------------------------------------------------------ the steps


@dataclass
class _PointFit:
    """The fit on all rows, with the coded rows and cell sizes the replicates reuse."""

    model: GaussianModel
    Z: Array  # rows on the Gaussian scale
    gcodes: NDArray[np.intp]
    ccodes: NDArray[np.intp]
    counts: Array  # (m, K) rows per cell
    covariance: str
    shrinkage: float | str | None
    features: Sequence[str] | None

    def cell_rows(self) -> list[NDArray[np.intp]]:
        """The row indices of every (group, class) cell, cells in row-major (group, class) order."""
        code = self.gcodes * self.model.n_classes + self.ccodes
        order = np.argsort(code, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(self.counts.ravel()).astype(np.intp)])
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.counts.size)]

    def refit(self, stats: CellStats) -> GaussianModel:
        """Refit from replicate statistics with the options (and family) of the point fit."""
        return model_from_stats(
            stats,
            covariance=self.covariance,
            shrinkage=self.shrinkage,
            family=self.model.family,
            features=self.features,
        )


@dataclass
class _Replicates:
    """What one bootstrap part (intervals or test) reports besides its values."""

    failed: int = 0
    unconverged: int = 0
    seconds: float = 0.0  # per replicate
    notes: list[str] = field(default_factory=list)


def _point_fit(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    family: Any,
    covariance: str,
    shrinkage: float | str | None,
    features: Sequence[str] | None,
) -> _PointFit:
    """Fit the model on all rows (as :func:`fairsteer.fit_model`) and check every cell's size."""
    model = fit_model(
        X, y, groups, family=family, covariance=covariance, shrinkage=shrinkage, features=features
    )
    _, gcodes = encode_labels(groups, model.groups, "group")
    Z = model.to_gaussian_scale(X, gcodes)
    _, ccodes = encode_labels(y, model.classes, "class")
    m, K = model.n_groups, model.n_classes
    counts = np.bincount(gcodes * K + ccodes, minlength=m * K).reshape(m, K).astype(np.float64)
    _check_cells(counts, model.groups, model.classes)
    return _PointFit(model, Z, gcodes, ccodes, counts, covariance, shrinkage, features)


def _bootstrap_intervals(
    point: _PointFit,
    n_bootstrap: int,
    level: float,
    seed: int,
    n_samples: int,
    rng: np.random.Generator,
) -> tuple[dict[str, tuple[float, float]], _Replicates]:
    """Percentile intervals of ``INTERVAL_FIELDS`` over B stratified resamples."""
    from fairsteer.solve import affirmative_action

    model = point.model
    cells = point.cell_rows()
    values: dict[str, list[float]] = {name: [] for name in INTERVAL_FIELDS}
    tally = _Replicates()
    start = time.perf_counter()
    for _ in range(n_bootstrap):
        rows = np.concatenate([rc[rng.integers(0, rc.size, rc.size)] for rc in cells])
        stats = cell_statistics_from_codes(
            point.Z[rows],
            point.gcodes[rows],
            point.ccodes[rows],
            model.groups,
            model.classes,
            pooled=point.covariance == "shared",
        )
        try:
            fitted = point.refit(stats)
            sol = affirmative_action(fitted, seed=seed)
            rep = audit(fitted, n_samples=n_samples, seed=seed, nearest=sol)
        except InputError:
            tally.failed += 1
            continue
        tally.unconverged += not rep.nearest_ideal_converged
        for name in INTERVAL_FIELDS:
            values[name].append(getattr(rep, name))
    tally.seconds = (time.perf_counter() - start) / n_bootstrap
    ok = n_bootstrap - tally.failed
    if ok == 0:
        raise InputError(
            "every bootstrap resample failed to refit (singular covariances); use "
            "covariance='shared' or shrinkage (e.g. shrinkage='oas')"
        )
    q = [(1 - level) / 2, (1 + level) / 2]
    found: dict[str, tuple[float, float]] = {}
    for name in INTERVAL_FIELDS:
        lo, hi = np.quantile(np.asarray(values[name]), q)
        found[name] = (float(lo), float(hi))
    if (ok + 1) * (1 - level) / 2 < 1:
        tally.notes.append(
            f"{ok} resamples are too few for the tails of a {level:g} interval (the "
            f"interval is close to the range of the replicates); use at least "
            f"{int(np.ceil(2 / (1 - level)))}"
        )
    return found, tally


def _null_class_counts(
    n_group: NDArray[np.int64], pi0: Array, rng: np.random.Generator
) -> tuple[NDArray[np.int64], int]:
    """Class counts of one null data set, redrawn until every cell is usable.

    Returns the (m, K) counts and the number of redraws.
    """
    sizes = np.stack([rng.multinomial(n_a, pi0) for n_a in n_group])
    tries = 0
    while np.any(sizes < MIN_CELL_ROWS):  # condition on usable cells
        tries += 1
        if tries > MAX_REDRAWS:
            raise InputError(
                f"with the ideal class priors {np.round(pi0, 4).tolist()}, a group of "
                f"{int(n_group.min())} rows rarely has {MIN_CELL_ROWS} rows of every "
                "class, so the null cannot be drawn; collect more rows, or merge or "
                "drop the smallest group"
            )
        sizes = np.stack([rng.multinomial(n_a, pi0) for n_a in n_group])
    return sizes, tries


def _ideality_test(
    point: _PointFit,
    null: GaussianModel,
    observed: float,
    n_bootstrap: int,
    seed: int,
    rng: np.random.Generator,
) -> tuple[Array, float, _Replicates]:
    """Null nearest-ideal KLs drawn from ``null`` and the parametric-bootstrap p-value."""
    from fairsteer.solve import affirmative_action

    pi0 = null.class_priors[0]
    n_group = point.counts.sum(axis=1).astype(np.int64)
    draws = []
    redrawn = 0
    tally = _Replicates()
    start = time.perf_counter()
    for _ in range(n_bootstrap):
        sizes, tries = _null_class_counts(n_group, pi0, rng)
        redrawn += tries
        try:
            fitted = point.refit(sample_cell_statistics(null, sizes, rng))
            sol = affirmative_action(fitted, seed=seed)
        except InputError:
            tally.failed += 1
            continue
        tally.unconverged += not bool(sol.diagnostics.get("converged", True))
        draws.append(max(sol.kl, 0.0))
    tally.seconds = (time.perf_counter() - start) / n_bootstrap
    null_kl = np.asarray(draws)
    if null_kl.size == 0:
        raise InputError(
            "every null data set failed to refit (singular covariances); use "
            "covariance='shared' or shrinkage (e.g. shrinkage='oas')"
        )
    p_value = float((1 + np.sum(null_kl >= observed)) / (null_kl.size + 1))
    if redrawn:
        tally.notes.append(
            f"{redrawn} null class-count draws left a cell with fewer than "
            f"{MIN_CELL_ROWS} rows and were drawn again (the null is conditioned on "
            "usable cells)"
        )
    return null_kl, p_value, tally


def _replicate_notes(parts: dict[str, _Replicates], n_bootstrap: int) -> list[str]:
    """Each part's own notes, then its failed refits, then unconverged solves over all."""
    notes = [note for tally in parts.values() for note in tally.notes]
    for part, tally in parts.items():
        if tally.failed:
            notes.append(
                f"{tally.failed} of {n_bootstrap} {part} replicates failed to refit (singular "
                "covariance) and were left out; shrinkage or a shared covariance avoids this"
            )
    unconverged = sum(tally.unconverged for tally in parts.values())
    if unconverged:
        notes.append(f"the nearest-ideal solver did not converge on {unconverged} replicates")
    return notes


# ------------------------------------------------------------ main entry


def audit_data(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    n_bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
    family: Any = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    features: Sequence[str] | None = None,
    n_samples: int = 100_000,
    intervals: bool = True,
    test: bool = True,
) -> DataAudit:
    r"""Audit data with bootstrap intervals and a parametric-bootstrap test of ideality.

    Fits the model as :func:`fairsteer.fit_model` does, audits it
    (:func:`fairsteer.audit`), then

    - **intervals**: B stratified resamples (rows drawn with replacement within
      every (group, class) cell), each refitted with the same options and
      audited; the interval of a quantity is the
      :math:`((1-\ell)/2, (1+\ell)/2)` quantile pair of its B values;
    - **test** of "the true law is ideal": with :math:`T` the fitted
      nearest-ideal KL (:ref:`theory-4a`, best reference) and :math:`T_b` its value
      on B data sets drawn from the fitted model's nearest ideal model with
      the same group sizes (class counts multinomial with the ideal priors,
      cell statistics drawn by :func:`sample_cell_statistics`),

      .. math:: p = \frac{1 + \#\{b : T_b \ge T\}}{B + 1}

      (Davison and Hinkley 1997, eq. 4.11). See the module docstring.

    Parameters
    ----------
    X : array-like of shape (n, d)
    y, groups : array-like of shape (n,)
        Class and group labels.
    n_bootstrap : int
        B, the replicates of each part (>= 1; 200 or more for 95% intervals).
    level : float
        Interval level, strictly between 0 and 1.
    seed : int
        Seeds every random draw (resampling, null data, Monte-Carlo audits):
        the result is reproducible.
    family, covariance, shrinkage, features
        The fit options of :func:`fairsteer.fit_model`, used for every refit.
        A family with parameters (fitted on all rows) keeps them in every
        refit: the intervals are conditional on the fitted transform.
    n_samples : int
        Monte-Carlo draws per cell of each audit where no closed form exists
        (binary shared covariance is closed form); every replicate uses the
        same draws (common random numbers).
    intervals, test : bool
        Which parts to run.

    Returns
    -------
    DataAudit

    Raises
    ------
    InputError
        For bad options, bad data (as :func:`fairsteer.fit_model`), a cell with
        fewer than ``MIN_CELL_ROWS`` rows, or when every replicate failed.
    """
    from fairsteer.solve import affirmative_action

    _check_options(n_bootstrap, level, seed)
    n_bootstrap, level, seed = int(n_bootstrap), float(level), int(seed)
    point = _point_fit(X, y, groups, family, covariance, shrinkage, features)
    model, counts = point.model, point.counts
    options = {
        "family": model.family.to_json(),
        "covariance": covariance,
        "shrinkage": shrinkage,
    }
    nearest = affirmative_action(model, seed=seed)
    point_audit = audit(model, n_samples=n_samples, seed=seed, nearest=nearest)
    boot_ss, null_ss = np.random.SeedSequence(seed).spawn(2)
    parts: dict[str, _Replicates] = {}
    found: dict[str, tuple[float, float]] = {}
    if intervals:
        found, parts["intervals"] = _bootstrap_intervals(
            point, n_bootstrap, level, seed, n_samples, np.random.default_rng(boot_ss)
        )
    null_kl = np.zeros(0)
    p_value = None
    if test:
        null_kl, p_value, parts["test"] = _ideality_test(
            point,
            nearest.ideal,
            point_audit.nearest_ideal_kl,
            n_bootstrap,
            seed,
            np.random.default_rng(null_ss),
        )
    return DataAudit(
        audit=point_audit,
        level=level,
        n_bootstrap=n_bootstrap,
        seed=seed,
        options=options,
        counts=counts.astype(int).tolist(),
        intervals=found,
        p_value=p_value,
        null_kl=null_kl,
        n_failed={part: parts[part].failed if part in parts else 0 for part in _PARTS},
        n_unconverged=sum(tally.unconverged for tally in parts.values()),
        seconds_per_replicate={part: tally.seconds for part, tally in parts.items()},
        notes=_replicate_notes(parts, n_bootstrap),
    )


# ------------------------------------------------------------ command line

DATA_SUFFIXES = (".csv", ".parquet", ".pq")
# (flag, attribute) of the options that only make sense with data
_DATA_ONLY = (
    ("--group", "group"),
    ("--label", "label"),
    ("--features", "features"),
    ("--family", "family"),
    ("--covariance", "covariance"),
    ("--shrinkage", "shrinkage"),
    ("--bootstrap", "bootstrap"),
    ("--level", "level"),
)


def add_audit_arguments(parser: Any) -> None:
    """Add the data-mode options of ``fairsteer audit`` to its argument parser.

    They default to None, so that the model-JSON mode can tell that none was given.
    """
    p = parser
    p.add_argument("--group", help="data mode: column with the sensitive attribute")
    p.add_argument("--label", help="data mode: column with the class label")
    p.add_argument(
        "--features",
        nargs="+",
        metavar="COL",
        help="data mode: feature columns (default: every numeric column but group and label)",
    )
    p.add_argument(
        "--family",
        nargs="+",
        metavar="FAMILY",
        help="data mode: a family (normal, lognormal, ...) for all features, one per "
        "feature, or COLUMN=FAMILY pairs",
    )
    p.add_argument(
        "--covariance", choices=["per-class", "shared"], help="data mode (default per-class)"
    )
    p.add_argument(
        "--shrinkage",
        type=shrinkage_argument,
        help="data mode: covariance shrinkage, a number in [0, 1] or 'oas'",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        metavar="B",
        help="data mode: bootstrap replicates of the intervals and of the test (default 200)",
    )
    p.add_argument("--level", type=float, help="data mode: level of the intervals (default 0.95)")


def is_data_audit(args: Any) -> bool:
    """True when ``fairsteer audit`` was given a data file rather than a model JSON.

    Raises
    ------
    InputError
        When data-mode options come with a model JSON.
    """
    from pathlib import Path

    if Path(args.model).suffix.lower() in DATA_SUFFIXES:
        return True
    given = [flag for flag, name in _DATA_ONLY if getattr(args, name, None) is not None]
    if given:
        raise InputError(
            f"{', '.join(given)} need a data file (CSV or Parquet with --group and --label), "
            f"not the model JSON {args.model}: a model has no rows to resample"
        )
    return False


def audit_data_command(args: Any) -> int:
    """``fairsteer audit DATA --group G --label Y [--bootstrap B] [--seed S] ...``.

    Reads the table, runs :func:`audit_data` with the fit options and prints
    its summary (or JSON with ``--json``). Returns the exit code 0.

    Raises
    ------
    InputError
        For a missing --group/--label, bad columns or cells, bad options.
    """
    from fairsteer.io import read_table

    missing = [
        f for f, name in (("--group", "group"), ("--label", "label")) if not getattr(args, name)
    ]
    if missing:
        raise InputError(
            f"auditing data needs {' and '.join(missing)}: the columns with the sensitive "
            "attribute and the class label"
        )
    if args.bootstrap is not None and args.bootstrap < 1:
        raise InputError(f"--bootstrap must be at least 1, got {args.bootstrap}; use 200 or more")
    if args.level is not None and not 0.0 < args.level < 1.0:
        raise InputError(f"--level must lie strictly between 0 and 1 (e.g. 0.95), got {args.level}")
    table = read_table(args.model)
    table.require([args.group, args.label])
    features = list(args.features or [])
    for name in features:
        if name in (args.group, args.label):
            raise InputError(f"column {name!r} cannot be both a feature and the group/label")
    if not features:
        features = table.numeric_names(exclude=(args.group, args.label))
        if not features:
            raise InputError("no numeric feature columns found; name them with --features")
    X = table.numeric(features)
    family = args.family or ["normal"]
    result = audit_data(
        X,
        table.labels(args.label, "class"),
        table.labels(args.group, "group"),
        n_bootstrap=200 if args.bootstrap is None else args.bootstrap,
        level=0.95 if args.level is None else args.level,
        seed=args.seed,
        family=family[0] if len(family) == 1 and "=" not in family[0] else list(family),
        covariance=args.covariance or "per-class",
        shrinkage=parse_shrinkage(args.shrinkage),
        features=features,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(result.summary())
    return 0
