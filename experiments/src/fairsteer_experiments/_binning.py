"""Unweighted quantile binning in front of ``HistGradientBoostingClassifier``.

scikit-learn >= 1.7 bins a continuous column with sample weights through one
weighted-percentile call per bin edge (254 per column): with the dequantised
(no longer lattice-valued) features and the weights of reweighing, EF and
ExponentiatedGradient, that made each tree fit several times slower. This
transformer computes the bin edges the way the unweighted booster does
(midpoints of the distinct values if there are at most ``max_bins`` of them,
else the ``averaged_inverted_cdf`` percentiles) and replaces each value by its
bin index; the booster then sees at most ``max_bins`` distinct values per
column and reproduces those bins exactly, weights or not (tested against the
unweighted booster on the raw features).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["QuantileBins"]


class QuantileBins(TransformerMixin, BaseEstimator):
    """Map each column to its index among unweighted quantile bins.

    Parameters
    ----------
    max_bins : int
        Number of bins for non-missing values, as in the booster (255).
    """

    def __init__(self, max_bins: int = 255) -> None:
        self.max_bins = max_bins

    def fit(self, X: np.ndarray, y: object = None) -> QuantileBins:
        X = np.asarray(X, dtype=np.float64)
        edges = []
        for col in X.T:
            distinct = np.unique(col)
            if distinct.size <= self.max_bins:
                edges.append((distinct[:-1] + distinct[1:]) / 2)
            else:
                q = np.linspace(0, 100, self.max_bins + 1)[1:-1]
                edges.append(np.unique(np.percentile(col, q, method="averaged_inverted_cdf")))
        self.edges_ = edges
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        # bin i holds edges[i-1] < x <= edges[i]: the count of edges below x
        return np.column_stack(
            [np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(self.edges_)]
        ).astype(np.float64)
