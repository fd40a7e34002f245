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
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.linalg import all_finite

__all__ = ["FAMILIES", "Families", "Family", "LogNormal", "Normal", "register_family"]

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
        """log |d phi^-1 / dx| at x (turns a Gaussian-scale density into a data density)."""

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


#: Registered families by name (:func:`register_family` adds one).
FAMILIES: dict[str, type[Family]] = {"normal": Normal, "lognormal": LogNormal}


def register_family(cls: type[Family]) -> type[Family]:
    """Register a :class:`Family` subclass under its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError("register_family takes a Family subclass")
    FAMILIES[cls.name] = cls
    return cls


def _one(spec: str | Family | dict[str, Any]) -> Family:
    if isinstance(spec, Family):
        return spec
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
    else:
        name, params = spec, {}
    if not isinstance(name, str) or name not in FAMILIES:
        raise InputError(f"family must be one of {tuple(FAMILIES)}, got {name!r}")
    return FAMILIES[name].from_params(params)


class Families:
    """One :class:`Family` per feature.

    Parameters
    ----------
    spec : str, Family, or a sequence of those (one per feature)
        A single family applies to every feature.
    n_features : int
        Number of features.
    """

    def __init__(self, spec: Any, n_features: int) -> None:
        if isinstance(spec, Families):
            members = spec.members
        elif isinstance(spec, str | Family | dict):
            members = (_one(spec),) * n_features
        else:
            members = tuple(_one(s) for s in spec)
        if len(members) != n_features:
            raise InputError(
                f"{len(members)} families given for {n_features} features; give one per feature"
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

    def fit(self, X: Array, groups: Codes | None = None, n_groups: int = 1) -> Families:
        """Fit every family's parameters on the columns of ``X`` (never per class)."""
        if self.fitted:
            return self
        fitted = [f.fit(X[:, j], groups, n_groups) for j, f in enumerate(self.members)]
        return Families(fitted, len(fitted))

    # ----------------------------------------------------------- transforms
    def forward(
        self,
        X: ArrayLike,
        groups: Codes | None = None,
        features: Sequence[str] | None = None,
        *,
        check: bool = True,
    ) -> Array:
        """Columns of ``X`` on the Gaussian scale (a new array unless all are normal).

        Raises
        ------
        InputError
            If ``X`` has the wrong shape, holds NaN or inf (``check``), or a value
            outside a family's domain; the message names the column and the row.
        """
        X = np.asarray(X, dtype=np.float64)
        d = len(self.members)
        if X.ndim != 2 or X.shape[1] != d:
            raise InputError(f"X must have shape (n, {d}), got {X.shape}")
        if check and not all_finite(X):
            row, j = (int(k) for k in np.argwhere(~np.isfinite(X))[0])
            raise InputError(
                f"X column {_name(features, j)} holds {X[row, j]} at row {row}; drop or impute "
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
                    f"{fam.name} feature {_name(features, j)} holds {X[row, j]} at row {row}, "
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
        """Row sums of log |d phi^-1 / dx| (shape (n,))."""
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
        names = self.names
        return names[0] if len(set(names)) == 1 else ", ".join(names)

    def __repr__(self) -> str:
        return f"Families({self.to_json()!r})"


def _name(features: Sequence[str] | None, j: int) -> str:
    return repr(features[j]) if features is not None else f"{j}"
