"""Baselines the experiments compare with (:ref:`theory-7`).

- Reweighing (Kamiran and Calders): weights P(a) P(i) / P(a, i), features
  untouched; the law it trains on is the model with priors P(a) P(i).
- Mean matching: shift every group to a common mean.
- Gaussian OT between groups (MiMiC-style): x -> A_a (x - m_a) + m_r, the OT map
  from group a's overall mean and covariance to the reference group's.
- LEACE (Belrose et al. 2023, concept-erasure): the least-squares affine
  eraser of the one-hot group (needs the ``torch`` extra).

The two group maps are affine per group, so (:ref:`theory-5`) they leave the
group-aware Bayes classifier unchanged; they matter for group-blind models.
Each is a function on arrays plus a small frozen object with ``transform``
(samples) and ``transform_model`` (the exact image of a Gaussian model).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.fit import shrink_covariance
from fairsteer.linalg import gaussian_ot_matrix, symmetrize
from fairsteer.model import GaussianModel
from fairsteer.stats import encode_labels

__all__ = [
    "GroupAffineMap",
    "LeaceMap",
    "gaussian_ot_between_groups",
    "leace",
    "mean_matching",
    "reweighing_law",
    "reweighing_weights",
]

Array = NDArray[np.float64]


def reweighing_weights(y: ArrayLike, groups: ArrayLike) -> Array:
    """Kamiran-Calders weights w = P(A=a) P(Y=i) / P(A=a, Y=i) for every row."""
    _, g = encode_labels(groups, None, "group")
    _, c = encode_labels(y, None, "class")
    if g.size != c.size:
        raise InputError(f"y has {c.size} rows but groups has {g.size}")
    n = g.size
    joint = np.zeros((g.max() + 1, c.max() + 1))
    np.add.at(joint, (g, c), 1.0)
    joint /= n
    expected = joint.sum(axis=1)[:, None] * joint.sum(axis=0)[None, :]
    return (expected / joint)[g, c]


def reweighing_law(model: GaussianModel) -> GaussianModel:
    r"""The law a reweighed sample follows: priors :math:`P(A=a)\,P(Y=i)`, cells unchanged.

    Reweighing (Kamiran and Calders 2012, "Data preprocessing techniques for
    classification without discrimination") gives row (a, i) the weight
    :math:`w = P(a) P(i) / P(a, i)`, so the weighted share of cell (a, i) is
    :math:`P(a, i)\, w = P(a) P(i)`: the group and the class become
    independent, while the features keep each cell's law. With
    :math:`P(i) = \sum_a P(a, i)` this returns the model with priors
    ``group_weights[:, None] * priors.sum(axis=0)[None, :]`` and the same
    means and covariances (:ref:`theory-7`).
    """
    p_y = model.priors.sum(axis=0)
    return model.with_params(
        model.group_weights[:, None] * p_y[None, :], model.means, model.covariances
    )


@dataclass(frozen=True, eq=False)
class GroupAffineMap:
    """x -> G[a] x + t[a] for the rows of group a."""

    groups: tuple[Hashable, ...]
    G: Array
    t: Array

    def transform(self, X: ArrayLike, groups: ArrayLike) -> Array:
        X = np.asarray(X, dtype=np.float64)
        _, g = encode_labels(groups, self.groups, "group")
        out = np.empty_like(X)
        for a in range(len(self.groups)):
            rows = g == a
            out[rows] = X[rows] @ self.G[a].T + self.t[a]
        return out

    def transform_model(self, model: GaussianModel) -> GaussianModel:
        """The exact image of a (normal-family) model under the group maps."""
        if list(map(str, model.groups)) != list(map(str, self.groups)):
            raise InputError("model groups differ from the groups the map was fitted on")
        means = np.einsum("ade,ake->akd", self.G, model.means) + self.t[:, None, :]
        Gs = self.G[:, None]
        covs = symmetrize(Gs @ model.covariances @ np.swapaxes(Gs, -1, -2))
        return model.with_params(model.priors, means, covs)


def _group_moments(X: ArrayLike, groups: ArrayLike) -> tuple[tuple[Hashable, ...], Array, Array]:
    X = np.asarray(X, dtype=np.float64)
    labels, g = encode_labels(groups, None, "group")
    if X.ndim != 2 or X.shape[0] != g.size:
        raise InputError("X must be (n, d) with one group label per row")
    means = np.stack([X[g == a].mean(axis=0) for a in range(len(labels))])
    covs = np.stack(
        [np.cov(X[g == a].T, bias=True).reshape(X.shape[1], -1) for a in range(len(labels))]
    )
    return labels, means, covs


def mean_matching(X: ArrayLike, groups: ArrayLike) -> GroupAffineMap:
    """Shift every group so that its mean is the overall mean of X."""
    labels, means, _ = _group_moments(X, groups)
    d = means.shape[1]
    target = np.asarray(X, dtype=np.float64).mean(axis=0)
    return GroupAffineMap(labels, np.repeat(np.eye(d)[None], len(labels), 0), target - means)


def gaussian_ot_between_groups(
    X: ArrayLike,
    groups: ArrayLike,
    reference: Hashable | None = None,
    shrinkage: float | str | None = None,
) -> GroupAffineMap:
    """MiMiC-style Gaussian OT of every group onto the reference group.

    Group a's rows map by x -> m_r + A_a (x - m_a) with
    A_a = gaussian_ot_matrix(S_a, S_r) from the groups' overall means m and
    (maximum-likelihood) covariances S, optionally shrunk as in
    :func:`fairsteer.fit.shrink_covariance` (needed when S is singular,
    e.g. for pooled LayerNorm outputs). Default reference: the largest group.
    """

    labels, means, covs = _group_moments(X, groups)
    _, g = encode_labels(groups, labels, "group")
    covs = shrink_covariance(covs, np.bincount(g, minlength=len(labels)), shrinkage)
    if reference is None:
        r = int(np.argmax(np.bincount(g)))
    else:
        names = [str(x) for x in labels]
        if str(reference) not in names:
            raise InputError(f"unknown reference group {reference!r}; groups are {list(labels)}")
        r = names.index(str(reference))
    A = np.stack([gaussian_ot_matrix(covs[a], covs[r]) for a in range(len(labels))])
    t = means[r] - np.einsum("ade,ae->ad", A, means)
    return GroupAffineMap(labels, A, t)


@dataclass(frozen=True, eq=False)
class LeaceMap:
    """A fitted LEACE eraser: one affine map for every row, whatever its group."""

    eraser: Any  # concept_erasure.LeaceEraser (float64 tensors)

    def transform(self, X: ArrayLike) -> Array:
        r"""Erase: :math:`r(x) = x - P (x - \mu)` in float64 (see :func:`leace`)."""
        import torch

        return self.eraser(torch.tensor(np.asarray(X, dtype=np.float64))).numpy()


def leace(X: ArrayLike, groups: ArrayLike) -> LeaceMap:
    r"""LEACE of the one-hot group, as concept-erasure documents it.

    Least-squares concept erasure (Belrose et al. 2023, "LEACE: Perfect
    linear concept erasure in closed form", Theorem 4.3): with :math:`z` the
    one-hot group, :math:`W = \Sigma_{xx}^{-1/2}` the whitening and
    :math:`P_{W\Sigma_{xz}}` the orthogonal projection onto the column space
    of :math:`W \Sigma_{xz}`, the map

    .. math:: r(x) = x - W^{+} P_{W\Sigma_{xz}} W (x - \mathbb{E}[x])

    is the affine map closest to the identity (in mean squared distance)
    after which the cross-covariance with :math:`z` is zero, so no linear
    predictor of the group beats a constant. Fitted by
    ``concept_erasure.LeaceEraser.fit(X, Z)`` in float64.

    Parameters
    ----------
    X : array-like of shape (n, d)
    groups : array-like of shape (n,)

    Raises
    ------
    InputError
        If the ``torch`` extra (torch, concept-erasure) is not installed, or
        the shapes disagree.
    """
    import warnings

    from fairsteer.extras import require

    require("LEACE", "torch", ["torch", "concept_erasure"])
    import torch

    with warnings.catch_warnings():  # concept-erasure uses torch.jit.script at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from concept_erasure import LeaceEraser

    X = np.asarray(X, dtype=np.float64)
    g = np.asarray(groups)
    if X.ndim != 2 or X.shape[0] != g.shape[0]:
        raise InputError("X must be (n, d) with one group label per row")
    Z = (g[:, None] == np.unique(g)[None, :]).astype(np.float64)
    return LeaceMap(LeaceEraser.fit(torch.tensor(X), torch.tensor(Z)))
