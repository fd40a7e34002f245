r"""Families: per-feature invertible transforms to the Gaussian scale.

A family says on which scale a feature is Gaussian within each (group, class)
cell. It is a strictly monotone bijection :math:`z = \phi^{-1}(x)` of the
feature's domain onto the real line, applied column by column. The transform
may depend on the group but never on the class: then the map
:math:`(x, a) \mapsto (\phi_a^{-1}(x), a)` is a bijection of the joint space,
which leaves every KL divergence and the ideality of a law unchanged
(:ref:`theory-9`, the argument of :ref:`theory-4d`). So a model is fitted,
audited and solved on the Gaussian scale, and samples are steered by
:math:`x \mapsto \phi_a(T_{a,i}(\phi_a^{-1}(x)))`.

Families are registered by name in :data:`FAMILIES`; a :class:`Families`
holds one per feature and is what a :class:`~fairsteer.model.GaussianModel`
stores and serialises.

References
----------
Aitchison, J. and Brown, J. A. C. (1957). *The Lognormal Distribution*.
Cambridge University Press.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.linalg import all_finite

__all__ = [
    "FAMILIES",
    "Auto",
    "Families",
    "Family",
    "Log1p",
    "LogNormal",
    "Normal",
    "NormalScores",
    "YeoJohnson",
    "check_family_spec",
    "choose_family",
    "dequantize",
    "integer_columns",
    "register_family",
]

Array = NDArray[np.float64]
Codes = NDArray[np.intp]


class Family(ABC):
    """One feature's bijection from the data scale to the Gaussian scale.

    Subclasses set :attr:`name`, implement :meth:`forward` and :meth:`inverse`
    and, when they have parameters, :meth:`fit`, :meth:`params` and
    :meth:`from_params`. ``groups`` are integer group codes ``0..m-1`` (one per
    value); a family whose transform does not depend on the group ignores them.
    """

    name: ClassVar[str]

    @property
    def fitted(self) -> bool:
        """False while parameters still have to be estimated by :meth:`fit`."""
        return True

    def fit(self, x: Array, groups: Codes | None = None, n_groups: int = 1) -> Family:
        """A fitted copy (families without parameters return themselves)."""
        return self

    @abstractmethod
    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        """z = phi^-1(x): data scale to Gaussian scale."""

    @abstractmethod
    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        """x = phi(z): Gaussian scale to data scale."""

    @abstractmethod
    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        """``log |d phi^-1 / dx|`` at x (turns a Gaussian-scale density into a data density)."""

    def domain_error(self, x: Array) -> int | None:
        """Index of the first value outside the family's domain, or None."""
        return None

    #: Completes "feature f holds v at row r, ..." for a value outside the domain.
    domain: ClassVar[str] = "outside the family's domain"
    domain_fix: ClassVar[str] = "use family 'normal' for it"

    def params(self) -> dict[str, Any]:
        """The fitted parameters, JSON-ready (empty for parameter-free families)."""
        return {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Family:
        """Inverse of :meth:`params`."""
        if params:
            raise InputError(f"family {cls.name!r} takes no parameters, got {sorted(params)}")
        return cls()

    def to_json(self) -> str | dict[str, Any]:
        """The name, or ``{"name": ..., **params}`` for a family with parameters."""
        params = self.params()
        return {"name": self.name, **params} if params else self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Family) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        params = self.params()
        return f"{type(self).__name__}({params})" if params else f"{type(self).__name__}()"


class Normal(Family):
    """The identity: the feature itself is Gaussian per cell."""

    name = "normal"

    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        return x

    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        return z

    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        return np.zeros_like(x)


class LogNormal(Family):
    r"""``log x`` is Gaussian per cell: :math:`\phi^{-1}(x) = \log x` on :math:`x > 0`."""

    name = "lognormal"
    domain = "a non-positive value (the family takes positive values only)"
    domain_fix = "use family 'normal' for it or shift it to be positive (e.g. x + 1)"

    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        return np.log(x)

    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        return np.exp(z)

    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        return -np.log(x)

    def domain_error(self, x: Array) -> int | None:
        bad = np.flatnonzero(~(x > 0))
        return int(bad[0]) if bad.size else None


class Log1p(Family):
    r""":math:`\log(1 + x)` is Gaussian per cell, on :math:`x > -1` (counts with zeros)."""

    name = "log1p"
    domain = "a value <= -1 (the family takes values above -1 only)"
    domain_fix = "use family 'normal' or 'yeo-johnson' for it"

    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        return np.log1p(x)

    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        return np.expm1(z)

    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        return -np.log1p(x)

    def domain_error(self, x: Array) -> int | None:
        bad = np.flatnonzero(~(x > -1))
        return int(bad[0]) if bad.size else None


class _Fitted(Family):
    """A family with parameters fitted on pooled rows or per group (never per class).

    Subclasses implement the one-sample methods ``_fit_one(x) -> dict`` and
    ``_forward_one`` / ``_inverse_one`` / ``_log_jacobian_one(values, p)`` for
    one parameter set ``p``, and ``_check_one(p)`` for parameters read from JSON.
    With ``by_group`` the parameters are a list, one set per group code
    ``0..m-1`` (the model's group order), and every transform needs the codes.
    """

    def __init__(self, by_group: bool = False, fitted: list[dict[str, Any]] | None = None):
        self.by_group = bool(by_group)
        self._sets = fitted

    @property
    def fitted(self) -> bool:
        return self._sets is not None

    @property
    def n_groups(self) -> int | None:
        """The number of groups a per-group family was fitted on (None if pooled)."""
        return len(self._sets) if self.by_group and self._sets is not None else None

    # ---- one parameter set (subclasses)
    @abstractmethod
    def _fit_one(self, x: Array) -> dict[str, Any]: ...

    @abstractmethod
    def _forward_one(self, x: Array, p: dict[str, Any]) -> Array: ...

    @abstractmethod
    def _inverse_one(self, z: Array, p: dict[str, Any]) -> Array: ...

    @abstractmethod
    def _log_jacobian_one(self, x: Array, p: dict[str, Any]) -> Array: ...

    @classmethod
    @abstractmethod
    def _check_one(cls, p: dict[str, Any]) -> dict[str, Any]: ...

    # ---- the seam
    def fit(self, x: Array, groups: Codes | None = None, n_groups: int = 1) -> Family:
        x = np.asarray(x, dtype=np.float64)
        if not self.by_group:
            return type(self)(False, [self._fit_one(x)])
        if groups is None:
            raise InputError(
                f"family {self.name!r} with by_group needs the group of every row to be fitted"
            )
        groups = np.asarray(groups, dtype=np.intp)
        sets = []
        for a in range(n_groups):
            rows = x[groups == a]
            try:
                sets.append(self._fit_one(rows))
            except InputError as exc:
                raise InputError(f"group {a}: {exc}") from None
        return type(self)(True, sets)

    def _apply(self, fn: str, values: Array, groups: Codes | None) -> Array:
        if self._sets is None:
            raise InputError(f"family {self.name!r} is not fitted yet; fit it first")
        method = getattr(self, fn)
        if not self.by_group:
            return method(values, self._sets[0])
        if groups is None:
            raise InputError(
                f"family {self.name!r} was fitted per group, so it needs the group of every "
                "row; pass the group codes"
            )
        groups = np.asarray(groups, dtype=np.intp)
        if groups.shape != values.shape[:1]:
            raise InputError(f"{values.shape[0]} values but {groups.shape[0]} group codes")
        if groups.size and (groups.min() < 0 or groups.max() >= len(self._sets)):
            raise InputError(
                f"family {self.name!r} was fitted on {len(self._sets)} groups, got group code "
                f"{int(groups.max() if groups.max() >= len(self._sets) else groups.min())}"
            )
        out = np.empty_like(values, dtype=np.float64)
        for a, p in enumerate(self._sets):
            rows = groups == a
            if rows.any():
                out[rows] = method(values[rows], p)
        return out

    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        return self._apply("_forward_one", np.asarray(x, dtype=np.float64), groups)

    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        return self._apply("_inverse_one", np.asarray(z, dtype=np.float64), groups)

    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        return self._apply("_log_jacobian_one", np.asarray(x, dtype=np.float64), groups)

    # ---- JSON
    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by_group": True} if self.by_group else {}
        if self._sets is None:
            return out
        if self.by_group:
            out["groups"] = [dict(p) for p in self._sets]
        else:
            out.update(self._sets[0])
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Family:
        params = dict(params)
        by_group = params.pop("by_group", False)
        if not isinstance(by_group, bool):
            raise InputError(f"family {cls.name!r}: by_group must be true or false")
        if by_group:
            sets = params.pop("groups", None)
            if params:
                raise InputError(
                    f"family {cls.name!r} with by_group takes its parameters under 'groups', "
                    f"got {sorted(params)}"
                )
            if sets is None:
                return cls(True, None)
            if not isinstance(sets, list) or not sets:
                raise InputError(f"family {cls.name!r}: 'groups' must be a non-empty list")
            return cls(True, [cls._check_params(p) for p in sets])
        if not params:
            return cls(False, None)
        return cls(False, [cls._check_params(params)])

    @classmethod
    def _check_params(cls, p: Any) -> dict[str, Any]:
        if not isinstance(p, dict):
            raise InputError(f"family {cls.name!r}: parameters must be an object, got {p!r}")
        try:
            return cls._check_one(p)
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"family {cls.name!r}: malformed parameters ({exc})") from None

    def __hash__(self) -> int:
        return hash((self.name, self.by_group))

    def __repr__(self) -> str:
        if self._sets is None:
            return f"{type(self).__name__}(by_group={self.by_group}, unfitted)"
        return f"{type(self).__name__}({self.params()})"


def _finite_sample(x: Array, name: str, need: int = 2) -> Array:
    x = np.asarray(x, dtype=np.float64)
    if not all_finite(x):
        raise InputError(f"family {name!r} cannot be fitted on NaN or inf; drop those rows")
    if np.unique(x).size < need:
        raise InputError(
            f"family {name!r} needs at least {need} distinct values to be fitted, got "
            f"{np.unique(x).size}; use family 'normal' for that feature or drop it"
        )
    return x


# ------------------------------------------------------------ Yeo-Johnson
# lambda is restricted to [0, 2]: only there does the transform map the real
# line ONTO the real line (for lambda < 0 it is bounded above by -1/lambda, for
# lambda > 2 bounded below by 1/(2 - lambda)), so a steered Gaussian-scale value
# always has a preimage.
YJ_LAMBDA_RANGE = (0.0, 2.0)
# Coarse grid before the bounded Brent refinement: the profile log-likelihood is
# smooth in lambda; a grid step of 0.05 brackets its maximum unless two local
# maxima lie within a step of each other (the refinement then finds one of them).
_YJ_GRID = np.linspace(0.0, 2.0, 41)


def yeo_johnson(u: ArrayLike, lam: float) -> Array:
    r"""The Yeo-Johnson transform :math:`\psi(\lambda, u)` (Yeo and Johnson 2000, eq. 2.1).

    .. math::

        \psi(\lambda, u) = \begin{cases}
          ((u + 1)^\lambda - 1) / \lambda & u \ge 0, \lambda \ne 0 \\
          \log(u + 1) & u \ge 0, \lambda = 0 \\
          -((1 - u)^{2 - \lambda} - 1) / (2 - \lambda) & u < 0, \lambda \ne 2 \\
          -\log(1 - u) & u < 0, \lambda = 2
        \end{cases}

    computed as ``expm1(lambda * log1p(u)) / lambda`` (stable near lambda = 0).
    """
    u = np.asarray(u, dtype=np.float64)
    pos = u >= 0
    out = np.empty_like(u)
    lp = np.log1p(u[pos])
    out[pos] = lp if lam == 0 else np.expm1(lam * lp) / lam
    ln = np.log1p(-u[~pos])
    out[~pos] = -ln if lam == 2 else -np.expm1((2 - lam) * ln) / (2 - lam)
    return out


def _yeo_johnson_inverse(z: Array, lam: float) -> Array:
    pos = z >= 0
    out = np.empty_like(z)
    zp = z[pos]
    out[pos] = np.expm1(zp) if lam == 0 else np.expm1(np.log1p(lam * zp) / lam)
    zn = z[~pos]
    out[~pos] = -np.expm1(-zn) if lam == 2 else -np.expm1(np.log1p(-(2 - lam) * zn) / (2 - lam))
    return out


def yeo_johnson_llf(u: ArrayLike, lam: float) -> float:
    r"""Profile log-likelihood of lambda (Yeo and Johnson 2000, section 3).

    .. math::

        \ell(\lambda) = -\tfrac{n}{2}\log\hat\sigma^2(\lambda)
            + (\lambda - 1)\sum_k \operatorname{sign}(u_k)\log(1 + |u_k|),

    with :math:`\hat\sigma^2(\lambda)` the ML variance of :math:`\psi(\lambda, u)`.
    """
    u = np.asarray(u, dtype=np.float64)
    var = np.var(yeo_johnson(u, lam))
    if not var > 0:
        return -np.inf
    return float(-0.5 * u.size * np.log(var) + (lam - 1) * np.sum(np.sign(u) * np.log1p(np.abs(u))))


def yeo_johnson_lambda(u: ArrayLike) -> float:
    """The maximum-likelihood lambda of :func:`yeo_johnson_llf` on [0, 2].

    A grid over [0, 2] (step 0.05), then bounded Brent minimisation of the
    negative profile log-likelihood around the best grid point (``xatol`` 1e-9).
    """
    from scipy.optimize import minimize_scalar

    u = np.asarray(u, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        grid = np.array([yeo_johnson_llf(u, lam) for lam in _YJ_GRID])
        k = int(np.argmax(grid))
        lo, hi = _YJ_GRID[max(k - 1, 0)], _YJ_GRID[min(k + 1, _YJ_GRID.size - 1)]
        res = minimize_scalar(
            lambda lam: -yeo_johnson_llf(u, lam),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-9},
        )
    best = float(res.x) if -res.fun >= grid[k] else float(_YJ_GRID[k])
    return float(np.clip(best, *YJ_LAMBDA_RANGE))


class YeoJohnson(_Fitted):
    r"""Yeo-Johnson power transform of the column in units of its root mean square.

    :math:`\phi^{-1}(x) = \psi(\lambda, x / s)` with :math:`\psi` of
    :func:`yeo_johnson`, :math:`s = \sqrt{\overline{x^2}}` (so lambda does not
    depend on the column's units; zero, the transform's fixed point, is kept)
    and :math:`\lambda` the maximum-likelihood estimate restricted to [0, 2]
    (:func:`yeo_johnson_lambda`), where the transform is a bijection of the real
    line. Fitted on pooled rows or, with ``by_group``, per group. JSON:
    ``{"name": "yeo-johnson", "lambda": l, "scale": s}``.

    References
    ----------
    Yeo, I.-K. and Johnson, R. A. (2000). A new family of power transformations
    to improve normality or symmetry. *Biometrika* 87(4), 954-959.
    doi:10.1093/biomet/87.4.954
    """

    name = "yeo-johnson"

    def _fit_one(self, x: Array) -> dict[str, Any]:
        x = _finite_sample(x, self.name)
        scale = float(np.sqrt(np.mean(x**2)))
        return {"lambda": yeo_johnson_lambda(x / scale), "scale": scale}

    def _forward_one(self, x: Array, p: dict[str, Any]) -> Array:
        return yeo_johnson(x / p["scale"], p["lambda"])

    def _inverse_one(self, z: Array, p: dict[str, Any]) -> Array:
        return _yeo_johnson_inverse(z, p["lambda"]) * p["scale"]

    def _log_jacobian_one(self, x: Array, p: dict[str, Any]) -> Array:
        u = x / p["scale"]
        lam = p["lambda"]
        # d psi / du = (1 + u)^(lambda - 1) for u >= 0, (1 - u)^(1 - lambda) for u < 0
        slope = np.where(u >= 0, (lam - 1) * np.log1p(np.abs(u)), (1 - lam) * np.log1p(np.abs(u)))
        return slope - np.log(p["scale"])

    @classmethod
    def _check_one(cls, p: dict[str, Any]) -> dict[str, Any]:
        if set(p) != {"lambda", "scale"}:
            raise InputError(
                f"family 'yeo-johnson' takes parameters lambda and scale, got {sorted(p)}"
            )
        lam, scale = float(p["lambda"]), float(p["scale"])
        if not YJ_LAMBDA_RANGE[0] <= lam <= YJ_LAMBDA_RANGE[1]:
            raise InputError(f"family 'yeo-johnson': lambda must lie in [0, 2], got {lam}")
        if not (np.isfinite(scale) and scale > 0):
            raise InputError(f"family 'yeo-johnson': scale must be positive, got {scale}")
        return {"lambda": lam, "scale": scale}


# ----------------------------------------------------------- normal scores
#: Largest number of knots a normal-scores transform stores (per group).
MAX_KNOTS = 1000


def knot_count(n: int) -> int:
    r"""Knots of a normal-scores fit on n values: :math:`\min(1000, \lceil\sqrt n\rceil)`.

    A segment's slope estimates the density from the ~n/k values between its
    knots (relative error ~ (n/k)^-1/2), while the interpolation error of the
    smooth quantile function grows with the spacing 1/k: k ~ sqrt(n) keeps
    both small. Knots at every value would make the log-Jacobian (and so the
    held-out likelihood of ``auto``) as noisy as the log of sample spacings,
    about 0.2 nats per row worse on a Gaussian sample.
    """
    return int(min(MAX_KNOTS, max(2, np.ceil(np.sqrt(n)))))


# Share of the knots over which each linear tail's slope is measured (the
# secant from the outermost knot to the knot this far in): one segment alone
# would make the tail as noisy as the two most extreme sample values.
TAIL_SHARE = 0.1


class NormalScores(_Fitted):
    r"""Interpolated empirical quantile transform to N(0, 1) with linear tails.

    Knots are the distinct sample values :math:`v_1 < \dots < v_U` with the
    normal scores of their mid-ranks,
    :math:`z_k = \Phi^{-1}((c_{k-1} + c_k) / 2n)` (:math:`c_k` the number of
    values :math:`\le v_k`; ties share one knot, so both sequences are strictly
    increasing). With more than :func:`knot_count` (about sqrt(n), at most
    :data:`MAX_KNOTS`) distinct values, knots are kept at evenly spaced
    mid-rank levels (the smallest and largest value always). Between
    knots the transform is linear; beyond them it continues linearly with the
    slope of the secant over the outer :data:`TAIL_SHARE` of the knots, so it is
    a strictly increasing piecewise-linear bijection of the real line.
    Every knot maps exactly to its value's normal score (without ties the k-th
    smallest value to :math:`\Phi^{-1}((k - 1/2)/n)`); values between knots
    are interpolated.

    JSON: ``{"name": "normal-scores", "x": [...], "z": [...]}``.

    References
    ----------
    Van der Waerden, B. L. (1952). Order tests for the two-sample problem and
    their power. *Indagationes Mathematicae* 14, 453-458.
    """

    name = "normal-scores"

    def _fit_one(self, x: Array) -> dict[str, Any]:
        from scipy.special import ndtri

        x = _finite_sample(x, self.name)
        values, counts = np.unique(x, return_counts=True)
        cum = np.cumsum(counts)
        levels = (cum - counts / 2.0) / x.size
        n_knots = knot_count(x.size)
        if values.size > n_knots:
            targets = np.linspace(levels[0], levels[-1], n_knots)
            keep = np.unique(np.clip(np.searchsorted(levels, targets), 0, values.size - 1))
            keep = np.union1d(keep, [0, values.size - 1])
            values, levels = values[keep], levels[keep]
        return {"x": values.tolist(), "z": ndtri(levels).tolist()}

    @staticmethod
    def _knots(p: dict[str, Any]) -> tuple[Array, Array, float, float]:
        xk, zk = p["_x"], p["_z"]
        k = max(1, round(TAIL_SHARE * (xk.size - 1)))
        left = (zk[k] - zk[0]) / (xk[k] - xk[0])
        right = (zk[-1] - zk[-1 - k]) / (xk[-1] - xk[-1 - k])
        return xk, zk, left, right

    def _forward_one(self, x: Array, p: dict[str, Any]) -> Array:
        xk, zk, left, right = self._knots(self._arrays(p))
        out = np.interp(x, xk, zk)
        lo, hi = x < xk[0], x > xk[-1]
        out[lo] = zk[0] + left * (x[lo] - xk[0])
        out[hi] = zk[-1] + right * (x[hi] - xk[-1])
        return out

    def _inverse_one(self, z: Array, p: dict[str, Any]) -> Array:
        xk, zk, left, right = self._knots(self._arrays(p))
        out = np.interp(z, zk, xk)
        lo, hi = z < zk[0], z > zk[-1]
        out[lo] = xk[0] + (z[lo] - zk[0]) / left
        out[hi] = xk[-1] + (z[hi] - zk[-1]) / right
        return out

    def _log_jacobian_one(self, x: Array, p: dict[str, Any]) -> Array:
        xk, zk, left, right = self._knots(self._arrays(p))
        slopes = np.concatenate([[left], np.diff(zk) / np.diff(xk), [right]])
        return np.log(slopes[np.searchsorted(xk, x, side="right")])

    @staticmethod
    def _arrays(p: dict[str, Any]) -> dict[str, Any]:
        if "_x" not in p:  # cached float arrays beside the JSON lists
            p["_x"] = np.asarray(p["x"], dtype=np.float64)
            p["_z"] = np.asarray(p["z"], dtype=np.float64)
        return p

    @classmethod
    def _check_one(cls, p: dict[str, Any]) -> dict[str, Any]:
        if set(p) != {"x", "z"}:
            raise InputError(f"family 'normal-scores' takes parameters x and z, got {sorted(p)}")
        xk = np.asarray(p["x"], dtype=np.float64)
        zk = np.asarray(p["z"], dtype=np.float64)
        if xk.ndim != 1 or xk.shape != zk.shape or xk.size < 2 or xk.size > MAX_KNOTS + 2:
            raise InputError(
                "family 'normal-scores': x and z must be lists of the same length, "
                f"2 to {MAX_KNOTS} knots"
            )
        if not (
            all_finite(xk)
            and all_finite(zk)
            and np.all(np.diff(xk) > 0)
            and np.all(np.diff(zk) > 0)
        ):
            raise InputError(
                "family 'normal-scores': knots x and z must be finite and strictly increasing"
            )
        return {"x": xk.tolist(), "z": zk.tolist()}

    def params(self) -> dict[str, Any]:
        out = super().params()
        for p in [out, *out.get("groups", [])]:
            p.pop("_x", None)
            p.pop("_z", None)
        return out


# --------------------------------------------------------------------- auto
class Auto(Family):
    """Placeholder resolved per feature by :func:`choose_family` when fitted.

    Needs the class labels as well as the groups (held-out likelihood of a
    class-conditional fit); a fitted model never holds ``auto``, only the
    family it chose.
    """

    name = "auto"

    def __init__(self, by_group: bool = False) -> None:
        self.by_group = bool(by_group)

    @property
    def fitted(self) -> bool:
        return False

    def _unfitted(self) -> NoReturn:
        raise InputError("family 'auto' must be fitted (with class labels) before use")

    def forward(self, x: Array, groups: Codes | None = None) -> Array:
        self._unfitted()

    def inverse(self, z: Array, groups: Codes | None = None) -> Array:
        self._unfitted()

    def log_jacobian(self, x: Array, groups: Codes | None = None) -> Array:
        self._unfitted()

    def fit(self, x: Array, groups: Codes | None = None, n_groups: int = 1) -> Family:
        raise InputError(
            "family 'auto' needs the class labels to be fitted; use fit_model or "
            "Families.fit(X, groups, n_groups, classes=y_codes)"
        )

    def params(self) -> dict[str, Any]:
        return {"by_group": True} if self.by_group else {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Family:
        params = dict(params)
        by_group = params.pop("by_group", False)
        if params or not isinstance(by_group, bool):
            raise InputError(f"family 'auto' takes only by_group, got {sorted(params)}")
        return cls(by_group)


#: Registered families by name (:func:`register_family` adds one).
FAMILIES: dict[str, type[Family]] = {
    "normal": Normal,
    "lognormal": LogNormal,
    "log1p": Log1p,
    "yeo-johnson": YeoJohnson,
    "normal-scores": NormalScores,
    "auto": Auto,
}
#: Other spellings accepted for a family name.
ALIASES = {"identity": "normal", "log": "lognormal", "log-normal": "lognormal"}
#: Suffix of a name that asks for a per-group fit, e.g. ``"yeo-johnson-by-group"``.
BY_GROUP = "-by-group"
#: The candidates of ``auto``, simplest first (the order breaks near-ties).
AUTO_CANDIDATES = ("normal", "lognormal", "log1p", "yeo-johnson", "normal-scores")
#: Share of the rows held out by ``auto``'s criterion.
AUTO_HOLDOUT = 0.2


def register_family(cls: type[Family]) -> type[Family]:
    """Register a :class:`Family` subclass under its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError("register_family takes a Family subclass")
    FAMILIES[cls.name] = cls
    return cls


def _unknown(name: Any) -> InputError:
    known = ", ".join(repr(n) for n in FAMILIES)
    return InputError(
        f"family must be one of {known}, got {name!r} (unknown); a parametric one may end "
        f"in {BY_GROUP!r} to be fitted per group"
    )


def _one(spec: str | Family | dict[str, Any]) -> Family:
    if isinstance(spec, Family):
        return spec
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
    else:
        name, params = spec, {}
    if not isinstance(name, str):
        raise _unknown(name)
    name = ALIASES.get(name, name)
    if name not in FAMILIES and name.endswith(BY_GROUP):
        base = ALIASES.get(name[: -len(BY_GROUP)], name[: -len(BY_GROUP)])
        cls = FAMILIES.get(base)
        if cls is None or not issubclass(cls, _Fitted | Auto):
            if cls is not None:
                raise InputError(
                    f"family {base!r} has no parameters, so it cannot be fitted per group; "
                    f"use {base!r}"
                )
            raise _unknown(name)
        return cls.from_params({**params, "by_group": True})
    if name not in FAMILIES:
        raise _unknown(name)
    return FAMILIES[name].from_params(params)


def dequantize(
    X: ArrayLike, columns: Sequence[int] | None = None, seed: int = 0, first_row: int = 0
) -> Array:
    r"""Spread integer values uniformly over a unit interval: :math:`x + U`, :math:`U \sim U[0, 1)`.

    A continuous family cannot describe a column on a lattice (its likelihood
    at lattice points is not a density). Adding independent uniform noise turns
    an integer-valued column into a continuous one whose density is the
    step function of the probabilities of the integers (Theis, van den Oord and
    Bethge 2016, section 3.1), and ``floor`` recovers the integers exactly.
    After steering, the guarantee holds for the dequantised column; its steered
    values are continuous (flooring them back gives integers again, at the cost
    of exactness: the floored column's cell moments are no longer the ideal ones).

    The noise of the value in row r (counted from ``first_row``) and column j
    is a hash of ``(seed, r, j)`` (SplitMix64, Steele, Lea and Flood 2014), not
    a stream: a table dequantised in chunks (``first_row`` = the chunk's first
    row) gets exactly the noise of the whole table dequantised at once.

    Parameters
    ----------
    X : array-like of shape (n, d)
    columns : sequence of int, optional
        Columns to dequantise; default every column whose values are all integers.
    seed : int
        Seed of the noise (a whole number >= 0).
    first_row : int
        Index of the first row of ``X`` in the whole table.

    Returns
    -------
    ndarray
        A copy of ``X`` with the columns dequantised.

    References
    ----------
    Theis, L., van den Oord, A. and Bethge, M. (2016). A note on the evaluation
    of generative models. ICLR. arXiv:1511.01844.
    Steele, G. L., Lea, D. and Flood, C. H. (2014). Fast splittable
    pseudorandom number generators. OOPSLA. doi:10.1145/2660193.2660195
    """
    X = np.array(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    cols = integer_columns(X) if columns is None else [int(j) for j in columns]
    rows = np.arange(first_row, first_row + X.shape[0], dtype=np.uint64)
    key = _splitmix64(np.uint64(seed))
    for j in cols:
        bits = _splitmix64(_splitmix64(rows ^ key) + np.uint64(j))
        X[:, j] += (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return X


def _splitmix64(x: Any) -> Any:
    """The SplitMix64 finaliser (a bijective 64-bit mixer), wrapping arithmetic."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def integer_columns(X: ArrayLike) -> list[int]:
    """Indices of the columns of ``X`` whose every value is a (finite) integer."""
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return [int(j) for j in np.flatnonzero(np.all(np.round(X) == X, axis=0))]


def _cell_loglik(z_train: Array, z_test: Array, c_train: Codes, c_test: Codes) -> Array | None:
    """Held-out log N(z; mu_cell, var_cell) per test row, cells fitted on the train rows."""
    out = np.empty(z_test.size)
    for cell in np.unique(c_test):
        zt = z_train[c_train == cell]
        if zt.size < 2:
            return None
        var = np.var(zt)
        if not (np.isfinite(var) and var > 0):
            return None
        rows = c_test == cell
        out[rows] = -0.5 * (np.log(2 * np.pi * var) + (z_test[rows] - zt.mean()) ** 2 / var)
    return out


def choose_family(
    x: ArrayLike,
    classes: ArrayLike,
    groups: ArrayLike,
    n_groups: int,
    *,
    by_group: bool = False,
    seed: Any = 0,
    candidates: Sequence[str] = AUTO_CANDIDATES,
) -> tuple[Family, dict[str, float]]:
    r"""One feature's family by held-out Gaussian log-likelihood on the data scale.

    Criterion: the rows are split at random (seeded) into 80% training and 20%
    held-out rows. Each candidate family applicable to the column (``lognormal``
    only if every value is positive, ``log1p`` only if every value exceeds -1)
    is fitted on the training rows (pooled, or per group with ``by_group``),
    a Gaussian is fitted per (group, class) cell on its scale, and the held-out
    rows are scored by their log density on the DATA scale,

    .. math::

        \ell_k = \log N(\phi^{-1}(x_k); \mu_{a_k i_k}, \sigma^2_{a_k i_k})
                 + \log\left|\frac{d\phi^{-1}}{dx}(x_k)\right| ,

    so the families are compared as densities of the same variable. The
    simplest candidate (order of :data:`AUTO_CANDIDATES`) whose mean
    :math:`\bar\ell` is within one standard error of the best mean (the
    standard error of the mean paired difference :math:`\ell^{best}_k -
    \ell^{c}_k`) wins: the one-standard-error rule of Breiman et al. (1984,
    section 3.4.3), which keeps a flexible family from winning on noise. The
    winner is then fitted on every row.

    An integer-valued column is scored on a dequantised copy, ``x + U`` with
    ``U ~ U[0, 1)`` drawn from the same seeded generator as the split: a
    density at lattice points is not a likelihood. The data themselves are not
    changed (see :func:`dequantize`); the chosen family is fitted on ``x``.

    Parameters
    ----------
    x : array-like of shape (n,)
    classes, groups : array-like of int codes, shape (n,)
    n_groups : int
    by_group : bool
        Fit the parametric candidates per group.
    seed : int or sequence of int
        Seed of the split and of the dequantisation noise.
    candidates : sequence of str
        Family names, simplest first.

    Returns
    -------
    (Family, dict)
        The chosen family fitted on every row, and every candidate's held-out
        mean log-likelihood in nats per row (-inf where it could not be fitted).

    References
    ----------
    Breiman, L., Friedman, J., Olshen, R. and Stone, C. (1984). *Classification
    and Regression Trees*. Wadsworth.
    """
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(classes, dtype=np.intp)
    g = np.asarray(groups, dtype=np.intp)
    n = x.size
    rng = np.random.default_rng(seed)
    cells = g * (int(c.max()) + 1 if c.size else 1) + c
    xs = x + rng.random(n) if integer_columns(x[:, None]) else x  # scoring copy only
    perm = rng.permutation(n)
    n_test = max(1, round(AUTO_HOLDOUT * n))
    test, train = perm[:n_test], perm[n_test:]
    scores: dict[str, float] = {}
    rows: dict[str, Array] = {}
    for name in candidates:
        fam = _one(f"{name}{BY_GROUP}" if by_group and _parametric(name) else name)
        if fam.domain_error(x) is not None or fam.domain_error(xs) is not None:
            continue
        try:
            with np.errstate(all="ignore"):
                fitted = fam.fit(xs[train], g[train], n_groups)
                ztr = fitted.forward(xs[train], g[train])
                zte = fitted.forward(xs[test], g[test])
                ll = _cell_loglik(ztr, zte, cells[train], cells[test])
                if ll is not None:
                    ll = ll + fitted.log_jacobian(xs[test], g[test])
        except InputError:
            ll = None
        if ll is None or not all_finite(ll):
            scores[name] = -np.inf
            continue
        rows[name] = ll
        scores[name] = float(ll.mean())
    if not rows:
        raise InputError(
            "family 'auto' could not fit any candidate (every cell needs at least two "
            "distinct values in the training split); give the family explicitly"
        )
    best = max(rows, key=lambda k: scores[k])
    chosen = best
    for name in candidates:
        if name not in rows:
            continue
        diff = rows[best] - rows[name]
        se = float(np.std(diff, ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if scores[name] >= scores[best] - se:
            chosen = name
            break
    final = _one(f"{chosen}{BY_GROUP}" if by_group and _parametric(chosen) else chosen)
    return final.fit(x, g, n_groups), scores


def _parametric(name: str) -> bool:
    return issubclass(FAMILIES[name], _Fitted)


class Families:
    """One :class:`Family` per feature.

    Parameters
    ----------
    spec : str, Family, dict, a sequence of those (one per feature), or columns
        A single family applies to every feature (``"auto"`` chooses one per
        feature when fitted, :func:`choose_family`). Columns: a mapping
        ``{column: family}`` or a sequence of ``"COLUMN=FAMILY"`` strings, the
        other features ``normal``; needs ``features``. A family name ending in
        ``"-by-group"`` (or a dict with ``"by_group": true``) is fitted per group.
    n_features : int
        Number of features.
    features : sequence of str, optional
        Feature names (to resolve columns).

    Raises
    ------
    InputError
        For an unknown family or column, or the wrong number of families.
    """

    def __init__(self, spec: Any, n_features: int, features: Sequence[str] | None = None) -> None:
        if isinstance(spec, Families):
            members = spec.members
        elif _is_columns(spec):
            members = _by_column(spec, n_features, features)
        elif isinstance(spec, str | Family | dict):
            members = (_one(spec),) * n_features
        else:
            members = tuple(_one(s) for s in spec)
        if len(members) != n_features:
            raise InputError(
                f"{len(members)} families given for {n_features} features; give one per "
                "feature, one for all, or COLUMN=FAMILY pairs"
            )
        self.members: tuple[Family, ...] = members
        self._identity = np.array([isinstance(f, Normal) for f in members], dtype=bool)

    # ---------------------------------------------------------------- info
    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> tuple[str, ...]:
        """The family name of every feature."""
        return tuple(f.name for f in self.members)

    @property
    def is_identity(self) -> bool:
        """True when every feature is modelled on its own scale."""
        return bool(self._identity.all())

    @property
    def fitted(self) -> bool:
        return all(f.fitted for f in self.members)

    @property
    def n_groups(self) -> int | None:
        """Number of groups the per-group families were fitted on (None: none is per group)."""
        counts = {getattr(f, "n_groups", None) for f in self.members} - {None}
        if len(counts) > 1:
            raise InputError(f"per-group families fitted on different numbers of groups {counts}")
        return counts.pop() if counts else None

    @property
    def group_dependent(self) -> bool:
        """True when a transform depends on the group (forward and inverse need the codes)."""
        return any(getattr(f, "by_group", False) for f in self.members)

    def fit(
        self,
        X: Array,
        groups: Codes | None = None,
        n_groups: int = 1,
        *,
        classes: Codes | None = None,
        seed: int = 0,
    ) -> Families:
        """Fit every family's parameters on the columns of ``X`` (never per class).

        Parameters
        ----------
        X : ndarray of shape (n, d)
            Rows on the data scale (finite).
        groups : ndarray of int codes, optional
            Group code of every row (needed by per-group families and ``auto``).
        n_groups : int
        classes : ndarray of int codes, optional
            Class code of every row: only ``auto`` uses them (its criterion is a
            class-conditional fit), never to fit a transform.
        seed : int
            Seed of ``auto``'s split and dequantised scoring copy (feature j
            uses ``(seed, j)``).
        """
        if self.fitted:
            return self
        fitted = []
        for j, f in enumerate(self.members):
            if f.fitted:
                fitted.append(f)
            elif isinstance(f, Auto):
                if classes is None or groups is None:
                    raise InputError(
                        "family 'auto' needs the class and group of every row to be fitted"
                    )
                fitted.append(
                    choose_family(
                        X[:, j], classes, groups, n_groups, by_group=f.by_group, seed=(seed, j)
                    )[0]
                )
            else:
                fitted.append(f.fit(X[:, j], groups, n_groups))
        return Families(fitted, len(fitted))

    # ----------------------------------------------------------- transforms
    def forward(
        self,
        X: ArrayLike,
        groups: Codes | None = None,
        features: Sequence[str] | None = None,
        *,
        check: bool = True,
        rows: Callable[[int], str] | None = None,
    ) -> Array:
        """Columns of ``X`` on the Gaussian scale (a new array unless all are normal).

        ``rows(k)`` names row k of ``X`` in messages (default ``"row k"``, its
        index; a table reader passes the row of the file).

        Raises
        ------
        InputError
            If ``X`` has the wrong shape, holds NaN or inf (``check``), or a value
            outside a family's domain; the message names the column and the row.
        """
        rows = rows or (lambda k: f"row {k}")
        X = np.asarray(X, dtype=np.float64)
        d = len(self.members)
        if X.ndim != 2 or X.shape[1] != d:
            raise InputError(f"X must have shape (n, {d}), got {X.shape}")
        if check and not all_finite(X):
            row, j = (int(k) for k in np.argwhere(~np.isfinite(X))[0])
            raise InputError(
                f"X column {_name(features, j)} holds {X[row, j]} at {rows(row)}; drop or impute "
                "the rows with NaN or inf first"
            )
        if self.is_identity:
            return X
        Z = X.copy()
        for j in np.flatnonzero(~self._identity):
            fam = self.members[j]
            row = fam.domain_error(X[:, j])
            if row is not None:
                raise InputError(
                    f"{fam.name} feature {_name(features, j)} holds {X[row, j]} at {rows(row)}, "
                    f"{fam.domain}; {fam.domain_fix}"
                )
            Z[:, j] = fam.forward(X[:, j], groups)
        return Z

    def inverse(self, Z: ArrayLike, groups: Codes | None = None) -> Array:
        """Inverse of :meth:`forward` (a new array unless all are normal)."""
        Z = np.asarray(Z, dtype=np.float64)
        if self.is_identity:
            return Z
        X = Z.copy()
        for j in np.flatnonzero(~self._identity):
            X[..., j] = self.members[j].inverse(Z[..., j], groups)
        return X

    def log_jacobian(self, X: ArrayLike, groups: Codes | None = None) -> Array:
        """Row sums of ``log |d phi^-1 / dx|`` (shape (n,))."""
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros(X.shape[0])
        for j in np.flatnonzero(~self._identity):
            out += self.members[j].log_jacobian(X[:, j], groups)
        return out

    # ----------------------------------------------------------------- JSON
    def to_json(self) -> str | list[Any]:
        """One entry when every feature has the same family, else a list."""
        entries = [f.to_json() for f in self.members]
        if all(e == entries[0] for e in entries) and isinstance(entries[0], str):
            return entries[0]
        return entries

    @classmethod
    def from_json(cls, data: Any, n_features: int) -> Families:
        if not isinstance(data, str | list | dict):
            raise InputError(f"family must be a name or a list of names, got {data!r}")
        return cls(data, n_features)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str | list | tuple):
            try:
                other = Families(other, len(self.members))
            except InputError:
                return False
        return isinstance(other, Families) and self.members == other.members

    def __hash__(self) -> int:
        return hash(self.names)

    def __str__(self) -> str:
        names = [f.name + (BY_GROUP if getattr(f, "by_group", False) else "") for f in self.members]
        return names[0] if len(set(names)) == 1 else ", ".join(names)

    def __repr__(self) -> str:
        return f"Families({self.to_json()!r})"


def _is_columns(spec: Any) -> bool:
    """True for ``{column: family}`` or a sequence of ``"COLUMN=FAMILY"`` strings."""
    if isinstance(spec, dict):
        return "name" not in spec
    if isinstance(spec, str) or not isinstance(spec, Sequence):
        return False
    pairs = [isinstance(s, str) and "=" in s for s in spec]
    if any(pairs) and not all(pairs):
        raise InputError(
            "give either one family per feature or COLUMN=FAMILY pairs, not a mix of both"
        )
    return bool(pairs) and all(pairs)


def _by_column(spec: Any, d: int, features: Sequence[str] | None) -> tuple[Family, ...]:
    pairs = list(spec.items()) if isinstance(spec, dict) else [tuple(s.split("=", 1)) for s in spec]
    if features is None:
        raise InputError(
            "families given by column name need the feature names; pass features= (or fit "
            "on a DataFrame)"
        )
    names = [str(f) for f in features]
    members: list[Family] = [Normal()] * d
    for column, family in pairs:
        column = str(column).strip()
        if column not in names:
            raise InputError(
                f"family given for {column!r}, which is not a feature; features: {names}"
            )
        members[names.index(column)] = _one(family.strip() if isinstance(family, str) else family)
    return tuple(members)


def check_family_spec(spec: Any, features: Sequence[str] | None = None) -> None:
    """Raise :class:`InputError` for an unknown family name or a malformed spec (no data needed)."""
    if isinstance(spec, Families):
        return
    if _is_columns(spec):
        pairs = spec.values() if isinstance(spec, dict) else [s.split("=", 1)[1] for s in spec]
        for family in pairs:
            _one(family.strip() if isinstance(family, str) else family)
        if features is not None:
            _by_column(spec, len(features), features)
    elif isinstance(spec, str | Family | dict):
        _one(spec)
    elif isinstance(spec, Sequence):
        for s in spec:
            _one(s)
    else:
        raise InputError(
            f"family must be a name, a list of names or COLUMN=FAMILY pairs, got {spec!r}"
        )


def _name(features: Sequence[str] | None, j: int) -> str:
    return repr(features[j]) if features is not None else f"{j}"
