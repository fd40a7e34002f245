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

import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
            covs = np.broadcast_to(check_spd(covs[:, :1], "covariances"), (m, K, d, d))
        else:
            covs = check_spd(covs, "covariances")
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
        raise InputError("X contains NaN or inf; drop or impute those values first")
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
    """Raised by the temporary signal handler of :func:`write_atomic`."""

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
    temporary file is removed before the signal takes its usual effect.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    text : str or bytes
        Its content (str is encoded as UTF-8).
    """
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
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
                fh.write(data)
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
    covs = stats.covariances(covariance)
    if shrinkage is not None:
        if covariance == "shared":
            n_group = stats.counts.sum(axis=1, keepdims=True)
            covs = np.broadcast_to(shrink_covariance(covs[:, :1], n_group, shrinkage), covs.shape)
        else:
            covs = shrink_covariance(covs, stats.counts, shrinkage)
    priors = stats.counts / stats.counts.sum()
    return GaussianModel(priors, stats.means, covs, stats.groups, stats.classes, family, features)


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
    Z = to_model_space(X, mask, features)
    stats = cell_statistics(Z, y, groups, group_labels=group_labels, class_labels=class_labels)
    return model_from_stats(
        stats, covariance=covariance, shrinkage=shrinkage, family=fam, features=features
    )
