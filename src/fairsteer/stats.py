"""Mergeable per-cell sufficient statistics: count, mean and centred scatter.

A *cell* is a (group, class) pair. For the samples of cell (a, i) we keep

- ``counts[a, i]``  = n, the number of samples,
- ``means[a, i]``   = the sample mean,
- ``scatters[a, i]`` = sum_k (x_k - mean)(x_k - mean)^T, the centred scatter.

Two sets of statistics merge exactly (Chan, Golub and LeVeque's parallel
update): with n = n1 + n2 and delta = mean2 - mean1,

    mean = mean1 + delta * n2 / n,
    scatter = scatter1 + scatter2 + delta delta^T * n1 n2 / n,

so ``merge(stats(A), stats(B)) == stats(A ∪ B)`` up to round-off, whatever the
order of the batches. This is what lets a fit run as a map-reduce over batches
(numpy, torch, a distributed engine).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fairsteer._threads import row_parallel
from fairsteer.errors import InputError
from fairsteer.linalg import all_finite

__all__ = [
    "CellStats",
    "FeatureRange",
    "cell_statistics",
    "cell_statistics_from_codes",
    "encode_labels",
    "label_array",
]

Array = NDArray[np.float64]


def encode_labels(
    values: ArrayLike, labels: Sequence[Hashable] | None, what: str
) -> tuple[tuple[Hashable, ...], NDArray[np.intp]]:
    """Map raw labels to integer codes ``0..len(labels)-1``.

    Parameters
    ----------
    values : array-like of shape (n,)
        Raw group or class labels.
    labels : sequence or None
        The label order to use. ``None``: the sorted unique values.
    what : str
        ``"group"`` or ``"class"``, used in error messages.

    Raises
    ------
    InputError
        If a value is not among ``labels``.
    """
    arr = label_array(values, what)
    if labels is None:
        small = small_int_unique(arr)
        if small is not None:
            uniq, codes = small
            return tuple(_py(u) for u in uniq), codes
        try:
            uniq, codes = np.unique(arr, return_inverse=True)
        except TypeError:
            raise InputError(
                f"{what} labels must be strings or numbers; convert them, e.g. to strings"
            ) from None
        return tuple(_py(u) for u in uniq), codes.reshape(-1).astype(np.intp)
    labels = tuple(_py(label) for label in labels)
    codes = _encode_by_search(arr, labels)
    if codes is not None:
        return labels, codes
    lookup = {label: k for k, label in enumerate(labels)}
    lookup.update({str(label): k for k, label in enumerate(labels)})
    try:
        codes = np.fromiter((lookup[_py(v)] for v in arr), dtype=np.intp, count=arr.size)
    except KeyError as exc:
        plural = "classes" if what == "class" else f"{what}s"
        raise InputError(
            f"unknown {what} {exc.args[0]!r}; the known {plural} are {list(labels)}"
        ) from None
    except TypeError:  # an unhashable label
        raise InputError(f"{what} labels must be strings or numbers") from None
    return labels, codes


def small_int_unique(
    arr: NDArray[Any], span: int = 1 << 20
) -> tuple[NDArray[Any], NDArray[np.intp]] | None:
    """``np.unique(arr, return_inverse=True)`` of integers spanning at most ``span`` values.

    ``np.unique`` sorts the n values (O(n log n)); integers in a small range
    are counted instead (O(n + range)), with the same result: the sorted
    distinct values (``arr``'s dtype) and every value's index among them.
    None for anything else (other dtypes, wider ranges, values beyond intp).
    """
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return None
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo >= span or hi > np.iinfo(np.intp).max:
        return None
    offset = arr.astype(np.intp) - lo
    present = np.bincount(offset, minlength=hi - lo + 1) > 0
    code_of = np.cumsum(present) - 1
    uniq = (np.flatnonzero(present) + lo).astype(arr.dtype)
    return uniq, code_of[offset]


def _encode_by_search(arr: NDArray[Any], labels: tuple[Hashable, ...]) -> NDArray[np.intp] | None:
    """Codes of a numpy string or integer array by binary search, or None.

    The vectorised twin of the dictionary lookup of :func:`encode_labels` for
    the common case (numpy strings and string labels, or numpy integers and
    integer labels) where every value is a label; anything else (an unknown
    label, ``"1"`` for label ``1``, object arrays) is left to the lookup, which
    gives the same codes or the error message.
    """
    if not labels or arr.size == 0:
        return None
    if arr.dtype.kind == "U" and all(type(v) is str for v in labels):
        ref = np.array(labels, dtype=str)
    elif arr.dtype.kind == "i" and all(type(v) is int for v in labels):
        try:
            ref = np.array(labels, dtype=np.int64)
        except OverflowError:
            return None
    else:
        return None
    order = np.argsort(ref, kind="stable")
    ordered = ref[order]
    pos = np.minimum(np.searchsorted(ordered, arr), ordered.size - 1)
    if not np.array_equal(ordered[pos], arr):
        return None
    return order[pos].astype(np.intp)


def label_array(values: ArrayLike, what: str) -> NDArray[Any]:
    """``values`` as a 1-D array; missing values and mixed types rejected.

    A Python list of mixed types (``[1, "1"]``) would silently become strings
    under ``np.asarray``, so lists are inspected element by element.

    Parameters
    ----------
    values : array-like of shape (n,)
        Group or class labels.
    what : str
        ``"group"`` or ``"class"``, used in error messages.

    Returns
    -------
    ndarray of shape (n,)

    Raises
    ------
    InputError
        For a missing value (None, NaN, pandas NA) or labels of mixed types.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{what} labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        row = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InputError(
            f"{what} labels contain NaN or inf (first at index {row}); drop or fill those rows"
        )
    if arr.dtype.kind == "O" or (not isinstance(values, np.ndarray) and arr.dtype.kind in "US"):
        obj = np.empty(len(arr), dtype=object)
        obj[:] = list(values) if arr.dtype.kind != "O" else arr
        kinds: dict[str, Any] = {}
        for row, v in enumerate(obj):
            if _is_missing(v):
                raise InputError(
                    f"{what} labels contain a missing value ({v!r} at index {row}); "
                    "drop or fill those rows"
                )
            kinds.setdefault(_kind(v), v)
        if len(kinds) > 1:
            (k1, v1), (k2, v2) = list(kinds.items())[:2]
            raise InputError(
                f"{what} labels mix types ({k1} {v1!r} and {k2} {v2!r}); convert them to one "
                "type, e.g. all strings"
            )
        if arr.dtype.kind == "O":
            return arr
    return arr


def _is_missing(value: object) -> bool:
    """None, NaN, pandas NA / NaT: a value that is not equal to itself or has no truth."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # pandas.NA has no truth value
        return True


def _kind(value: object) -> str:
    if isinstance(value, bool | np.bool_ | int | float | np.number):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _py(value: object) -> Hashable:
    """numpy scalar -> plain Python scalar, so labels print and serialise cleanly."""
    return value.item() if isinstance(value, np.generic) else value  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class CellStats:
    """Count, mean and centred scatter of the samples of every (group, class) cell.

    Attributes
    ----------
    groups, classes : tuple
        Labels of the groups (axis 0) and classes (axis 1).
    counts : ndarray of shape (m, K)
    means : ndarray of shape (m, K, d)
    scatters : ndarray of shape (m, K, d, d), or (m, 1, d, d) when ``pooled``
        Centred scatter matrices ``sum (x - mean)(x - mean)^T`` per cell, or
        per group the pooled within-class scatter ``sum_i scatter[a, i]``
        (all a shared covariance needs: K times less memory and one product
        per group).
    pooled : bool
        Whether ``scatters`` are pooled over the classes of each group.
    """

    groups: tuple[Hashable, ...]
    classes: tuple[Hashable, ...]
    counts: Array
    means: Array
    scatters: Array
    pooled: bool = False

    def as_pooled(self) -> CellStats:
        """The same statistics with the scatters pooled over the classes of each group."""
        if self.pooled:
            return self
        pooled = self.scatters.sum(axis=1, keepdims=True)
        return CellStats(self.groups, self.classes, self.counts, self.means, pooled, True)

    @property
    def n_features(self) -> int:
        return int(self.means.shape[-1])

    def merge(self, other: CellStats) -> CellStats:
        """Statistics of the union of the two samples (labels aligned by name).

        Groups and classes are the union of both, in order of first appearance.
        """
        if self.n_features != other.n_features:
            raise InputError(
                f"cannot merge statistics with {self.n_features} and {other.n_features} features"
            )
        pooled = self.pooled or other.pooled
        if self.groups == other.groups and self.classes == other.classes:
            groups, classes, a, b = self.groups, self.classes, self, other
        else:
            groups = self.groups + tuple(g for g in other.groups if g not in self.groups)
            classes = self.classes + tuple(c for c in other.classes if c not in self.classes)
            a = self._embed(groups, classes)
            b = other._embed(groups, classes)
        if pooled:
            a, b = a.as_pooled(), b.as_pooled()
        n = a.counts + b.counts
        safe = np.where(n > 0, n, 1.0)
        delta = b.means - a.means
        means = a.means + delta * (b.counts / safe)[..., None]
        weight = a.counts * b.counts / safe
        if pooled:
            # sum over the classes of each group of weight * delta delta^T
            between = np.einsum("ak,akd,ake->ade", weight, delta, delta)[:, None]
        else:
            between = weight[..., None, None] * delta[..., :, None] * delta[..., None, :]
        scatters = a.scatters + b.scatters + between
        return CellStats(groups, classes, n, means, scatters, pooled)

    def aligned(self, groups: Sequence[Hashable], classes: Sequence[Hashable]) -> CellStats:
        """The same statistics with the labels in the given order (a permutation or superset).

        Cells that are new to ``self`` get count 0. This is how statistics
        accumulated over batches (labels in order of first appearance) take the
        sorted label order of a one-shot :func:`cell_statistics`.

        Raises
        ------
        InputError
            If a label of ``self`` is missing from ``groups`` or ``classes``.
        """
        groups, classes = tuple(groups), tuple(classes)
        lost = [g for g in self.groups if g not in groups] + [
            c for c in self.classes if c not in classes
        ]
        if lost:
            raise InputError(f"label {lost[0]!r} is missing from the new label order")
        return self._embed(groups, classes)

    def _embed(self, groups: tuple[Hashable, ...], classes: tuple[Hashable, ...]) -> CellStats:
        m, K, d = len(groups), len(classes), self.n_features
        gi = [groups.index(g) for g in self.groups]
        ci = [classes.index(c) for c in self.classes]
        counts = np.zeros((m, K))
        means = np.zeros((m, K, d))
        ix = np.ix_(gi, ci)
        counts[ix] = self.counts
        means[ix] = self.means
        if self.pooled:
            scatters = np.zeros((m, 1, d, d))
            scatters[gi] = self.scatters
        else:
            scatters = np.zeros((m, K, d, d))
            scatters[ix] = self.scatters
        return CellStats(groups, classes, counts, means, scatters, self.pooled)

    def covariances(self, kind: str = "per-class") -> Array:
        """Maximum-likelihood covariances, shape (m, K, d, d).

        ``per-class``: scatter / n per cell. ``shared``: per group, the pooled
        within-class scatter ``sum_i scatter[a, i] / sum_i n[a, i]``, broadcast
        over the classes (a read-only view).
        """
        self.require_all_cells()
        if kind == "per-class":
            if self.pooled:
                raise InputError(
                    "per-class covariances need per-cell statistics; these were pooled "
                    "for a shared covariance (fit with covariance='per-class')"
                )
            return self.scatters / self.counts[..., None, None]
        if kind == "shared":
            pooled = self.scatters.sum(axis=1) / self.counts.sum(axis=1)[:, None, None]
            m, K, d = self.means.shape
            return np.broadcast_to(pooled[:, None], (m, K, d, d))
        raise InputError(f"covariance must be 'shared' or 'per-class', got {kind!r}")

    def require_all_cells(self) -> None:
        """Raise if a class is missing from a group (an empty cell)."""
        empty = np.argwhere(self.counts <= 0)
        if empty.size:
            a, i = empty[0]
            raise InputError(
                f"class {self.classes[i]!r} has no samples in group {self.groups[a]!r}; "
                "every group needs samples of every class (merge or drop that group)"
            )


def cell_statistics(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    group_labels: Sequence[Hashable] | None = None,
    class_labels: Sequence[Hashable] | None = None,
    check_finite: bool = True,
    pooled: bool = False,
) -> CellStats:
    """Per-cell count, mean and centred scatter of a sample.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Features (already log-transformed for log-normal columns).
    y, groups : array-like of shape (n,)
        Class and group label of every row.
    group_labels, class_labels : sequence, optional
        Label order; default the sorted unique values. Cells with no sample get
        count 0 (so batches that lack a cell still merge).
    check_finite : bool
        Reject NaN and inf in ``X`` first (one pass over X). A caller that
        checks the resulting statistics instead (a NaN or inf anywhere makes
        them non-finite) may skip it.
    pooled : bool
        Keep only each group's within-class scatter pooled over its classes
        (:attr:`CellStats.pooled`), all a shared covariance needs.

    Notes
    -----
    The cost is one gather of the rows of each cell and one ``Z^T Z`` product
    per cell (pooled: per group) with ``Z`` the shifted rows: in total the work
    of one ``X^T X``.
    """
    # Row order in memory: the cells' rows are gathered, which is ~30x slower on a
    # column-major array (what DataFrame.to_numpy() returns) than one copy.
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if check_finite and not all_finite(X):
        raise InputError("X contains NaN or inf; drop or impute those values first")
    n = X.shape[0]
    glabels, gcodes = encode_labels(groups, group_labels, "group")
    clabels, ccodes = encode_labels(y, class_labels, "class")
    if gcodes.size != n or ccodes.size != n:
        raise InputError(
            f"X has {n} rows but y has {ccodes.size} and groups has {gcodes.size}; "
            "pass one label of each per row"
        )
    return cell_statistics_from_codes(X, gcodes, ccodes, glabels, clabels, pooled=pooled)


def cell_statistics_from_codes(
    X: Array,
    gcodes: NDArray[np.intp],
    ccodes: NDArray[np.intp],
    group_labels: Sequence[Hashable],
    class_labels: Sequence[Hashable],
    *,
    pooled: bool = False,
) -> CellStats:
    """:func:`cell_statistics` of rows whose labels are already integer codes.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Finite features on the model scale (not checked here).
    gcodes, ccodes : ndarray of int, shape (n,)
        Indices into ``group_labels`` and ``class_labels``.
    group_labels, class_labels : sequence
        The labels the codes index; cells without rows get count 0.
    pooled : bool
        Pool the scatters over the classes of each group (see :func:`cell_statistics`).

    Returns
    -------
    CellStats
    """
    glabels, clabels = tuple(group_labels), tuple(class_labels)
    d = X.shape[1]
    m, K = len(glabels), len(clabels)
    code = gcodes * K + ccodes
    counts = np.bincount(code, minlength=m * K).astype(np.float64)
    # a stable sort of small codes: radix sort (O(n)) for 16-bit keys
    small = np.int16 if m * K <= np.iinfo(np.int16).max else np.intp
    order = np.argsort(code.astype(small, copy=False), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts).astype(np.intp)])
    if pooled:
        means, W = _pooled_moments(X, order, bounds, m, K)
        scatters = W[:, None]
    else:
        means, scatters = _cell_moments(X, order, bounds)
    return CellStats(
        glabels,
        clabels,
        counts.reshape(m, K),
        means.reshape(m, K, d),
        scatters.reshape(m, -1, d, d),
        pooled,
    )


# A chunk holds at least CHUNK_ROWS rows and about CHUNK_BYTES: single-threaded
# BLAS's Z^T Z on 2048 x 768 panels runs ~15% slower than on one large panel,
# on 4096 x 768 within a few per cent (benchmarks/bench_engine.py, 2 cores).
CHUNK_ROWS = 2048
CHUNK_BYTES = 24 << 20
SUB_BLOCK_BYTES = 1 << 20  # rows gathered, shifted and summed at a time: in L2 cache (1 MB a core)
# Rows and bytes per worker below which the moments run in the calling thread
# (with BLAS's own threads): starting threads costs ~0.5 ms, which a worker
# repays from about 2 MB of rows (d = 5: 32k rows 1.3 ms inline, 1.7 ms on two
# workers; 400k rows 18 ms inline, 13 ms on two).
PARALLEL_ROWS = 2 * CHUNK_ROWS
PARALLEL_BYTES = 2 << 20
COLUMN_GATHER_MAX = 16  # columns up to which a column-major X is gathered column by column
DOT_MAX = 6  # columns up to which their products are dot products (_column_products)
RANGE_COPY_MAX = 32  # columns up to which FeatureRange.update copies to column-major


def _segment_moments(
    X: Array,
    order: NDArray[np.intp],
    bounds: NDArray[np.intp],
    product: NDArray[np.intp],
    shifts: Array,
) -> tuple[Array, Array]:
    r"""Shifted products and sums of segments of rows, ``z = x - shifts[product[s]]``.

    Segment s is the rows ``order[bounds[s]:bounds[s + 1]]`` (a cell, when
    ``order`` sorts the rows by cell); ``product[s]`` says which product it
    joins (its cell, or its group for a pooled scatter). Returns

    .. math:: S_p = \sum_{s:\,\text{product}[s] = p}\ \sum_{x \in s} z z^T, \qquad
              T_s = \sum_{x \in s} z ,

    ``S`` of shape (n_products, d, d) and ``T`` of shape (n_segments, d). The
    rows are cut into one contiguous slice per core
    (:func:`fairsteer._threads.row_parallel`); a worker gathers its rows in
    chunks of about :data:`CHUNK_BYTES` into one reused buffer (a fresh array
    per chunk costs page faults every time), shifts and sums them in
    cache-sized sub-blocks, and adds ``Z^T Z`` with one BLAS thread; the
    per-worker results are summed in slice order. Equal shifts make the
    pieces add exactly, so the work is one ``X^T X`` plus one gather.
    """
    d = X.shape[1]
    n_seg, n_prod = bounds.size - 1, shifts.shape[0]
    total = int(bounds[-1])
    chunk = max(CHUNK_ROWS, CHUNK_BYTES // (8 * max(d, 1)))
    sub = max(1, SUB_BLOCK_BYTES // (8 * max(d, 1)))
    # last row position (exclusive) of the run of segments sharing a product
    run_end = bounds[1:].copy()
    for s in range(n_seg - 2, -1, -1):
        if product[s] == product[s + 1]:
            run_end[s] = run_end[s + 1]

    # A column-major X (columns of a table) is gathered column by column into a
    # column-major buffer: 32k x 5 rows in 0.13 ms, where a row gather from it
    # takes 1.5 ms (0.09 ms from a row-major X). Only for few columns: the
    # gathers are one call per column and sub-block.
    columnwise = d <= COLUMN_GATHER_MAX and X.flags.f_contiguous and not X.flags.c_contiguous

    def work(lo: int, hi: int) -> tuple[dict[int, Array], Array]:
        S: dict[int, Array] = {}
        T = np.zeros((n_seg, d))
        buf = np.empty((min(chunk, hi - lo), d), order="F" if columnwise else "C")
        # column sums as ones @ block (BLAS): numpy's axis-0 sum of a narrow
        # C-ordered block is ~7x slower (8192 x 5: 120 us against 18 us)
        ones = np.ones(min(sub, hi - lo))
        pos = lo
        with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
            while pos < hi:
                seg = int(np.searchsorted(bounds, pos, side="right")) - 1
                p, stop = int(product[seg]), min(hi, int(run_end[seg]))
                for c0 in range(pos, stop, chunk):
                    c1 = min(c0 + chunk, stop)
                    Z = buf[: c1 - c0]
                    for b0 in range(c0, c1, sub):
                        b1 = min(b0 + sub, c1)
                        block = Z[b0 - c0 : b1 - c0]
                        # rows are valid indices by construction; mode="raise" would copy `out`
                        # through a buffer (a gather 2.7x slower)
                        if columnwise:
                            for j in range(d):
                                np.take(X[:, j], order[b0:b1], out=block[:, j], mode="clip")
                        else:
                            np.take(X, order[b0:b1], axis=0, out=block, mode="clip")
                        block -= shifts[p]
                        # segment sums while the block is in cache
                        first = int(np.searchsorted(bounds, b0, side="right")) - 1
                        for j in range(first, n_seg):
                            if bounds[j] >= b1:
                                break
                            a, b = max(bounds[j], b0) - b0, min(bounds[j + 1], b1) - b0
                            T[j] += ones[: b - a] @ block[a:b]
                    zz = _column_products(Z) if columnwise and d <= DOT_MAX else Z.T @ Z
                    if p in S:
                        S[p] += zz
                    else:
                        S[p] = zz
                pos = stop
        return S, T

    S = np.zeros((n_prod, d, d))
    T = np.zeros((n_seg, d))
    min_rows = max(PARALLEL_ROWS, PARALLEL_BYTES // (8 * max(d, 1)))
    for part_S, part_T in row_parallel(work, total, min_rows):
        for p, block in part_S.items():
            S[p] += block
        T += part_T
    return S, T


def _column_products(Z: Array) -> Array:
    """``Z^T Z`` of a column-major Z with few columns, one dot product per pair of columns.

    BLAS's ``syrk`` of a 26k x 5 block takes 0.2 ms, the 15 dot products of its
    contiguous columns 0.08 ms (one thread; equal at 8 columns).
    """
    d = Z.shape[1]
    out = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            out[i, j] = out[j, i] = Z[:, i] @ Z[:, j]
    return out


def _first_rows(X: Array, order: NDArray[np.intp], bounds: NDArray[np.intp]) -> Array:
    """The first row of every non-empty segment as its shift (zeros for empty ones).

    A sample of the cell or group is of the order of its spread away from all
    its rows, so the shifted values lose no more than a few digits (the
    textbook sum-of-squares on raw values loses them all for a column with
    mean 2000 and spread 1).
    """
    shifts = np.zeros((bounds.size - 1, X.shape[1]))
    full = np.flatnonzero(bounds[1:] > bounds[:-1])
    shifts[full] = X[order[bounds[full]]]
    return shifts


def _cell_moments(
    X: Array, rows: NDArray[np.intp], bounds: NDArray[np.intp]
) -> tuple[Array, Array]:
    r"""Means and centred scatters of the cells ``rows[bounds[c]:bounds[c + 1]]``.

    With each cell shifted by one of its rows, z = x - x_0, s = sum z and
    S = sum z z^T (:func:`_segment_moments`),

    .. math:: \bar x = x_0 + s / n, \qquad \text{scatter} = S - s s^T / n .
    """
    shifts = _first_rows(X, rows, bounds)
    n = np.maximum(bounds[1:] - bounds[:-1], 1).astype(np.float64)[:, None]
    # Values near the float64 limits overflow here; the model checks
    # (fairsteer.model.check_cell_covariances) name the feature instead.
    with np.errstate(over="ignore", invalid="ignore"):
        S, T = _segment_moments(X, rows, bounds, np.arange(bounds.size - 1), shifts)
        delta = T / n
        scatters = S - T[:, :, None] * delta[:, None, :]
    return shifts + delta, 0.5 * (scatters + np.swapaxes(scatters, -1, -2))


# Pooling by one shifted product per group subtracts the between-class part
# sum_i t_i t_i^T / n_i from it, losing about log10(trace(S) / trace(W)) digits
# more than per-cell products; beyond 3 digits the cells are computed one by one.
POOL_GUARD = 1e3


def _pooled_moments(
    X: Array, order: NDArray[np.intp], bounds: NDArray[np.intp], m: int, K: int
) -> tuple[Array, Array]:
    r"""Class means and each group's pooled within-class scatter (rows sorted by cell).

    One pass over every group's rows shifted by one of them, z = x - x_0: with
    S = sum z z^T over the group and t_i the sum of z over class i,

    .. math:: \bar x_i = x_0 + t_i / n_i, \qquad
              W = \sum_i \text{scatter}_i = S - \sum_i t_i t_i^T / n_i ,

    so the work is one ``Z^T Z`` per group (large panels) plus a segmented sum.
    When the classes lie far apart compared with their spread (``trace(S)``
    beyond :data:`POOL_GUARD` times ``trace(W)``) that group's cells are
    computed one by one (:func:`_cell_moments`), which keeps full accuracy.
    Returns means of shape (m * K, d) and scatters of shape (m, d, d).
    """
    d = X.shape[1]
    shifts = _first_rows(X, order, bounds[::K])
    counts = (bounds[1:] - bounds[:-1]).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        S, T = _segment_moments(X, order, bounds, np.arange(m * K) // K, shifts)
        n = np.maximum(counts, 1.0)[:, None]
        means = np.repeat(shifts, K, axis=0) + T / n
        W = S - np.einsum("aki,akj->aij", (T / n).reshape(m, K, d), T.reshape(m, K, d))
    for a in range(m):
        if not np.trace(S[a]) <= POOL_GUARD * np.trace(W[a]) and counts[a * K : (a + 1) * K].any():
            lo, hi = bounds[a * K], bounds[(a + 1) * K]
            cell_means, scatters = _cell_moments(
                X, order[lo:hi], bounds[a * K : (a + 1) * K + 1] - lo
            )
            means[a * K : (a + 1) * K] = cell_means
            W[a] = scatters.sum(axis=0)
    means[counts == 0] = 0.0
    return means, 0.5 * (W + np.swapaxes(W, -1, -2))


class FeatureRange:
    """Running maximum and minimum of every feature, for the float64 range check of a fit.

    A streamed fit sees its rows in batches; this keeps what the range check
    of :func:`fairsteer.model.fit_model` needs (the row count, the largest and
    the smallest value of each feature) and applies the same rule at the end,
    so a streamed fit refuses exactly the data that a one-shot fit refuses.

    Parameters
    ----------
    d : int
        Number of features.
    """

    def __init__(self, d: int) -> None:
        self.n = 0
        self.hi = np.full(d, -np.inf)
        self.lo = np.full(d, np.inf)

    def update(self, Z: Array) -> None:
        """Take the rows of one batch (finite, on the model scale) into account."""
        if Z.shape[0]:
            self.n += Z.shape[0]
            if Z.ndim == 2 and Z.shape[1] <= RANGE_COPY_MAX and not Z.flags.f_contiguous:
                # numpy's axis-0 max and min of a narrow row-major array walk it a
                # few values at a time: 32k x 5 takes 1.8 ms, 0.12 ms after a
                # column-major copy (copy included; equal at ~40 columns)
                Z = np.asfortranarray(Z)
            np.maximum(self.hi, Z.max(axis=0), out=self.hi)
            np.minimum(self.lo, Z.min(axis=0), out=self.lo)

    def merge(self, other: FeatureRange) -> None:
        """Take the rows seen by ``other`` (another batch's range) into account."""
        self.n += other.n
        np.maximum(self.hi, other.hi, out=self.hi)
        np.minimum(self.lo, other.lo, out=self.lo)

    def check(self, features: Sequence[str] | None) -> None:
        """Reject features whose variances float64 cannot hold (too large or too small).

        The rule and the message are those of ``fairsteer.model.fit_model``.

        Raises
        ------
        InputError
            Naming the first such feature.
        """
        if self.n == 0:
            return
        big = np.finfo(np.float64).max
        tiny = np.finfo(np.float64).tiny
        eps = np.finfo(np.float64).eps
        n, hi, lo = self.n, self.hi, self.lo
        magnitude = np.maximum(np.abs(hi), np.abs(lo))
        with np.errstate(over="ignore", invalid="ignore"):
            spread = hi - lo
        # The scatter sums n squares of centred values: it overflows when the
        # spread exceeds sqrt(max / n); the mean sums n values, overflowing beyond max / n.
        too_big = ~np.isfinite(spread) | (magnitude > big / n) | (spread > np.sqrt(big / n))
        # A variance below tiny / eps (a spread below ~1e-146) is subnormal or
        # close to it and has lost its precision.
        too_small = (spread > 0) & (spread < np.sqrt(tiny / eps))
        for mask, what, fix in (
            (too_big, "large", "divide it by a constant"),
            (too_small, "small", "multiply it by a constant"),
        ):
            if mask.any():
                j = int(np.flatnonzero(mask)[0])
                name = repr(features[j]) if features is not None else f"{j}"
                raise InputError(
                    f"feature {name} is too {what} in magnitude (values up to "
                    f"{magnitude[j]:.3g}, spread {spread[j]:.3g}) for float64 variances; {fix} "
                    "(the results do not depend on units)"
                )
