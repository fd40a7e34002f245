"""Baselines the experiments compare with (:ref:`theory-7`).

- Reweighing (Kamiran and Calders): weights P(a) P(i) / P(a, i), features untouched.
- Mean matching: shift every group to a common mean.
- Gaussian OT between groups (MiMiC-style): x -> A_a (x - m_a) + m_r, the OT map
  from group a's overall mean and covariance to the reference group's.

The two group maps are affine per group, so (:ref:`theory-5`) they leave the
group-aware Bayes classifier unchanged; they matter for group-blind models.
Each is a function on arrays plus a small frozen object with ``transform``
(samples) and ``transform_model`` (the exact image of a Gaussian model).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.fit import shrink_covariance
from fairsteer.linalg import gaussian_ot_matrix, symmetrize
from fairsteer.model import GaussianModel
from fairsteer.stats import encode_labels

__all__ = ["GroupAffineMap", "gaussian_ot_between_groups", "mean_matching", "reweighing_weights"]

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
    :func:`fairsteer.model.shrink_covariance` (needed when S is singular,
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
