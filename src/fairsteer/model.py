"""Gaussian (and log-normal) models of the features per (group, class) cell.

A :class:`GaussianModel` holds, for groups a = 1..m and classes i = 1..K
(THEORY section 1):

- ``priors[a, i]`` = q[a, i] = P(A=a, Y=i), positive, summing to 1;
- ``means[a, i]`` and ``covariances[a, i]``: X | A=a, Y=i ~ N(mean, covariance).

For the log-normal family (per feature, or for all features) the parameters
describe log X: every formula runs on log X, and KL divergences and Bayes
decisions are unchanged by that bijection (THEORY section 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.linalg import all_finite, check_spd
from fairsteer.stats import CellStats, cell_statistics

__all__ = ["FAMILIES", "GaussianModel", "fit_model", "model_from_stats", "shrink_covariance"]

Array = NDArray[np.float64]
FAMILIES = ("normal", "lognormal")
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
    family : {"normal", "lognormal"} or sequence of those, one per feature
        For log-normal features the parameters describe ``log X``.
    features : sequence of str, optional
        Feature names.

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
    family: str | tuple[str, ...] = "normal"
    features: tuple[str, ...] | None = None

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
        shared = covs.strides[1] == 0 or bool(np.all(covs == covs[:, :1]))
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
        set_(self, "family", _family(self.family, d))
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
        """The family of every feature."""
        if isinstance(self.family, str):
            return (self.family,) * self.n_features
        return self.family

    @property
    def log_features(self) -> NDArray[np.bool_]:
        """Boolean mask of the features modelled on the log scale."""
        return np.array([f == "lognormal" for f in self.families])

    @property
    def shared_covariance(self) -> bool:
        """True when every class of a group has the same covariance (LDA case).

        Detected exactly at construction: such models store one covariance per
        group, broadcast over the classes (a JSON round trip keeps the equality).
        """
        return self.n_classes == 1 or self.covariances.strides[1] == 0

    def to_log_space(self, X: ArrayLike) -> Array:
        """Features on the scale the Gaussian describes (log for log-normal columns).

        Raises
        ------
        InputError
            If a log-normal column holds a non-positive value.
        """
        return to_model_space(X, self.log_features, self.features)

    def from_log_space(self, Z: ArrayLike) -> Array:
        """Inverse of :meth:`to_log_space`: exp of the log-normal columns."""
        Z = np.array(Z, dtype=np.float64)
        Z[..., self.log_features] = np.exp(Z[..., self.log_features])
        return Z

    def with_params(
        self, priors: ArrayLike, means: ArrayLike, covariances: ArrayLike
    ) -> GaussianModel:
        """A model with the same names and family and new parameters."""
        return GaussianModel(
            priors, means, covariances, self.groups, self.classes, self.family, self.features
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary of the documented model format."""
        out: dict[str, Any] = {
            "family": self.family if isinstance(self.family, str) else list(self.family),
        }
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
        if isinstance(family, list):
            family = tuple(family)
        try:
            return cls(
                priors=_array(data["priors"], "priors"),
                means=_array(data["means"], "means"),
                covariances=_array(data["covariances"], "covariances"),
                groups=_optional_names(data.get("groups")),
                classes=_optional_names(data.get("classes")),
                family=family,
                features=_optional_names(data.get("features")),  # type: ignore[arg-type]
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


def _family(family: str | Sequence[str], d: int) -> str | tuple[str, ...]:
    if isinstance(family, str):
        if family not in FAMILIES:
            raise InputError(f"family must be one of {FAMILIES}, got {family!r}")
        return family
    fam = tuple(family)
    if len(fam) != d:
        raise InputError(f"{len(fam)} families given for {d} features; give one per feature")
    bad = [f for f in fam if f not in FAMILIES]
    if bad:
        raise InputError(f"family must be one of {FAMILIES}, got {bad[0]!r}")
    return fam[0] if len(set(fam)) == 1 else fam


def to_model_space(
    X: ArrayLike, log_mask: NDArray[np.bool_], features: Sequence[str] | None = None
) -> Array:
    """``X`` as float64 with the masked columns replaced by their log (a copy if any)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != log_mask.size:
        raise InputError(f"X must have shape (n, {log_mask.size}), got {X.shape}")
    if not all_finite(X):
        row, j = (int(k) for k in np.argwhere(~np.isfinite(X))[0])
        name = repr(features[j]) if features is not None else f"{j}"
        raise InputError(
            f"X column {name} holds {X[row, j]} at row {row}; drop or impute the rows with "
            "NaN or inf first"
        )
    if log_mask.any():
        cols = X[:, log_mask]
        if np.any(cols <= 0):
            j = int(np.flatnonzero(log_mask)[np.argwhere(cols <= 0)[0, 1]])
            name = features[j] if features is not None else f"column {j}"
            raise InputError(
                f"log-normal feature {name!r} has a non-positive value; use family 'normal' "
                "for it or shift it to be positive (e.g. log1p-style x + 1)"
            )
        X = X.copy()
        X[:, log_mask] = np.log(cols)
    return X


def parse_json(text: str) -> Any:
    """Parse JSON text.

    Raises
    ------
    InputError
        For malformed JSON, and for JSON nested too deeply for the parser
        (a model is at most four levels deep; this is never a real model).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputError(
            "malformed JSON: nested too deeply to be a fairsteer file; check it is the right file"
        ) from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read and parse a JSON file (UTF-8, a byte-order mark allowed).

    Raises
    ------
    InputError
        If the file is missing, unreadable or not valid JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return parse_json(text)


# Signals that end a process by default while a file is being written: the
# temporary file is removed, then the signal is re-delivered to its old handler.
_CLEANUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Terminated(BaseException):
    """Raised by the temporary signal handler of :func:`atomic_output`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], text: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    Readers see the old file or the complete new one, never a partial one.
    The new file gets the mode of the file it replaces, or else the mode a
    plain ``open(path, "w")`` would give (0666 minus the umask). If the
    process is told to terminate (SIGTERM, SIGHUP) during the write, the
    temporary file is removed before the signal takes its usual effect
    (:func:`atomic_output`).

    Parameters
    ----------
    path : str or path-like
        The file to write.
    text : str or bytes
        Its content (str is encoded as UTF-8).
    """
    data = text.encode() if isinstance(text, str) else text
    with atomic_output(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the ``with`` block succeeds.

    The data go to a temporary file in the same folder that is renamed over
    ``path`` at the end, so readers see the old file or the complete new one;
    the new file gets the mode of the file it replaces, or else 0666 minus
    the umask; on an error, or when the process is told to terminate
    (SIGTERM, SIGHUP) during the block, the temporary file is removed and
    ``path`` is left as it was (a terminating signal then takes its usual
    effect).

    Parameters
    ----------
    path : str or path-like
        The file to write.

    Yields
    ------
    binary file
        Open for writing; closed by the context manager.
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_current_umask()
    # While "active" a terminating signal aborts the write (raises _Terminated);
    # afterwards it is only recorded, and re-delivered once the handlers are back.
    state: dict[str, Any] = {"active": True, "pending": None}
    previous = _install_cleanup_handlers(state)
    tmp = None
    try:
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."
            )
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fchmod(fh.fileno(), mode)
            os.replace(tmp, path)
            tmp = None
        except _Terminated as exc:
            state["pending"] = exc.signum
        finally:
            state["active"] = False
            _remove(tmp)
    except _Terminated as exc:  # arrived in the instant before "active" was cleared
        state["pending"] = exc.signum
    finally:
        _restore_handlers(previous)
    if state["pending"] is not None:
        signal.raise_signal(state["pending"])  # the usual effect: by default, termination
        name = signal.Signals(state["pending"]).name
        raise InterruptedError(f"writing {path} was interrupted by {name}")


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _install_cleanup_handlers(state: dict[str, Any]) -> dict[int, Any]:
    """Make SIGTERM/SIGHUP raise :class:`_Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if state["active"]:
            raise _Terminated(signum)
        state["pending"] = signum

    previous = {}
    for sig in _CLEANUP_SIGNALS:
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN or old is None:
            continue  # ignored (e.g. nohup) or set outside Python: leave it alone
        previous[sig] = old
        signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


# ------------------------------------------------------------- estimation


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
    family: str | Sequence[str] = "normal",
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
    return GaussianModel(priors, stats.means, covs, stats.groups, stats.classes, family, features)


def _suspicious(stats: CellStats) -> bool:
    """True when statistics are non-finite or hold subnormal-range variances.

    A clean sample gives finite statistics whose nonzero variances exceed
    ~1e-292 (the bound of :func:`_check_range`); anything else sends the fit
    through the detailed checks.
    """
    if not (all_finite(stats.means) and all_finite(stats.scatters)):
        return True
    var = np.diagonal(stats.scatters, axis1=-2, axis2=-1) / np.maximum(stats.counts, 1)[..., None]
    floor = np.finfo(np.float64).tiny / np.finfo(np.float64).eps
    return bool(np.any((var > 0) & (var < floor)))


def _check_range(Z: Array, features: Sequence[str] | None) -> None:
    """Reject features whose variances float64 cannot hold (too large or too small).

    The rule lives in :class:`fairsteer.stats.FeatureRange` (shared with the
    streamed fit of the command line).
    """
    from fairsteer.stats import FeatureRange

    rng = FeatureRange(Z.shape[1])
    rng.update(Z)
    rng.check(features)


def fit_model(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    family: str | Sequence[str] = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    features: Sequence[str] | None = None,
    group_labels: Sequence[Hashable] | None = None,
    class_labels: Sequence[Hashable] | None = None,
) -> GaussianModel:
    """Fit a class-conditional Gaussian (or log-normal) model per group.

    Parameters
    ----------
    X : array-like of shape (n, d)
    y : array-like of shape (n,)
        Class labels.
    groups : array-like of shape (n,)
        Group labels (sensitive attribute; intersectional groups are just more
        groups).
    family : {"normal", "lognormal"} or one per feature
        Log-normal features must be positive; the model describes their log.
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
        Equal to ``model_from_stats(cell_statistics(log-transformed X, y, groups))``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    fam = _family(family, X.shape[1])
    mask = np.array(
        [f == "lognormal" for f in ((fam,) * X.shape[1] if isinstance(fam, str) else fam)]
    )
    if mask.any():
        Z = to_model_space(X, mask, features)
    elif X.shape[1] != mask.size:
        raise InputError(f"X must have shape (n, {mask.size}), got {X.shape}")
    else:
        Z = X
    stats = cell_statistics(
        Z, y, groups, group_labels=group_labels, class_labels=class_labels, check_finite=False
    )
    if _suspicious(stats):
        # NaN or inf in X, or values beyond what float64 variances hold, make
        # the statistics non-finite or subnormal: the full checks (extra
        # passes over X, only on this path) name the row, column or feature.
        to_model_space(X, np.zeros_like(mask), features)
        _check_range(Z, features)
    return model_from_stats(
        stats, covariance=covariance, shrinkage=shrinkage, family=fam, features=features
    )
