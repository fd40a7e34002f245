"""Per-group standardisation of a model (:ref:`theory-4d`) and the span of its class means.

Every solver works on a *standardised* copy of the model: group a's features
are centred at c_a and whitened by a Cholesky factor L_a,

    z = L_a^-1 (x - c_a),

per-class: c_a, L_a L_a^T = mean and covariance of group a's whole feature
law (mixture of its classes); shared: the prior-weighted mean and the shared
within-class covariance. The map (x, a) -> (z, a) is a bijection of the joint
space, so it changes neither the KL of any candidate nor the set of ideal
models (:ref:`theory-4d`); the optimum found in z is mapped back exactly:

    G_a = L_a g_a L_r^-1,   t_a = c_a + L_a tau_a - G_a c_r

(affirmative action with reference r; for all subgroups the reference lives
in group 0's coordinates and r = 0). In z the problem no longer depends on
units or offsets: a year-like column or a column scaled by 10^-5 gives the
same answer as its standardised version.

Shared covariance: every standardised group has covariance I, so only the
span V of the standardised, centred class means (dimension q <= m (K - 1))
differs between groups. The optimal maps are the identity on V's orthogonal
complement and the reference covariance is I there, so the whole problem is
solved in q dimensions at O(m K q^2) cost and lifted back with low-rank
updates: g_a = I + Q (g'_a - I) Q^T for an orthonormal basis Q of V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fairsteer.linalg import solve_triangular
from fairsteer.model import GaussianModel
from fairsteer.solve._maps import cholesky

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Frame:
    """Standardising affine maps of every group: z = L[a]^-1 (x - c[a])."""

    L: Array  # (m, d, d) lower triangular
    c: Array  # (m, d)

    @classmethod
    def of(cls, model: GaussianModel) -> Frame:
        pi = model.class_priors
        c = np.einsum("ak,akd->ad", pi, model.means)
        if model.shared_covariance:
            L = cholesky(model.covariances[:, 0], "covariance")
            return cls(L, c)
        dm = model.means - c[:, None]
        total = np.einsum("ak,akde->ade", pi, model.covariances) + np.einsum(
            "ak,akd,ake->ade", pi, dm, dm
        )
        return cls(cholesky(total, "covariance"), c)

    def means(self, means: Array) -> Array:
        """Standardised means, (m, K, d)."""
        out = np.empty_like(means)
        for a in range(len(self.L)):
            out[a] = solve_triangular(self.L[a], (means[a] - self.c[a]).T, lower=True).T
        return out

    def covariances(self, covs: Array) -> Array:
        """Standardised per-class covariances, (m, K, d, d)."""
        out = np.empty(covs.shape)
        for a in range(len(self.L)):
            for i in range(covs.shape[1]):
                half = solve_triangular(self.L[a], covs[a, i], lower=True)
                out[a, i] = solve_triangular(self.L[a], half.T, lower=True)
        return 0.5 * (out + np.swapaxes(out, -1, -2))

    def unmap(self, a: int, r: int, g: Array, tau: Array) -> tuple[Array, Array]:
        """(G, t) in original coordinates of a map g, tau from frame r to frame a."""
        G = solve_triangular(self.L[r], (self.L[a] @ g).T, lower=True, trans="T").T
        return G, self.c[a] + self.L[a] @ tau - G @ self.c[r]


@dataclass(frozen=True)
class SharedReduction:
    """A shared-covariance model in q = dim(span of standardised class means) dimensions."""

    frame: Frame
    Q: Array  # (d, q) orthonormal basis of V
    y: Array  # (m, K, q) reduced, standardised means (centred per group)

    @classmethod
    def of(cls, model: GaussianModel) -> SharedReduction:
        frame = Frame.of(model)
        z = frame.means(np.asarray(model.means))
        m, K, d = z.shape
        flat = z.reshape(m * K, d)
        U, s, _ = np.linalg.svd(flat.T, full_matrices=False)
        # Rank of the span: singular values above round-off of the largest.
        keep = s > max(s[0], 1e-300) * max(m * K, d) * np.finfo(float).eps if s.size else []
        Q = U[:, keep] if np.any(keep) else np.zeros((d, 0))
        return cls(frame, Q, z @ Q)

    @property
    def q(self) -> int:
        return int(self.Q.shape[1])

    def lift_linear(self, a: int, r: int, g_red: Array) -> Array:
        """G = L_a (I + Q (g' - I) Q^T) L_r^-1 in original coordinates."""
        L = self.frame.L
        base = solve_triangular(L[r], L[a].T, lower=True, trans="T").T  # L_a L_r^-1
        if self.q == 0:
            return base
        LQ = L[a] @ self.Q
        right = solve_triangular(L[r], self.Q, lower=True, trans="T").T  # Q^T L_r^-1
        return base + LQ @ (g_red - np.eye(self.q)) @ right

    def lift_mean(self, a: int, y_red: Array) -> Array:
        """c_a + L_a Q y' for reduced, standardised points y' (rows)."""
        return self.frame.c[a] + (y_red @ self.Q.T) @ self.frame.L[a].T

    def lift_covariance(self, a: int, S_a: Array, C_red: Array) -> Array:
        """L_a (I + Q (C' - I) Q^T) L_a^T = S_a + (L_a Q)(C' - I)(L_a Q)^T."""
        if self.q == 0:
            return np.array(S_a)
        LQ = self.frame.L[a] @ self.Q
        out = S_a + LQ @ (C_red - np.eye(self.q)) @ LQ.T
        return 0.5 * (out + out.T)
