"""Fairness metrics of a classifier's predictions (:ref:`theory-2`).

All functions take ``sensitive_features=`` like Fairlearn. Gaps are the
max-min spread over groups:

- DP: max over predicted classes j of spread_a P(h=j | A=a);
- EO: spread_a TPR (binary, positive class = the larger label) or, multi-class,
  max over classes i of spread_a P(h=i | Y=i, A=a);
- equalized odds: max over (i, j) of spread_a P(h=j | Y=i, A=a);
- RMS TPR gap: sqrt(mean_i spread_a P(h=i | Y=i, A=a)^2), and its noise
  floor: the gap left by sampling noise alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.stats import encode_labels

__all__ = [
    "confusion_rates",
    "dp_gap",
    "eo_gap",
    "equalized_odds_gap",
    "gap_curves",
    "rms_tpr_gap",
    "rms_tpr_gap_noise_floor",
    "tpr_gaps_per_class",
]

Array = NDArray[np.float64]


def _encode(y_true: ArrayLike | None, y_pred: ArrayLike, sensitive_features: ArrayLike):
    _, g = encode_labels(np.asarray(sensitive_features), None, "group")
    pred = np.asarray(y_pred)
    if pred.shape != g.shape:
        raise InputError(f"y_pred has {pred.size} rows but sensitive_features has {g.size}")
    if g.max(initial=0) < 1:
        raise InputError("fairness gaps need at least two groups in sensitive_features")
    if y_true is None:
        classes, codes = encode_labels(pred, None, "class")
        return g, None, codes, classes
    true = np.asarray(y_true)
    if true.shape != g.shape:
        raise InputError(f"y_true has {true.size} rows but sensitive_features has {g.size}")
    classes = tuple(np.unique(np.concatenate([true, pred])).tolist())
    return (
        g,
        encode_labels(true, classes, "class")[1],
        encode_labels(pred, classes, "class")[1],
        classes,
    )


def confusion_rates(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike
) -> Array:
    """R[a, i, j] = P(h=j | Y=i, A=a); NaN where group a has no class i."""
    g, t, p, classes = _encode(y_true, y_pred, sensitive_features)
    m, K = g.max() + 1, len(classes)
    counts = np.zeros((m, K, K))
    np.add.at(counts, (g, t, p), 1.0)
    totals = counts.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / totals


def _spread(x: Array, axis: int = 0) -> Array:
    return np.nanmax(x, axis=axis) - np.nanmin(x, axis=axis)


def dp_gap(y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """max_j spread_a P(h=j | A=a)."""
    g, _, p, classes = _encode(None, y_pred, sensitive_features)
    sel = np.zeros((g.max() + 1, len(classes)))
    np.add.at(sel, (g, p), 1.0)
    sel /= sel.sum(axis=1, keepdims=True)
    return float(_spread(sel).max())


def tpr_gaps_per_class(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike
) -> Array:
    """spread_a P(h=i | Y=i, A=a) for every class i."""
    R = confusion_rates(y_true, y_pred, sensitive_features=sensitive_features)
    return _spread(np.einsum("aii->ai", R))


def eo_gap(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Binary: spread of the TPR of the larger label; multi-class: max over classes."""
    gaps = tpr_gaps_per_class(y_true, y_pred, sensitive_features=sensitive_features)
    return float(gaps[-1] if gaps.size == 2 else gaps.max())


def equalized_odds_gap(
    y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike
) -> float:
    """max over (i, j) of spread_a P(h=j | Y=i, A=a)."""
    R = confusion_rates(y_true, y_pred, sensitive_features=sensitive_features)
    return float(np.nanmax(_spread(R)))


def rms_tpr_gap(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """sqrt(mean_i TPR-gap_i^2) (:ref:`theory-2`; max-min spread for more than two groups)."""
    gaps = tpr_gaps_per_class(y_true, y_pred, sensitive_features=sensitive_features)
    return float(np.sqrt(np.nanmean(gaps**2)))


def rms_tpr_gap_noise_floor(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    n_permutations: int = 20,
    seed: int | np.random.Generator | None = None,
) -> float:
    """RMS TPR gap left by sampling noise alone (a permutation test's null mean).

    The groups are shuffled within each true class, so every class keeps its
    group counts but the predictions no longer depend on the group; the
    :func:`rms_tpr_gap` of the same predictions is averaged over
    ``n_permutations`` shuffles. A gap near this value is as small as the
    sample can tell (the permutation null of Good 2005, "Permutation,
    Parametric, and Bootstrap Tests of Hypotheses", conditioned on the class
    margins).

    Parameters
    ----------
    y_true, y_pred, sensitive_features : array-like of shape (n,)
    n_permutations : int
    seed : int, Generator or None
        Seed of ``numpy.random.default_rng``.
    """
    if n_permutations < 1:
        raise InputError(f"n_permutations must be at least 1, got {n_permutations}")
    y = np.asarray(y_true)
    g = np.asarray(sensitive_features)
    if g.shape != y.shape:
        raise InputError(f"y_true has {y.size} rows but sensitive_features has {g.size}")
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(n_permutations):
        shuffled = g.copy()
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            shuffled[rows] = rng.permutation(g[rows])
        gaps.append(rms_tpr_gap(y, y_pred, sensitive_features=shuffled))
    return float(np.mean(gaps))


def gap_curves(
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    thresholds: ArrayLike | None = None,
) -> dict[str, Any]:
    """Accuracy and DP / EO / equalized-odds gaps of 1{score >= c} for every threshold c.

    Binary labels (the larger label is positive). With ``thresholds=None`` every
    distinct score is a threshold (plus +inf), so the suprema are exact.
    Cost O(n log n) per group.
    """
    s = np.asarray(scores, dtype=np.float64)
    g, _, _, _ = _encode(y_true, np.zeros(s.shape, dtype=int), sensitive_features)
    y = np.asarray(y_true)
    positive = np.asarray(y == max(np.unique(y)))
    if len(np.unique(y)) != 2:
        raise InputError("gap_curves needs binary labels")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or inf")
    if thresholds is None:
        c = np.unique(np.append(s, np.inf))
    else:
        c = np.sort(np.asarray(thresholds, dtype=np.float64))
    m = g.max() + 1
    tpr, fpr, sel = np.empty((m, c.size)), np.empty((m, c.size)), np.empty((m, c.size))
    correct = np.zeros(c.size)
    for a in range(m):
        for arr, is_pos in ((tpr, True), (fpr, False)):
            vals = np.sort(s[(g == a) & (positive == is_pos)])
            above = vals.size - np.searchsorted(vals, c, side="left")
            arr[a] = above / max(vals.size, 1)
            correct += above if is_pos else vals.size - above
        n_pos = np.sum((g == a) & positive)
        n_a = np.sum(g == a)
        sel[a] = (tpr[a] * n_pos + fpr[a] * (n_a - n_pos)) / n_a
    curves = {
        "thresholds": c,
        "accuracy": correct / s.size,
        "dp": _spread(sel),
        "eo": _spread(tpr),
        "equalized_odds": np.maximum(_spread(tpr), _spread(fpr)),
    }
    curves["sup"] = {k: float(curves[k].max()) for k in ("dp", "eo", "equalized_odds")}
    return curves
