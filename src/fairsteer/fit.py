"""Estimation: models from data through mergeable statistics.

:class:`Fitter` accumulates the per-cell sufficient statistics
(:class:`~fairsteer.stats.CellStats`: counts, means, centred scatters) batch by
batch or by merging partial fits, and turns them into a
:class:`~fairsteer.model.GaussianModel` on demand. :func:`fit_model` is the
one-shot form. The estimator, the command line and the backends (torch, Dask)
all fit through these.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.families import Families
from fairsteer.linalg import all_finite
from fairsteer.model import GaussianModel
from fairsteer.options import COVARIANCES, check_choice, check_shrinkage
from fairsteer.stats import CellStats, FeatureRange, cell_statistics, cell_statistics_from_codes

__all__ = ["Fitter", "check_cell_covariances", "fit_model", "model_from_stats", "shrink_covariance"]

Array = NDArray[np.float64]


def shrink_covariance(S: ArrayLike, n: ArrayLike, shrinkage: float | str | None) -> Array:
    r"""Shrink covariances towards a scaled identity.

    :math:`(1 - s) S + s \mu I` with :math:`\mu = \operatorname{tr}(S)/d`. ``s`` is
    given (a float in [0, 1]) or chosen by the Oracle Approximating Shrinkage
    rule (``"oas"``, Chen et al. 2010), which needs only ``S`` and the sample
    size ``n`` and so works from mergeable statistics:

    .. math::

        s = \min\left(1, \frac{\alpha + \mu^2}{(n + 1)(\alpha - \mu^2 / d)}\right),
        \quad \alpha = \tfrac{1}{d^2}\|S\|_F^2 .

    Broadcasts over leading dimensions of ``S`` (shape (..., d, d)) and ``n``.
    """
    S = np.asarray(S, dtype=np.float64)
    if shrinkage is None:
        return S
    d = S.shape[-1]
    mu = np.trace(S, axis1=-2, axis2=-1) / d
    if isinstance(shrinkage, str):
        if shrinkage != "oas":
            raise InputError(
                f"shrinkage must be None, a float in [0, 1] or 'oas', got {shrinkage!r}"
            )
        alpha = np.mean(S**2, axis=(-2, -1))
        num = alpha + mu**2
        den = (np.asarray(n, dtype=np.float64) + 1.0) * (alpha - mu**2 / d)
        s = np.where(den > 0, np.minimum(num / np.where(den > 0, den, 1.0), 1.0), 1.0)
    else:
        s = float(shrinkage)
        if not 0.0 <= s <= 1.0:
            raise InputError(f"shrinkage must lie in [0, 1], got {s}")
        s = np.full(mu.shape, s)
    eye = np.eye(d)
    return (1.0 - s)[..., None, None] * S + (s * mu)[..., None, None] * eye


def _shrunk_covariances(stats: CellStats, covariance: str, shrinkage: float | str | None) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        covs = stats.covariances(covariance)
        if shrinkage is None:
            return covs
        if covariance == "shared":
            n_group = stats.counts.sum(axis=1, keepdims=True)
            return np.broadcast_to(shrink_covariance(covs[:, :1], n_group, shrinkage), covs.shape)
        return shrink_covariance(covs, stats.counts, shrinkage)


# A feature whose spread within a cell is below this fraction of its magnitude
# is constant there: identical values give a spread of a few ulps (~1e-16).
CONSTANT_TOL = 1e-12
# 1 - R^2 of a feature regressed on the others (the squared Cholesky pivot of
# the correlation matrix) below this: the feature is a linear combination of
# the others to ~10 digits, beyond what float64 scatter sums resolve reliably.
COLLINEAR_TOL = 1e-10
# Share of the largest coefficient of the null direction from which a feature
# counts as part of a linear dependency: round-off in the eigenvector is about
# eps / (eigenvalue gap), far below this unless a second dependency is close.
DEPENDENCY_SHARE = 1e-6


def check_cell_covariances(
    stats: CellStats,
    covariances: ArrayLike,
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    features: Sequence[str] | None = None,
) -> None:
    """Reject covariances a model cannot use, naming the cell, the features and a fix.

    The tests are scale-invariant (units do not matter, THEORY 4d): every
    covariance is reduced to its correlation matrix before its rank is judged.

    Parameters
    ----------
    stats : CellStats
        The statistics the covariances come from (counts and means).
    covariances : array-like of shape (m, K, d, d)
        The covariances to check (after shrinkage).
    covariance : {"per-class", "shared"}
        How they were pooled (shared: one per group).
    shrinkage : None, float or "oas"
        The shrinkage used, so that a fix is only suggested when it helps.
    features : sequence of str, optional
        Feature names for the messages.

    Raises
    ------
    InputError
        For non-finite values (features too large for float64), a cell with
        a single sample, a feature that is constant in a cell, or features
        that are linearly dependent in a cell.
    """
    covs = np.asarray(covariances, dtype=np.float64)
    m, K, d = stats.means.shape
    names = [repr(f) for f in features] if features is not None else [str(j) for j in range(d)]
    shared = covariance == "shared"
    if not (all_finite(stats.means) and all_finite(covs)):
        bad = ~np.isfinite(stats.means).all(axis=(0, 1)) | ~np.isfinite(
            np.diagonal(covs, axis1=-2, axis2=-1)
        ).all(axis=(0, 1))
        j = int(np.flatnonzero(bad)[0]) if bad.any() else 0
        raise InputError(
            f"feature {names[j]} is too large in magnitude for float64 variances; rescale it "
            "(divide by a constant: the results do not depend on units)"
        )
    for a in range(m):
        for i in range(1 if shared else K):
            where = (
                f"group {stats.groups[a]!r}"
                if shared
                else f"cell (group {stats.groups[a]!r}, class {stats.classes[i]!r})"
            )
            if not shared and stats.counts[a, i] < 2:
                raise InputError(
                    f"{where} has a single sample, so its covariance is zero; use "
                    "covariance='shared' (one covariance per group), or merge or drop that "
                    "group"
                )
            problem = _singular(covs[a, i], stats.means[a] if shared else stats.means[a, i])
            if problem is None:
                continue
            kind, cols = problem
            # rank of a scatter <= samples - classes pooled in it
            dof = stats.counts[a].sum() - K if shared else stats.counts[a, i] - 1
            if dof < d:
                kind, cols = "few", list(range(d))
            fixes = _fixes(stats, a, cols, kind, covariance, shrinkage, covs[a, i])
            listed = ", ".join(names[j] for j in cols)
            if kind == "few":
                n_samples = int(stats.counts[a].sum() if shared else stats.counts[a, i])
                raise InputError(
                    f"{where} has {n_samples} samples for {d} features, too few for a full "
                    f"covariance, so it is singular; {fixes}"
                )
            if kind == "constant":
                raise InputError(
                    f"feature {listed} is constant in {where}, so its covariance is singular; "
                    f"{fixes}"
                )
            raise InputError(
                f"features {listed} are linearly dependent (collinear) in {where}, so its "
                f"covariance is singular; {fixes}"
            )


def _singular(S: Array, means: Array) -> tuple[str, list[int]] | None:
    """("constant", [j]) or ("collinear", [j, ...]) for a singular covariance, else None."""
    var = np.diagonal(S).copy()
    scale = np.abs(np.atleast_2d(means)).max(axis=0)
    constant = var <= (CONSTANT_TOL * scale) ** 2
    if constant.any():
        return "constant", [int(np.flatnonzero(constant)[0])]
    if len(var) == 1:
        return None
    sd = np.sqrt(var)
    R = S / sd[:, None] / sd[None, :]
    try:
        pivots = np.diagonal(np.linalg.cholesky(R)) ** 2
        if pivots.min() >= COLLINEAR_TOL:
            return None
    except np.linalg.LinAlgError:
        pass
    _, V = np.linalg.eigh(R)
    v = np.abs(V[:, 0])
    return "collinear", [int(j) for j in np.flatnonzero(v >= DEPENDENCY_SHARE * v.max())]


def _fixes(
    stats: CellStats,
    a: int,
    cols: list[int],
    kind: str,
    covariance: str,
    shrinkage: float | str | None,
    S: Array,
) -> str:
    """The fixes that would remove the singularity, as one phrase."""
    fixes = {
        "constant": ["drop that feature"],
        "collinear": ["drop one of them"],
        "few": ["use fewer features or more samples"],
    }[kind]
    if covariance != "shared":
        pooled = stats.scatters[a].sum(axis=0)[np.ix_(cols, cols)]
        if _singular(pooled, stats.means[a][:, cols]) is None:
            fixes.append("use covariance='shared'")
    if (shrinkage is None or shrinkage == 0) and np.trace(S) > 0:
        fixes.append("use shrinkage (e.g. shrinkage='oas')")
    return ", or ".join(fixes)


def model_from_stats(
    stats: CellStats,
    *,
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    family: Any = "normal",
    features: Sequence[str] | None = None,
) -> GaussianModel:
    """Maximum-likelihood model from cell statistics.

    Priors are ``counts / n``, means the cell means, covariances the ML
    estimates (scatter / n per cell, or the pooled within-class scatter per
    group for ``covariance="shared"``), optionally shrunk
    (:func:`shrink_covariance`). ``family`` only labels the model: the
    statistics must already be on the model scale (log for log-normal columns).
    """
    stats.require_all_cells()
    covs = _shrunk_covariances(stats, covariance, shrinkage)
    check_cell_covariances(stats, covs, covariance, shrinkage, features)
    priors = stats.counts / stats.counts.sum()
    return GaussianModel(
        priors,
        stats.means,
        covs,
        stats.groups,
        stats.classes,
        family,
        features,
        covariance=covariance,
    )


def _suspicious(stats: CellStats) -> bool:
    """True when statistics are non-finite or hold subnormal-range variances.

    A clean sample gives finite statistics whose nonzero variances exceed
    ~1e-292 (the bound of :func:`_check_range`); anything else sends the fit
    through the detailed checks.
    """
    if not (all_finite(stats.means) and all_finite(stats.scatters)):
        return True
    n = stats.counts.sum(axis=1, keepdims=True) if stats.pooled else stats.counts
    var = np.diagonal(stats.scatters, axis1=-2, axis2=-1) / np.maximum(n, 1)[..., None]
    floor = np.finfo(np.float64).tiny / np.finfo(np.float64).eps
    return bool(np.any((var > 0) & (var < floor)))


def _check_range(Z: Array, features: Sequence[str] | None) -> None:
    """Reject features whose variances float64 cannot hold (too large or too small)."""
    rng = FeatureRange(Z.shape[1])
    rng.update(Z)
    rng.check(features)


def check_fit_options(covariance: str, shrinkage: float | str | None) -> None:
    """Reject unknown fit options before any pass over the data."""
    check_choice(covariance, COVARIANCES, "covariance")
    check_shrinkage(shrinkage)


class Fitter:
    """Mergeable statistics of (group, class) cells, and the model on demand.

    Parameters
    ----------
    family : str, Family or a sequence, one per feature
        The features' families (:mod:`fairsteer.families`). A family with
        parameters must be fitted before the first :meth:`update` (see
        :meth:`Families.fit <fairsteer.families.Families.fit>`), since the
        statistics are accumulated on the Gaussian scale.
    covariance : {"per-class", "shared"}
    shrinkage : None, float in [0, 1] or "oas"
        See :func:`shrink_covariance`.
    features : sequence of str, optional
        Feature names (stored in the model; used in messages).
    group_labels, class_labels : sequence, optional
        Label order. Without them each batch's sorted labels are used and
        batches with different labels are aligned when merged.

    Notes
    -----
    The statistics are counts, means and centred scatters per cell; two sets
    merge exactly by Chan et al.'s pairwise update (:meth:`CellStats.merge
    <fairsteer.stats.CellStats.merge>`), so a fit over batches, partitions or
    workers equals the one-shot fit to round-off.

    References
    ----------
    Chan, T. F., Golub, G. H. and LeVeque, R. J. (1979). Updating formulae and
    a pairwise algorithm for computing sample variances. Stanford report
    STAN-CS-79-773. http://i.stanford.edu/pub/cstr/reports/cs/tr/79/773/CS-TR-79-773.pdf
    """

    def __init__(
        self,
        *,
        family: Any = "normal",
        covariance: str = "per-class",
        shrinkage: float | str | None = None,
        features: Sequence[str] | None = None,
        group_labels: Sequence[Hashable] | None = None,
        class_labels: Sequence[Hashable] | None = None,
    ) -> None:
        check_fit_options(covariance, shrinkage)
        self.family = family
        self.covariance = covariance
        self.shrinkage = shrinkage
        self.features = None if features is None else tuple(str(f) for f in features)
        self.group_labels = None if group_labels is None else tuple(group_labels)
        self.class_labels = None if class_labels is None else tuple(class_labels)
        self.stats: CellStats | None = None
        self._suspicious = False

    def _families(self, d: int) -> Families:
        fam = Families(self.family, d)
        if not fam.fitted:
            raise InputError(
                "a family with parameters must be fitted before statistics are accumulated; "
                "fit it first (Families.fit) or use fit_model"
            )
        return fam

    def update(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike) -> Fitter:
        """Add a batch of rows (features on the data scale). Returns ``self``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
        fam = self._families(X.shape[1])
        Z = fam.forward(X, None, self.features, check=False) if not fam.is_identity else X
        stats = cell_statistics(
            Z,
            y,
            groups,
            group_labels=self.group_labels,
            class_labels=self.class_labels,
            check_finite=False,
            pooled=self.covariance == "shared",
        )
        if _suspicious(stats):
            # NaN or inf in X, a value outside a family's domain, or values beyond
            # what float64 variances hold: the full checks (extra passes over X,
            # only on this path) name the row, column or feature.
            fam.forward(X, None, self.features)
            _check_range(Z, self.features)
        return self.update_stats(stats)

    def update_codes(
        self, Z: Array, group_codes: NDArray[np.intp], class_codes: NDArray[np.intp]
    ) -> Fitter:
        """Add rows already on the Gaussian scale whose labels are integer codes.

        The codes index ``group_labels`` and ``class_labels``, which must have
        been given. ``Z`` must be finite (backends check their own inputs).
        """
        if self.group_labels is None or self.class_labels is None:
            raise InputError("update_codes needs the fitter's group_labels and class_labels")
        stats = cell_statistics_from_codes(
            np.asarray(Z, dtype=np.float64),
            np.asarray(group_codes, dtype=np.intp),
            np.asarray(class_codes, dtype=np.intp),
            self.group_labels,
            self.class_labels,
            pooled=self.covariance == "shared",
        )
        return self.update_stats(stats)

    def update_stats(self, stats: CellStats) -> Fitter:
        """Add statistics computed elsewhere (on the Gaussian scale). Returns ``self``."""
        self.stats = stats if self.stats is None else self.stats.merge(stats)
        return self

    def merge(self, other: Fitter) -> Fitter:
        """A fitter holding the statistics of both (options of ``self``)."""
        out = Fitter(
            family=self.family,
            covariance=self.covariance,
            shrinkage=self.shrinkage,
            features=self.features,
            group_labels=self.group_labels,
            class_labels=self.class_labels,
        )
        for part in (self.stats, other.stats):
            if part is not None:
                out.update_stats(part)
        return out

    def model(self) -> GaussianModel:
        """The maximum-likelihood model of the rows seen so far (:func:`model_from_stats`)."""
        if self.stats is None:
            raise InputError("no rows were given to the fitter; call update() first")
        stats = self.stats
        if self.group_labels is not None or self.class_labels is not None:
            stats = stats.aligned(
                self.group_labels or stats.groups, self.class_labels or stats.classes
            )
        return model_from_stats(
            stats,
            covariance=self.covariance,
            shrinkage=self.shrinkage,
            family=self._families(stats.n_features),
            features=self.features,
        )


def fit_model(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    family: Any = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    features: Sequence[str] | None = None,
    group_labels: Sequence[Hashable] | None = None,
    class_labels: Sequence[Hashable] | None = None,
) -> GaussianModel:
    """Fit a class-conditional Gaussian model per group on the families' scale.

    Parameters
    ----------
    X : array-like of shape (n, d)
    y : array-like of shape (n,)
        Class labels.
    groups : array-like of shape (n,)
        Group labels (sensitive attribute; intersectional groups are just more
        groups).
    family : str, Family or a sequence of those, one per feature
        ``"normal"``, ``"lognormal"`` or any registered family
        (:mod:`fairsteer.families`); families with parameters are fitted on
        the pooled rows first (never per class).
    covariance : {"per-class", "shared"}
        One covariance per (group, class) cell, or one per group (LDA).
    shrinkage : None, float in [0, 1] or "oas"
        Covariance shrinkage towards a scaled identity (:func:`shrink_covariance`),
        for cells with few samples relative to d.
    features : sequence of str, optional
        Feature names (stored in the model).
    group_labels, class_labels : sequence, optional
        Label order; default the sorted unique values.

    Returns
    -------
    GaussianModel
        ``Fitter(...).update(X, y, groups).model()``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    fam = Families(family, X.shape[1])
    if not fam.fitted:
        fam = fam.fit(_checked(X, features), None, 1)
    fitter = Fitter(
        family=fam,
        covariance=covariance,
        shrinkage=shrinkage,
        features=features,
        group_labels=group_labels,
        class_labels=class_labels,
    )
    return fitter.update(X, y, groups).model()


def _checked(X: Array, features: Sequence[str] | None) -> Array:
    """``X`` checked finite (the rows a family's parameters are fitted on)."""
    return Families("normal", X.shape[1]).forward(X, None, features)
