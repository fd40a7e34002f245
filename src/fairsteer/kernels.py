r"""The per-row formulas of a fitted model, written once for numpy and torch.

:class:`CellKernels` precomputes, with numpy in float64, everything the rows
need from a :class:`~fairsteer.model.GaussianModel` (and optionally its
:class:`~fairsteer.maps.SteeringMaps`), then evaluates on arrays of either
library with the operators both share (``@``, broadcasting, boolean masks):

- class logits (:ref:`theory-2`). Shared covariance (LDA) they are linear in z,
  :math:`\eta_i(z, a) = \ln q_{a,i} + z^T S_a^{-1}\mu_{a,i} - \tfrac12
  \mu_{a,i}^T S_a^{-1}\mu_{a,i}`, one (r x d)(d x K) product per group and no
  squares of z; per-class covariances the full Gaussian log joint
  :math:`\ln q_{a,i} - \tfrac12(d\ln 2\pi + \ln|S_{a,i}| + \|L_{a,i}^{-1}(z -
  \mu_{a,i})\|^2)` with :math:`S = L L^T`;
- the cell maps (:ref:`theory-5`) :math:`z \mapsto \tilde\mu_{a,i} + A_{a,i}(z -
  \mu_{a,i})`, written as :math:`z A^T + \text{shift}_i` so that a shared
  covariance costs one GEMM per group for every class (soft mode too:
  :math:`\sum_i p_i (z A^T + \text{shift}_i) = z A^T + p\,\text{shift}`).

The numpy maps, the Bayes posteriors and the torch module all call these, so
there is one formula for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer._threads import row_parallel
from fairsteer.linalg import solve_triangular
from fairsteer.model import GaussianModel

__all__ = ["CellKernels"]

Array = NDArray[np.float64]


# Rows per chunk of the shared-covariance steer: >= 2048 rows and about 24 MB,
# where single-threaded BLAS runs within a few per cent of one large GEMM.
STEER_CHUNK_BYTES = 24 << 20
# rows and bytes per worker below which one thread steers (see fairsteer.stats)
STEER_PARALLEL_ROWS = 2048
STEER_PARALLEL_BYTES = 2 << 20


def _steer_shared(
    z: Array, groups: NDArray[np.intp], labels: NDArray[np.intp], At: Array, shift: Array
) -> Array:
    """Labelled steer of a shared covariance: ``z A_a^T + shift[a, i]`` row by row.

    The rows are cut into one contiguous slice per core
    (:func:`fairsteer._threads.row_parallel`); a worker takes each group's rows
    of its slice in chunks, gathers them into a reused buffer, multiplies
    them with one BLAS thread, adds the class shifts and scatters them back.
    Every core then does its own gathers and scatters next to its own GEMMs
    instead of the memory-bound passes competing with a multi-threaded GEMM.
    """
    n, d = z.shape
    out = np.empty((n, d))
    step = max(2048, STEER_CHUNK_BYTES // (8 * max(d, 1)))

    def work(lo: int, hi: int) -> None:
        size = min(step, hi - lo)
        buf_in, buf_out = np.empty((size, d)), np.empty((size, d))
        for a in range(shift.shape[0]):
            idx = lo + np.flatnonzero(groups[lo:hi] == a)
            for k in range(0, idx.size, step):
                rows = idx[k : k + step]
                Z, res = buf_in[: rows.size], buf_out[: rows.size]
                # rows are valid indices by construction; mode="raise" would copy `out`
                # through a buffer (a gather 2.7x slower)
                np.take(z, rows, axis=0, out=Z, mode="clip")
                np.matmul(Z, At[a], out=res)
                np.take(shift[a], labels[rows], axis=0, out=Z, mode="clip")
                res += Z
                out[rows] = res

    row_parallel(work, n, max(STEER_PARALLEL_ROWS, STEER_PARALLEL_BYTES // (8 * max(d, 1))))
    return out


def _lower_inverse(L: Array) -> Array:
    """Inverses of a stack of lower-triangular factors, by triangular solves."""
    eye = np.eye(L.shape[-1])
    flat = L.reshape(-1, *L.shape[-2:])
    return np.stack([solve_triangular(Lk, eye, lower=True) for Lk in flat]).reshape(L.shape)


def _empty(z: Any, width: int) -> Any:
    """An uninitialised (n, width) array of ``z``'s library, dtype and device."""
    if hasattr(z, "new_empty"):
        return z.new_empty((z.shape[0], width))
    return np.empty((z.shape[0], width), dtype=z.dtype)


class CellKernels:
    """Row formulas of a model (and optionally its maps), for numpy or torch arrays.

    Parameters
    ----------
    model : GaussianModel
        The fitted model (posteriors are under this model).
    maps : SteeringMaps, optional
        Maps from ``model``; needed for :meth:`steer` and :meth:`soft_steer`.
    full : bool
        Logits as the full log joint (constants included) even for a shared
        covariance; needed where log densities, not only posteriors, matter.
    inverse : bool
        Map from the ideal model back to ``model`` (the inverse cell maps).
    """

    def __init__(
        self, model: GaussianModel, maps: Any = None, *, full: bool = False, inverse: bool = False
    ) -> None:
        m, K, d = model.means.shape
        self.n_groups, self.n_classes = m, K
        self.linear = model.shared_covariance and not full
        p: dict[str, Any] = {}
        if self.linear:
            L = np.linalg.cholesky(model.covariances[:, 0])
            W = np.empty((m, d, K))
            b = np.empty((m, K))
            for a in range(m):
                half = solve_triangular(L[a], model.means[a].T, lower=True)  # L^-1 mu_i, (d, K)
                W[a] = solve_triangular(L[a], half, lower=True, trans="T")  # S^-1 mu_i
                b[a] = np.log(model.priors[a]) - 0.5 * np.sum(half**2, axis=0)
            p.update(W=W, b=b)
        else:
            L = np.linalg.cholesky(np.asarray(model.covariances))
            logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
            p.update(
                mu=np.asarray(model.means),
                LinvT=np.swapaxes(_lower_inverse(L), -1, -2),
                log_const=np.log(model.priors) - 0.5 * (logdet + d * np.log(2.0 * np.pi)),
            )
        self.shared_maps = False
        if maps is not None:
            src, dst = (maps.ideal, maps.original) if inverse else (maps.original, maps.ideal)
            A = np.asarray(maps.A)
            if maps.shared:
                At = np.swapaxes(np.linalg.inv(A[:, 0]) if inverse else A[:, 0], -1, -2)
                self.shared_maps = True
                p.update(At=At, shift=dst.means - src.means @ At)  # (m, d, d), (m, K, d)
            else:
                At = np.swapaxes(np.linalg.inv(A) if inverse else A, -1, -2)  # (m, K, d, d)
                shift = dst.means - np.einsum("akd,akde->ake", src.means, At)
                p.update(At=At, shift=shift)
        self.params = p

    def with_params(self, params: dict[str, Any]) -> CellKernels:
        """A copy evaluating with ``params`` (the same keys, e.g. as torch tensors on a device)."""
        if set(params) != set(self.params):
            raise ValueError(f"kernel parameters must be {sorted(self.params)}")
        out = object.__new__(CellKernels)
        out.__dict__.update(self.__dict__)
        out.params = dict(params)
        return out

    # ------------------------------------------------------------- per group
    def _group_logits(self, z: Any, a: int) -> Any:
        p = self.params
        if self.linear:
            return z @ p["W"][a] + p["b"][a]
        white = (z[None] - p["mu"][a][:, None, :]) @ p["LinvT"][a]  # (K, r, d)
        return (p["log_const"][a][:, None] - 0.5 * (white**2).sum(-1)).T

    def _group_map(self, z: Any, a: int, labels: Any = None, weights: Any = None) -> Any:
        """Rows of group a through their class's map (``labels``) or the ``weights`` mixture."""
        p = self.params
        if self.shared_maps:
            shift = p["shift"][a][labels] if weights is None else weights @ p["shift"][a]
            out = z @ p["At"][a]
            out += shift  # in place: one pass over the rows fewer than ``z @ At + shift``
            return out
        if weights is not None:
            images = z[None] @ p["At"][a] + p["shift"][a][:, None, :]  # (K, r, d)
            return (weights.T[:, :, None] * images).sum(0)
        out = _empty(z, z.shape[1])
        for i in range(self.n_classes):
            rows = labels == i
            out[rows] = z[rows] @ p["At"][a, i] + p["shift"][a, i]
        return out

    def _by_group(self, z: Any, groups: Any, fn: Callable[[Any, Any, int], Any], width: int) -> Any:
        """``out[rows of a] = fn(z[rows], rows, a)`` for every group present."""
        out = _empty(z, width)
        for a in range(self.n_groups):
            rows = groups == a
            if bool(rows.any()):
                out[rows] = fn(z[rows], rows, a)
        return out

    # --------------------------------------------------------------- public
    def logits(self, z: Any, groups: Any) -> Any:
        """Class logits of every row, shape (n, K); their softmax is P(Y | z, a)."""
        return self._by_group(z, groups, lambda zr, _, a: self._group_logits(zr, a), self.n_classes)

    def steer(self, z: Any, groups: Any, labels: Any) -> Any:
        """Every row through its own cell's map, shape (n, d)."""
        if self.shared_maps and isinstance(z, np.ndarray) and z.dtype == np.float64:
            return _steer_shared(z, groups, labels, self.params["At"], self.params["shift"])
        return self._by_group(
            z, groups, lambda zr, rows, a: self._group_map(zr, a, labels=labels[rows]), z.shape[1]
        )

    def soft_steer(self, z: Any, groups: Any, posterior: Any) -> Any:
        """The posterior-weighted mixture of the cell maps of every row, shape (n, d)."""
        return self._by_group(
            z,
            groups,
            lambda zr, rows, a: self._group_map(zr, a, weights=posterior[rows]),
            z.shape[1],
        )
