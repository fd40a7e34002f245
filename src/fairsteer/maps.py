"""Steering samples: per-cell optimal-transport affine maps (:ref:`theory-5`).

For every (group, class) cell the least-squared-displacement map from the
fitted cell N(mu, S) to its ideal cell N(mu~, S~) is

    T[a,i](x) = mu~ + A (x - mu),   A = S^-1/2 (S^1/2 S~ S^1/2)^1/2 S^-1/2.

Applied to the samples the model was fitted on (maximum-likelihood moments),
the steered cell has EXACTLY the ideal mean and covariance, so a model refitted
on the steered sample is the ideal model. Shared covariance: A is common to
the classes of a group, only the shift depends on the class.

Prior equalisation (:ref:`theory-4c`): importance weights pi~[i] / pi[a,i], or
stratified resampling.

Unknown labels (test data): ``soft`` = sum_i P(Y=i | x, a) T[a,i](x) with the
fitted (original) posterior; ``hard`` = the map of the predicted (or given)
label; ``none`` = identity (steer the training data only).
Log-normal features are mapped on the log scale and exponentiated back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.bayes import group_codes
from fairsteer.errors import InputError
from fairsteer.kernels import CellKernels
from fairsteer.linalg import gaussian_ot_matrix
from fairsteer.model import GaussianModel
from fairsteer.options import UNLABELED_MODES
from fairsteer.solve.solution import Solution
from fairsteer.stats import encode_labels

__all__ = ["SteeringMaps"]

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class SteeringMaps:
    """Per-cell OT maps from a fitted model to its nearest ideal model.

    Attributes
    ----------
    original, ideal : GaussianModel
        Same groups, classes, features and family.
    A : ndarray (m, K, d, d)
        Linear parts (symmetric positive definite); cell (a, i) maps
        z -> ideal.means[a, i] + A[a, i] (z - original.means[a, i]) on the model scale.
    """

    original: GaussianModel
    ideal: GaussianModel
    A: Array

    @classmethod
    def from_models(cls, original: GaussianModel, ideal: GaussianModel) -> SteeringMaps:
        """OT maps between every cell of two models with the same layout."""
        if original.means.shape != ideal.means.shape or original.groups != ideal.groups:
            raise InputError("original and ideal models must have the same groups, classes, d")
        m, K, d = original.means.shape
        if original.shared_covariance and ideal.shared_covariance:
            per_group = np.stack(
                [
                    gaussian_ot_matrix(original.covariances[a, 0], ideal.covariances[a, 0])
                    for a in range(m)
                ]
            )
            A = np.broadcast_to(per_group[:, None], (m, K, d, d))
        else:
            A = gaussian_ot_matrix(original.covariances, ideal.covariances)
        return cls(original, ideal, A)

    @classmethod
    def from_solution(cls, original: GaussianModel, solution: Solution) -> SteeringMaps:
        """Maps from ``original`` to ``solution.ideal``."""
        return cls.from_models(original, solution.ideal)

    # ----------------------------------------------------------- encoding
    def _codes(self, y: ArrayLike | None, groups: ArrayLike, n: int) -> tuple[Any, Any]:
        g = group_codes(self.original, groups)
        if g.size != n:
            raise InputError(f"X has {n} rows but sensitive features have {g.size}")
        if y is None:
            return None, g
        c = encode_labels(y, self.original.classes, "class")[1]
        if c.size != n:
            raise InputError(f"X has {n} rows but y has {c.size}")
        return c, g

    def _prepare(
        self, X: ArrayLike, y: ArrayLike | None, groups: ArrayLike, model: GaussianModel
    ) -> tuple[Any, NDArray[np.intp], Array]:
        """Label codes, group codes and ``X`` on ``model``'s Gaussian scale."""
        X = np.asarray(X, dtype=np.float64)
        c, g = self._codes(y, groups, X.shape[0] if X.ndim else 0)
        return c, g, model.to_gaussian_scale(X, g)

    def _fresh_to_data(self, Z: Array, g: NDArray[np.intp]) -> Array:
        """The kernels' new output ``Z`` on the data scale (no defensive copy)."""
        return self.original.family.inverse(Z, g)

    @property
    def shared(self) -> bool:
        """True when every class of a group shares its linear part A (shared covariance)."""
        return self.original.shared_covariance and self.ideal.shared_covariance

    @functools.cached_property
    def kernels(self) -> CellKernels:
        """The row formulas of these maps (:class:`fairsteer.kernels.CellKernels`)."""
        return CellKernels(self.original, self)

    @functools.cached_property
    def inverse_kernels(self) -> CellKernels:
        """The row formulas of the inverse maps (ideal -> original)."""
        return CellKernels(self.original, self, inverse=True)

    # ------------------------------------------------------------ samples
    def steer(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike) -> Array:
        """Map labelled samples cell by cell (training data).

        Returns the steered samples on the data scale (log-normal columns are
        mapped on the log scale and exponentiated back).
        """
        c, g, Z = self._prepare(X, y, groups, self.original)
        return self._fresh_to_data(self.kernels.steer(Z, g, c), g)

    def inverse(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike) -> Array:
        """Exact inverse of :meth:`steer` (and of hard-mode ``transform`` with the same labels)."""
        c, g, Z = self._prepare(X, y, groups, self.ideal)
        return self._fresh_to_data(self.inverse_kernels.steer(Z, g, c), g)

    def transform(
        self,
        X: ArrayLike,
        groups: ArrayLike,
        mode: str = "soft",
        y_pred: ArrayLike | None = None,
    ) -> Array:
        """Map samples whose label is unknown.

        Parameters
        ----------
        mode : {"soft", "hard", "none"}
            ``soft``: sum_i P(Y=i | x, a) T[a,i](x) with the fitted posterior;
            ``hard``: T[a,i](x) for the label ``y_pred`` if given, else the most
            probable label under the fitted model; ``none``: identity.
        """
        if mode not in UNLABELED_MODES:
            raise InputError(f"mode must be one of {UNLABELED_MODES}, got {mode!r}")
        c, g, Z = self._prepare(X, y_pred, groups, self.original)
        if mode == "none":
            return self.original.from_gaussian_scale(Z, g)
        lj = self.kernels.logits(Z, g)
        if mode == "hard":
            if c is None:
                c = np.argmax(lj, axis=1)
            return self._fresh_to_data(self.kernels.steer(Z, g, c), g)
        post = np.exp(lj - lj.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        return self._fresh_to_data(self.kernels.soft_steer(Z, g, post), g)

    # ------------------------------------------------------------- priors
    def weights(self, y: ArrayLike, groups: ArrayLike) -> Array:
        """Importance weights pi~[i] / pi[a,i] that give every group the ideal class priors."""
        c, g = self._codes(y, groups, np.asarray(groups).shape[0])
        ratio = self.ideal.class_priors / self.original.class_priors
        return ratio[g, c]

    def resample(
        self, y: ArrayLike, groups: ArrayLike, rng: np.random.Generator | int | None = 0
    ) -> NDArray[np.intp]:
        """Row indices of a stratified resample with the ideal priors.

        Group sizes are kept; within group a, class i gets
        round(n_a * pi~[i]) rows (largest remainders fix the total), drawn
        without replacement when the cell has enough rows, else with.
        """
        rng = np.random.default_rng(rng)
        c, g = self._codes(y, groups, np.asarray(groups).shape[0])
        out = []
        for a in range(self.original.n_groups):
            in_group = g == a
            n_a = int(in_group.sum())
            target = n_a * self.ideal.class_priors[a]
            counts = np.floor(target).astype(int)
            short = n_a - counts.sum()
            counts[np.argsort(counts - target)[:short]] += 1
            for i, k in enumerate(counts):
                rows = np.flatnonzero(in_group & (c == i))
                out.append(rng.choice(rows, size=k, replace=k > rows.size))
        return np.sort(np.concatenate(out))

    # --------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original.to_dict(), "ideal": self.ideal.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringMaps:
        try:
            return cls.from_models(
                GaussianModel.from_dict(data["original"]), GaussianModel.from_dict(data["ideal"])
            )
        except (KeyError, TypeError):
            raise InputError("steering JSON needs 'original' and 'ideal' models") from None
