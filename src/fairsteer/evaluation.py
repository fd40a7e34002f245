r"""Tools to evaluate a steering on data: a known bias to inject, the law of a steered sample.

- :func:`inject_label_bias`: flip a fraction of one group's favourable labels,
  the label bias of Wick, Panda and Tristan 2019 ("Unlocking fairness: a
  trade-off revisited"), so that what a method recovers can be measured
  against the clean labels.
- :func:`refit_steered`: the Gaussian model of a steered sample, whose rows
  carry the prior weights :math:`\tilde\pi_{a,i} / \pi_{a,i}`
  (:meth:`fairsteer.maps.SteeringMaps.weights`). Auditing it checks the steering
  end to end on data (:ref:`theory-5`: the steered sample follows the ideal law).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.fit import fit_model
from fairsteer.model import GaussianModel

__all__ = ["inject_label_bias", "refit_steered"]


def inject_label_bias(
    y: ArrayLike,
    groups: ArrayLike,
    protected: Hashable,
    *,
    fraction: float,
    favourable: int = 1,
    seed: int | np.random.Generator | None = None,
) -> NDArray[np.int64]:
    """Binary labels with a fraction of the protected group's favourable labels flipped.

    Of the :math:`n_f` rows with ``groups == protected`` and ``y ==
    favourable``, :math:`\\mathrm{round}(\\text{fraction} \\cdot n_f)` drawn
    without replacement (``numpy.random.default_rng(seed)``) get the label
    ``1 - favourable``; every other row keeps its label. A bias against the
    protected group (Wick et al. 2019): e.g. women recorded below 50K in
    Adult, African-American defendants recorded as re-offending in COMPAS.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels in {0, 1}.
    groups : array-like of shape (n,)
    protected : hashable
        The group whose labels are flipped.
    fraction : float in [0, 1]
    favourable : {0, 1}
        The label that benefits the person.
    seed : int, Generator or None

    Returns
    -------
    ndarray of int64
        A copy of ``y`` with the flips.
    """
    y = np.array(y, dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise InputError(f"y has {y.size} rows but groups has {g.size}")
    if not np.isin(y, (0, 1)).all() or favourable not in (0, 1):
        raise InputError("label bias injection needs labels and favourable in {0, 1}")
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    fav = np.flatnonzero((g == protected) & (y == favourable))
    y[rng.choice(fav, size=round(fraction * fav.size), replace=False)] = 1 - favourable
    return y


def refit_steered(
    X_steered: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    ideal: GaussianModel,
    *,
    family: str | Sequence[str] = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
) -> GaussianModel:
    r"""The model of a steered sample whose rows carry the ideal prior weights.

    Steered rows of cell (a, i) carry the weight
    :math:`w_{a,i} = \tilde\pi_{a,i} / \pi_{a,i}` (ideal over original class
    prior, :meth:`fairsteer.maps.SteeringMaps.weights`), so the weighted share of
    class i within group a is

    .. math:: \frac{n_{a,i}\, w_{a,i}}{\sum_j n_{a,j}\, w_{a,j}}
              = \tilde\pi_{a,i}

    whenever the sample's cell shares are the fitted priors
    :math:`n_{a,i} / n_a = \pi_{a,i}` (always so for the training sample).
    The refit therefore takes the ideal priors ``ideal.priors`` and the
    sample's per-cell means and covariances
    (:func:`fairsteer.fit.fit_model`, unweighted within a cell: the weight is
    constant there). Auditing it checks the steering on data (:ref:`theory-5`).

    Parameters
    ----------
    X_steered : array-like of shape (n, d)
    y, groups : array-like of shape (n,)
    ideal : GaussianModel
        The ideal model the sample was steered to (``Solution.ideal``); its
        group order is kept.
    family, covariance, shrinkage
        As in :func:`fairsteer.fit.fit_model`.
    """
    refit = fit_model(
        X_steered,
        y,
        groups,
        family=family,
        covariance=covariance,
        shrinkage=shrinkage,
        group_labels=ideal.groups,
    )
    if refit.priors.shape != ideal.priors.shape:
        raise InputError(
            f"the steered sample has {refit.n_groups} groups x {refit.n_classes} classes, "
            f"the ideal model {ideal.n_groups} x {ideal.n_classes}"
        )
    return refit.with_params(ideal.priors, refit.means, refit.covariances)
