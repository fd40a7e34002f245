"""Posteriors and the group-aware Bayes-optimal classifier of a model.

THEORY section 2: for a cost matrix C (C[i, j] = cost of predicting j when the
truth is i) the Bayes rule is h_C(x, a) = argmin_j sum_i C[i, j] P(Y=i | x, a).
Binary with cost c for a false positive and 1 - c for a false negative:
h_c(x, a) = 1{P(Y=1 | x, a) >= c}.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from fairsteer.errors import InputError
from fairsteer.kernels import CellKernels
from fairsteer.model import GaussianModel
from fairsteer.stats import encode_labels

__all__ = ["bayes_predict", "class_logits", "group_codes", "log_joint", "posterior"]

Array = NDArray[np.float64]


def group_codes(model: GaussianModel, groups: ArrayLike) -> NDArray[np.intp]:
    """Integer group index of every row, by the model's group names."""
    return encode_labels(groups, model.groups, "group")[1]


def log_joint(model: GaussianModel, Z: ArrayLike, codes: ArrayLike) -> Array:
    r"""``ln P(A=a, Y=i) + ln N(z; mu[a,i], S[a,i])`` for every row and class.

    Parameters
    ----------
    model : GaussianModel
    Z : array-like of shape (n, d)
        Samples on the model's Gaussian scale.
    codes : array-like of shape (n,)
        Integer group index of every row.

    Returns
    -------
    ndarray of shape (n, K)
        Evaluated by :class:`fairsteer.kernels.CellKernels` (``full=True``).
    """
    Z = np.asarray(Z, dtype=np.float64)
    return CellKernels(model, full=True).logits(Z, np.asarray(codes, dtype=np.intp))


def class_logits(model: GaussianModel, Z: ArrayLike, codes: ArrayLike) -> Array:
    r"""The log joint up to a term that depends on the row only: enough for posteriors.

    Shared covariance (LDA) the class-dependent part is linear in z,

    .. math::

        \eta_i(z, a) = \ln q_{a,i} + z^T S_a^{-1} \mu_{a,i}
                       - \tfrac12 \mu_{a,i}^T S_a^{-1} \mu_{a,i},

    one (n x d) by (d x K) product per group and no squares of z (so rows of
    any finite size give finite logits). Per-class covariances: the full
    :func:`log_joint`. Evaluated by :class:`fairsteer.kernels.CellKernels`.
    """
    Z = np.asarray(Z, dtype=np.float64)
    return CellKernels(model).logits(Z, np.asarray(codes, dtype=np.intp))


def posterior(model: GaussianModel, X: ArrayLike, groups: ArrayLike) -> Array:
    """P(Y=i | x, a) for every row, shape (n, K).

    ``X`` is on the data scale (log-normal columns are logged here).
    """
    g = group_codes(model, groups)
    lj = class_logits(model, model.to_gaussian_scale(X, g), g)
    return np.exp(lj - logsumexp(lj, axis=1, keepdims=True))


def bayes_predict(
    model: GaussianModel,
    X: ArrayLike,
    groups: ArrayLike,
    cost: float | ArrayLike = 0.5,
) -> NDArray[np.intp]:
    """Class index predicted by the group-aware Bayes-optimal rule.

    Parameters
    ----------
    cost : float or array-like of shape (K, K)
        A float c in (0, 1) (binary models): predict class 1 iff
        P(Y=1 | x, a) >= c. A matrix C: argmin_j sum_i C[i, j] P(Y=i | x, a).
    """
    post = posterior(model, X, groups)
    C = np.asarray(cost, dtype=np.float64)
    if C.ndim == 0:
        if model.n_classes != 2:
            raise InputError("a scalar cost needs a binary model; pass a K x K cost matrix")
        if not 0.0 < float(C) < 1.0:
            raise InputError(f"cost must lie in (0, 1), got {float(C)}")
        return (post[:, 1] >= float(C)).astype(np.intp)
    K = model.n_classes
    if C.shape != (K, K):
        raise InputError(f"cost matrix must have shape ({K}, {K}), got {C.shape}")
    return np.argmin(post @ C, axis=1).astype(np.intp)
