"""The protocol every experiment shares: fit, solve, steer, baselines, summarise over seeds.

Per seed an experiment fits both EF solvers on its training sample
(:func:`steer_ef`: the estimator fits the model, solves for the nearest ideal
model and steers), builds the group-wise baselines on the same sample
(:func:`group_baselines`), trains and scores its downstream models; over
seeds it reports the mean and the standard deviation of every number
(:func:`summarise`). Everything goes through fairsteer's public API.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from fairsteer import OptimalSteering
from fairsteer.baselines import GroupAffineMap, gaussian_ot_between_groups, mean_matching
from fairsteer.errors import InputError

__all__ = [
    "EF_METHODS",
    "GROUP_BASELINES",
    "group_baselines",
    "over_seeds",
    "steer_ef",
    "summarise",
    "summarise_rows",
]

#: report row name -> solver method of :func:`fairsteer.solve`
EF_METHODS = (("EF-Affirmative", "affirmative"), ("EF-All-subgroups", "all-subgroups"))
#: the two group-wise affine baselines, in report order
GROUP_BASELINES = ("Mean matching", "Gaussian OT (MiMiC)")

T = TypeVar("T")


def steer_ef(
    X: NDArray[np.float64], y: NDArray[Any], groups: NDArray[Any], *, seed: int, **params: Any
) -> Iterator[tuple[str, OptimalSteering, NDArray[np.float64]]]:
    """Both EF solvers on one training sample: (row name, fitted estimator, steered X).

    ``params`` go to :class:`fairsteer.OptimalSteering` (covariance, family,
    shrinkage, unlabeled); the estimator's weights are in ``sample_weight_``.
    A generator: each solver is fitted when the caller asks for it, so the
    caller's own work on the first (test-time maps, audits) runs before the
    second is fitted, in the order the experiments have always used.
    """
    for name, method in EF_METHODS:
        est = OptimalSteering(method=method, seed=seed, **params)
        steered, _ = est.fit_resample(X, y, sensitive_features=groups)
        yield name, est, steered


def group_baselines(
    X: NDArray[np.float64],
    groups: NDArray[Any],
    *,
    reference: Hashable | None = None,
    shrinkage: float | str | None = None,
) -> dict[str, GroupAffineMap]:
    """Mean matching and Gaussian OT between groups, fitted on one training sample."""
    return {
        "Mean matching": mean_matching(X, groups),
        "Gaussian OT (MiMiC)": gaussian_ot_between_groups(
            X, groups, reference=reference, shrinkage=shrinkage
        ),
    }


def over_seeds(seeds: Sequence[int], one_seed: Callable[[int], T]) -> list[T]:
    """``[one_seed(s) for s in seeds]``, refusing an empty seed list."""
    if not seeds:
        raise InputError("give at least one seed")
    return [one_seed(s) for s in seeds]


def summarise(values: Iterable[float | None]) -> dict[str, float | None]:
    """Mean and (population) standard deviation over seeds; None values are skipped.

    All None gives ``{"mean": None, "std": None}`` (a metric a method does not
    have). ``+ 0.0`` turns a -0.0 mean (the KL of an unchanged law) into 0.0.
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)) + 0.0, "std": float(np.std(vals))}


def summarise_rows(
    rows: Sequence[Mapping[str, Any]], keys: Iterable[str]
) -> dict[str, dict[str, float | None]]:
    """``{key: summarise(row[key] for row in rows)}``: one summary per metric."""
    return {k: summarise([r[k] for r in rows]) for k in keys}
