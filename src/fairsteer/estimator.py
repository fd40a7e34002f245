"""``OptimalSteering``: a scikit-learn / imbalanced-learn style pre-processor.

Fits the Gaussian model of the training data, solves for the nearest ideal
model and steers data to it with the per-cell OT maps (:mod:`fairsteer.maps`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.families import Families, Family
from fairsteer.files import read_json, write_atomic
from fairsteer.fit import fit_model
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.options import (
    COVARIANCES,
    METHODS,
    PRIOR_MODES,
    UNLABELED_MODES,
    SolverOptions,
    check_choice,
    check_shrinkage,
)
from fairsteer.solve import Solution, solve
from fairsteer.stats import label_array

__all__ = ["OptimalSteering"]


def _to_array(X: Any) -> tuple[NDArray[np.float64], list[str] | None, Any]:
    """(float array, column names or None, a function wrapping an array like X)."""
    module = type(X).__module__.split(".")[0]
    if module == "pandas":
        names = [str(c) for c in X.columns]
        index, columns = X.index, X.columns

        def wrap(values: NDArray[np.float64], rows: Any = None) -> Any:
            import pandas as pd

            idx = index if rows is None else index[rows]
            return pd.DataFrame(values, index=idx, columns=columns)

        return _frame_values(X, names), names, wrap
    if module == "polars":
        names = list(X.columns)

        def wrap(values: NDArray[np.float64], rows: Any = None) -> Any:
            import polars as pl

            return pl.DataFrame(values, schema=names, orient="row")

        return _frame_values(X, names), names, wrap
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("X must be numeric (a numpy array, pandas or polars frame)") from None
    if arr.ndim != 2:
        raise InputError(f"X must be 2-D (n_samples, n_features), got shape {arr.shape}")
    return arr, None, lambda values, rows=None: values


def _frame_values(X: Any, names: list[str]) -> NDArray[np.float64]:
    """A pandas or polars frame as float64, naming the first non-numeric column."""
    try:
        return np.asarray(X.to_numpy(), dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for name, column in zip(names, X.columns):
        values = np.asarray(X[column].to_numpy(), dtype=object)
        for row, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise InputError(
                    f"X column {name!r} is not numeric (row {row} holds {v!r}); encode it as "
                    "numbers or drop it"
                ) from None
    raise InputError("X must be numeric; encode its columns as numbers")


def _labels(v: Any, what: str) -> NDArray[Any]:
    if hasattr(v, "to_numpy"):
        v = v.to_numpy()
    return label_array(v, what)


class OptimalSteering:
    """Steer training data to the nearest ideal distribution (exact group fairness).

    Parameters
    ----------
    method : {"affirmative", "all-subgroups"}
        Nearest-ideal solver (THEORY 4a / 4b).
    family : "normal", "lognormal" or one per feature
    covariance : {"per-class", "shared"}
    reference : group name, optional
        Affirmative action: the group kept in place (default: smallest KL).
    shrinkage : None, float or "oas"
        Covariance shrinkage for small cells.
    prior_mode : {"weights", "resample", "none"}
        How ``fit_resample`` equalises the class priors across groups:
        importance weights pi~[i]/pi[a,i] in ``sample_weight_`` (rows unchanged),
        a stratified resample, or not at all.
    unlabeled : {"soft", "hard", "none"}
        How ``transform`` treats rows whose label is unknown (THEORY 5).
    seed : int
        Seed of the solvers' random starts and of resampling.
    solver_options : SolverOptions or dict, optional
        Starts, iteration cap and tolerance of the solver
        (:class:`~fairsteer.options.SolverOptions`).

    Attributes
    ----------
    model_ : GaussianModel
    solution_ : Solution
    maps_ : SteeringMaps
    groups_, classes_ : ndarray
    n_features_in_ : int
    feature_names_in_ : ndarray of str (when fitted on a frame)
    sample_weight_ : ndarray (after ``fit_resample`` with prior_mode="weights")

    Notes
    -----
    ``fit`` and ``fit_resample`` need ``sensitive_features=``, so the generic
    scikit-learn estimator checks that call ``fit(X, y)`` do not apply; the
    conventions they check (parameters stored untouched in ``__init__``,
    ``get_params``/``set_params``/``clone``, learned attributes ending in ``_``,
    ``NotFittedError`` before fit, ``n_features_in_`` validation) are tested
    directly. Inside an imbalanced-learn ``Pipeline``, pass the groups through
    metadata routing (``sklearn.set_config(enable_metadata_routing=True)`` and
    ``OptimalSteering().set_fit_resample_request(sensitive_features=True)``) or
    steer outside the pipeline with ``fit_resample``.
    """

    def __init__(
        self,
        method: str = "affirmative",
        family: str | tuple[str, ...] = "normal",
        covariance: str = "per-class",
        reference: Hashable | None = None,
        shrinkage: float | str | None = None,
        prior_mode: str = "weights",
        unlabeled: str = "soft",
        seed: int = 0,
        solver_options: SolverOptions | dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.family = family
        self.covariance = covariance
        self.reference = reference
        self.shrinkage = shrinkage
        self.prior_mode = prior_mode
        self.unlabeled = unlabeled
        self.seed = seed
        self.solver_options = solver_options

    # sklearn parameter protocol without importing sklearn in the core
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "method",
                "family",
                "covariance",
                "reference",
                "shrinkage",
                "prior_mode",
                "unlabeled",
                "seed",
                "solver_options",
            )
        }

    def set_params(self, **params: Any) -> OptimalSteering:
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise InputError(
                    f"invalid parameter {key!r} for OptimalSteering; valid: {sorted(valid)}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"OptimalSteering({args})"

    def __sklearn_tags__(self) -> Any:  # pragma: no cover - only used by sklearn utilities
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=True),
            transformer_tags=TransformerTags(),
        )

    # ------------------------------------------------------------------ fit
    def _validate_params(self) -> None:
        """Check every parameter before any pass over the data."""
        check_choice(self.method, METHODS, "method")
        check_choice(self.prior_mode, PRIOR_MODES, "prior_mode")
        check_choice(self.unlabeled, UNLABELED_MODES, "unlabeled")
        check_choice(self.covariance, COVARIANCES, "covariance")
        check_shrinkage(self.shrinkage)
        spec = self.family
        Families(spec, 1 if isinstance(spec, str | Family) else len(spec))
        if self.reference is not None and self.method != "affirmative":
            raise InputError(
                f"reference applies to method 'affirmative' only, not {self.method!r}; "
                "set reference=None"
            )
        SolverOptions.coerce(self.solver_options)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {seed!r}")

    def fit(self, X: ArrayLike, y: ArrayLike, *, sensitive_features: ArrayLike) -> OptimalSteering:
        """Fit the model of (X, y) per group, solve, and build the steering maps."""
        self._validate_params()
        arr, names, _ = _to_array(X)
        self.model_ = fit_model(
            arr,
            _labels(y, "class"),
            _labels(sensitive_features, "group"),
            family=self.family,
            covariance=self.covariance,
            shrinkage=self.shrinkage,
            features=names,
        )
        self.solution_ = solve(
            self.model_,
            self.method,
            reference=self.reference,
            seed=self.seed,
            options=self.solver_options,
        )
        self._set_fitted(self.model_, self.solution_)
        return self

    def _set_fitted(self, model: GaussianModel, solution: Solution) -> None:
        self.model_, self.solution_ = model, solution
        self.maps_ = SteeringMaps.from_solution(model, solution)
        self.groups_ = np.asarray(model.groups, dtype=object)
        self.classes_ = np.asarray(model.classes, dtype=object)
        self.n_features_in_ = model.n_features
        if model.features is not None:
            self.feature_names_in_ = np.asarray(model.features, dtype=object)

    def _check(self, X: Any) -> tuple[NDArray[np.float64], Any]:
        if not hasattr(self, "maps_"):
            from fairsteer.errors import NotFittedError

            raise NotFittedError(
                "This OptimalSteering instance is not fitted yet; call fit or fit_resample first"
            )
        arr, names, wrap = _to_array(X)
        if arr.shape[1] != self.n_features_in_:
            raise InputError(
                f"X has {arr.shape[1]} features, but OptimalSteering was fitted with "
                f"{self.n_features_in_}"
            )
        fitted = getattr(self, "feature_names_in_", None)
        if names is not None and fitted is not None and list(names) != list(fitted):
            raise InputError(
                f"X has columns {names}, but OptimalSteering was fitted with {list(fitted)}; "
                "pass the same columns in the same order"
            )
        return arr, wrap

    def fit_resample(
        self, X: ArrayLike, y: ArrayLike, *, sensitive_features: ArrayLike
    ) -> tuple[Any, Any]:
        """Fit, then return the steered training set ``(X_steered, y)``.

        With ``prior_mode="weights"`` rows are kept and the prior-equalising
        weights are stored in ``sample_weight_``; with ``"resample"`` the rows
        of a stratified resample are returned (``sample_indices_`` holds them).
        """
        self.fit(X, y, sensitive_features=sensitive_features)
        return self.steer(X, y, sensitive_features=sensitive_features)

    def steer(
        self, X: ArrayLike, y: ArrayLike, *, sensitive_features: ArrayLike
    ) -> tuple[Any, Any]:
        """Steer labelled data with the fitted maps (see :meth:`fit_resample`)."""
        arr, wrap = self._check(X)
        y_arr, g = _labels(y, "class"), _labels(sensitive_features, "group")
        steered = self.maps_.steer(arr, y_arr, g)
        if self.prior_mode == "weights":
            self.sample_weight_ = self.maps_.weights(y_arr, g)
        elif self.prior_mode == "resample":
            rows = self.maps_.resample(y_arr, g, self.seed)
            self.sample_indices_ = rows
            y_out = y.iloc[rows] if hasattr(y, "iloc") else y_arr[rows]
            return wrap(steered[rows], rows), y_out
        else:
            self.sample_weight_ = np.ones(arr.shape[0])
        return wrap(steered), y

    def transform(self, X: ArrayLike, *, sensitive_features: ArrayLike) -> Any:
        """Steer rows whose label is unknown (mode ``unlabeled``)."""
        arr, wrap = self._check(X)
        return wrap(self.maps_.transform(arr, _labels(sensitive_features, "group"), self.unlabeled))

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Settings, fitted model and solution (JSON-ready)."""
        self._check(np.zeros((1, self.n_features_in_)))
        params = self.get_params()
        if not isinstance(params["family"], str):
            params["family"] = Families(params["family"], self.n_features_in_).to_json()
        if isinstance(params["solver_options"], SolverOptions):
            params["solver_options"] = asdict(params["solver_options"])
        return {
            "params": params,
            "model": self.model_.to_dict(),
            "solution": self.solution_.to_dict(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted steering as JSON (atomically); no pickle needed."""
        write_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimalSteering:
        """Inverse of :meth:`to_dict`; every part is validated.

        Raises
        ------
        InputError
            If a part is missing or malformed, a parameter is invalid, or the
            solution does not belong to the model.
        """
        if not isinstance(data, dict) or not {"params", "model", "solution"} <= data.keys():
            raise InputError("not a saved OptimalSteering: needs params, model, solution")
        params, solution = data["params"], data["solution"]
        if not isinstance(params, dict):
            raise InputError(
                f"saved OptimalSteering: 'params' must be an object, got {type(params).__name__}"
            )
        unknown = sorted(set(params) - set(cls().get_params()))
        if unknown:
            raise InputError(f"saved OptimalSteering: unknown parameter(s) {unknown}")
        if not isinstance(solution, dict):
            raise InputError("saved OptimalSteering: 'solution' must be an object")
        kl = solution.get("kl")
        if isinstance(kl, bool) or not isinstance(kl, int | float) or not np.isfinite(kl):
            raise InputError(f"saved OptimalSteering: solution 'kl' must be a number, got {kl!r}")
        params = dict(params)
        if isinstance(params.get("family"), list):
            params["family"] = tuple(params["family"])
        est = cls(**params)
        est._validate_params()
        try:
            model = GaussianModel.from_dict(data["model"])
            sol = Solution.from_dict(solution)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"saved OptimalSteering: malformed model or solution ({exc})"
            ) from None
        if sol.method != est.method:
            raise InputError(
                f"saved OptimalSteering: params say method {est.method!r} but the solution "
                f"was found with {sol.method!r}"
            )
        est._set_fitted(model, sol)
        return est

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OptimalSteering:
        return cls.from_dict(read_json(path))
