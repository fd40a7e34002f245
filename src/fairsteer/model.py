"""The model: class-conditional Gaussians per group on a chosen scale.

A :class:`GaussianModel` holds, for groups a = 1..m and classes i = 1..K
(THEORY section 1):

- ``priors[a, i]`` = q[a, i] = P(A=a, Y=i), positive, summing to 1;
- ``means[a, i]`` and ``covariances[a, i]``: Z | A=a, Y=i ~ N(mean, covariance)
  with Z the features on the Gaussian scale of their family
  (:mod:`fairsteer.families`; identity for "normal", log for "lognormal");
- ``covariance``: the covariance structure, "per-class" or "shared" (one
  covariance per group, the LDA case).

Every formula runs on the Gaussian scale: KL divergences and Bayes decisions
are unchanged by a per-group bijection of the features (THEORY section 9).
Estimation from data lives in :mod:`fairsteer.fit`; files in
:mod:`fairsteer.files`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.families import Families
from fairsteer.files import parse_json, read_json, write_atomic
from fairsteer.linalg import all_finite, check_spd
from fairsteer.options import COVARIANCES

__all__ = ["GaussianModel"]

Array = NDArray[np.float64]
PRIOR_SUM_TOL = 1e-6  # priors written to JSON with ~15 digits sum to 1 far better than this


def _names(values: Sequence[Hashable] | None, count: int, what: str) -> tuple[Hashable, ...]:
    if values is None:
        return tuple(range(count))
    values = tuple(values)
    if len(values) != count:
        raise InputError(f"{len(values)} {what} names given for {count} {what}s")
    if len(set(map(str, values))) != len(values):
        raise InputError(f"{what} names must be unique, got {list(values)}")
    return values


@dataclass(frozen=True, eq=False)
class GaussianModel:
    """Class-conditional Gaussian model per group, with joint priors.

    Parameters
    ----------
    priors : array-like of shape (m, K)
        Joint priors P(A=a, Y=i); positive, summing to one.
    means : array-like of shape (m, K, d)
    covariances : array-like of shape (m, K, d, d)
        Symmetric positive definite.
    groups, classes : sequence, optional
        Names (default ``0..m-1`` and ``0..K-1``).
    family : str, Family, Families or a sequence of those, one per feature
        The scale on which the parameters describe the features
        (:mod:`fairsteer.families`); stored as a :class:`Families`. For
        log-normal features the parameters describe ``log X``.
    features : sequence of str, optional
        Feature names.
    covariance : {"per-class", "shared"}, optional
        The covariance structure. Default: "shared" when every class of every
        group has the same covariance, else "per-class". A shared covariance is
        stored once per group and broadcast over the classes (read-only view).

    Raises
    ------
    InputError
        On wrong shapes, non-finite values, priors that are not positive or do
        not sum to one, or covariances that are not positive definite.
    """

    priors: Array
    means: Array
    covariances: Array
    groups: tuple[Hashable, ...] = field(default=None)  # type: ignore[assignment]
    classes: tuple[Hashable, ...] = field(default=None)  # type: ignore[assignment]
    family: Families = "normal"  # type: ignore[assignment]
    features: tuple[str, ...] | None = None
    covariance: str = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        priors = _finite(self.priors, "priors")
        means = _finite(self.means, "means")
        covs = _finite(self.covariances, "covariances", copy=False)
        if priors.ndim != 2:
            raise InputError(f"priors must have shape (groups, classes), got {priors.shape}")
        m, K = priors.shape
        if m < 1 or K < 2:
            raise InputError(f"a model needs at least 1 group and 2 classes, got {m} and {K}")
        if means.ndim != 3 or means.shape[:2] != (m, K):
            raise InputError(
                f"means must have shape ({m}, {K}, d) to match priors {priors.shape}, "
                f"got {means.shape}"
            )
        d = means.shape[2]
        if d < 1:
            raise InputError("a model needs at least one feature")
        if covs.shape != (m, K, d, d):
            raise InputError(f"covariances must have shape ({m}, {K}, {d}, {d}), got {covs.shape}")
        if np.any(priors <= 0):
            a, i = np.argwhere(priors <= 0)[0]
            raise InputError(
                f"prior P(A={a}, Y={i}) = {priors[a, i]} is not positive; every class must "
                "occur in every group"
            )
        total = priors.sum()
        if abs(total - 1.0) > PRIOR_SUM_TOL:
            raise InputError(f"priors must sum to 1, they sum to {total:.10g}")
        # A shared covariance is stored once per group as a read-only broadcast
        # view (no K-fold copies, and validated once per group).
        equal = covs.strides[1] == 0 or bool(np.all(covs == covs[:, :1]))
        if self.covariance is None:
            set_(self, "covariance", "shared" if equal else "per-class")
        elif self.covariance not in COVARIANCES:
            raise InputError(f"covariance must be one of {COVARIANCES}, got {self.covariance!r}")
        elif self.covariance == "shared" and not equal:
            raise InputError(
                "covariance='shared' needs the same covariance for every class of a group"
            )
        shared = self.covariance == "shared"
        if shared:
            one, chol = check_spd(covs[:, :1], "covariances", factor=True)
            covs = np.broadcast_to(one, (m, K, d, d))
        else:
            covs, chol = check_spd(covs, "covariances", factor=True)
        _check_separation(means, chol, shared, self.groups)
        set_(self, "priors", priors / total)
        set_(self, "means", means)
        set_(self, "covariances", covs)
        set_(self, "groups", _names(self.groups, m, "group"))
        set_(self, "classes", _names(self.classes, K, "class"))
        if self.features is not None:
            set_(self, "features", tuple(str(f) for f in _names(self.features, d, "feature")))
        set_(self, "family", Families(self.family, d))
        for arr in (self.priors, self.means):
            arr.setflags(write=False)
        if not shared:
            self.covariances.setflags(write=False)

    # ------------------------------------------------------------------ sizes
    @property
    def n_groups(self) -> int:
        return int(self.priors.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.priors.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[2])

    # -------------------------------------------------------- derived params
    @property
    def group_weights(self) -> Array:
        """w[a] = P(A=a)."""
        return self.priors.sum(axis=1)

    @property
    def class_priors(self) -> Array:
        """pi[a, i] = P(Y=i | A=a), shape (m, K)."""
        return self.priors / self.group_weights[:, None]

    @property
    def families(self) -> tuple[str, ...]:
        """The family name of every feature."""
        return self.family.names

    @property
    def shared_covariance(self) -> bool:
        """True when every class of a group has the same covariance (LDA case)."""
        return self.covariance == "shared"

    def to_gaussian_scale(self, X: ArrayLike, groups: NDArray[np.intp] | None = None) -> Array:
        """Features on the scale the Gaussians describe (e.g. log for log-normal columns).

        ``groups`` are integer group codes, needed only by group-dependent families.

        Raises
        ------
        InputError
            If ``X`` holds NaN or inf, or a value outside a family's domain.
        """
        return self.family.forward(X, groups, self.features)

    def from_gaussian_scale(self, Z: ArrayLike, groups: NDArray[np.intp] | None = None) -> Array:
        """Inverse of :meth:`to_gaussian_scale` (always a new array)."""
        X = self.family.inverse(Z, groups)
        return np.array(X, dtype=np.float64) if X is Z else X

    def with_params(
        self, priors: ArrayLike, means: ArrayLike, covariances: ArrayLike
    ) -> GaussianModel:
        """A model with the same names and family and new parameters.

        A per-class model stays per-class; a shared one stays shared when the new
        covariances are equal across classes, else it becomes per-class.
        """
        structure = "per-class" if self.covariance == "per-class" else None
        return GaussianModel(
            priors,
            means,
            covariances,
            self.groups,
            self.classes,
            self.family,
            self.features,
            covariance=structure,
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary of the documented model format."""
        out: dict[str, Any] = {"family": self.family.to_json(), "covariance": self.covariance}
        if self.features is not None:
            out["features"] = list(self.features)
        out.update(
            groups=list(self.groups),
            classes=list(self.classes),
            priors=self.priors.tolist(),
            means=self.means.tolist(),
            covariances=self.covariances.tolist(),
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GaussianModel:
        """Inverse of :meth:`to_dict`; extra keys are ignored."""
        if not isinstance(data, dict):
            raise InputError("a model must be a JSON object with keys priors, means, covariances")
        missing = [k for k in ("priors", "means", "covariances") if k not in data]
        if missing:
            raise InputError(f"model JSON is missing the key(s) {missing}")
        family = data.get("family", "normal")
        covariance = data.get("covariance")
        if covariance is not None and covariance not in COVARIANCES:
            raise InputError(f"model JSON: covariance must be one of {COVARIANCES}")
        try:
            return cls(
                priors=_array(data["priors"], "priors"),
                means=_array(data["means"], "means"),
                covariances=_array(data["covariances"], "covariances"),
                groups=_optional_names(data.get("groups")),
                classes=_optional_names(data.get("classes")),
                family=family,
                features=_optional_names(data.get("features")),  # type: ignore[arg-type]
                covariance=covariance,
            )
        except TypeError as exc:
            raise InputError(f"malformed model JSON: {exc}") from None

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> GaussianModel:
        return cls.from_dict(parse_json(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as JSON, atomically."""
        write_atomic(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GaussianModel:
        return cls.from_dict(read_json(path))


# ---------------------------------------------------------------- helpers


# Largest Mahalanobis distance of a class mean from its group's mean: KL terms
# are squares of such distances and solvers multiply two of them, so the
# fourth power must stay finite (max**0.25 ~ 1.2e77 standard deviations).
MAX_SEPARATION = np.finfo(np.float64).max ** 0.25


def _check_separation(
    means: Array, chol: Array, shared: bool, groups: Sequence[Hashable] | None
) -> None:
    """Reject class means so far apart (in standard deviations) that KL terms overflow.

    ``chol`` holds the Cholesky factors of the covariances, (m, 1 or K, d, d).
    """
    from fairsteer.linalg import solve_triangular

    m, K = means.shape[:2]
    with np.errstate(over="ignore", invalid="ignore"):
        centred = means - means.mean(axis=1, keepdims=True)  # (m, K, d)
    for a in range(m):
        for i in range(1 if shared else K):
            L = chol[a, i]
            with np.errstate(over="ignore", invalid="ignore"):
                # whitened deviations of the class means from the group mean, (d, K)
                z = solve_triangular(L, centred[a].T, lower=True)
                dist = np.sqrt(np.sum(z**2, axis=0)).max()
            if not dist <= MAX_SEPARATION:
                name = groups[a] if groups is not None else a
                size = f"{dist:.3g}" if np.isfinite(dist) else f"more than {MAX_SEPARATION:.3g}"
                raise InputError(
                    f"the class means of group {name!r} are {size} standard deviations "
                    "apart, too far for finite KL divergences; check that means and "
                    "covariances are in the same units"
                )


def _finite(value: ArrayLike, what: str, copy: bool = True) -> Array:
    try:
        arr = np.array(value, dtype=np.float64) if copy else np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a (nested) list of numbers of consistent shape") from None
    if not all_finite(arr):
        raise InputError(f"{what} contains NaN or inf")
    return arr


def _array(value: Any, what: str) -> Array:
    return _finite(value, what)


def _optional_names(value: Any) -> tuple[Hashable, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(f"names must be a JSON list, got {type(value).__name__}")
    return tuple(value)
