"""A seeded, mergeable, bounded uniform sample of rows: what out-of-core fits fit families on.

Families with fitted parameters (``yeo-johnson``, ``normal-scores``, ``auto``
and their ``-by-group`` variants) need all of a column at once: quantiles, a
likelihood in lambda, a held-out split. A streamed, sharded or Dask fit
therefore fits them first, on a uniform sample of at most ``size`` rows, and
accumulates the cell statistics on the Gaussian scale in a second pass.

The sample is a *bottom-k* sample (Cohen and Kaplan 2007): row ``r`` of the
whole table (its index in the concatenation of the shards or partitions, in
order) gets the key ``h(seed, r)``, a bijective 64-bit hash (SplitMix64), and
the ``size`` rows with the smallest keys are kept. Distinct rows have distinct
keys, so the kept set is a function of the seed and the table alone: not of
the chunks, shards or partitions the rows arrive in, nor of the order in which
partial samples are merged. Each part keeps at most ``size`` rows, so memory
is bounded by the sample, whatever the size of the table. The kept rows are
put back in table order before the families are fitted, so a table of at most
``size`` rows is fitted exactly as the in-memory :func:`fairsteer.fit_model`
fits it (same rows, same order).

References
----------
Cohen, E. and Kaplan, H. (2007). Summarizing data using bottom-k sketches.
PODC '07, 225-234. doi:10.1145/1281100.1281133
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError

__all__ = ["DEFAULT_SAMPLE_ROWS", "RowSample", "check_sample_rows", "merge_samples", "row_keys"]

#: Largest number of rows the transform families are fitted on out of core (the default).
DEFAULT_SAMPLE_ROWS = 100_000

# Added to the hashed row before the second SplitMix64 round. dequantize() adds
# the column index j (small) there, so the keys and the dequantisation noise of
# a row come from different hash inputs.
_KEY_SALT = np.uint64(0xD1B54A32D192ED03)


def check_sample_rows(size: Any) -> int:
    """``size`` as an int >= 2 (a family fit needs two rows), else :class:`InputError`."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 2:
        raise InputError(f"the family sample size must be a whole number >= 2, got {size!r}")
    return int(size)


def row_keys(rows: NDArray[np.integer[Any]], seed: int) -> NDArray[np.uint64]:
    """The sampling key of every row index: ``h(h(r XOR h(seed)) + salt)``, h = SplitMix64.

    A composition of bijections of the 64-bit integers, so distinct rows have
    distinct keys (no ties), and a pseudo-random permutation of the rows.
    """
    from fairsteer.families import _splitmix64

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    r = np.asarray(rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(r ^ _splitmix64(np.uint64(seed))) + _KEY_SALT)  # type: ignore[no-any-return]


@dataclass(frozen=True, eq=False)
class RowSample:
    """The rows with the smallest keys among the rows seen so far, and every label seen.

    Attributes
    ----------
    size : int
        Largest number of rows kept.
    seed : int
        Seed of the keys.
    n_rows : int
        Rows seen (kept or not).
    keys : ndarray of uint64, shape (k,)
    rows : ndarray of int64, shape (k,)
        Index of every kept row in the whole table.
    X : ndarray of shape (k, d)
        Features of the kept rows (data scale).
    groups, classes : ndarray of int codes, shape (k,)
        Indices into ``group_labels`` and ``class_labels``.
    group_labels, class_labels : tuple
        Every label seen, kept rows or not, in order of first appearance.
    """

    size: int
    seed: int
    n_rows: int
    keys: NDArray[np.uint64]
    rows: NDArray[np.int64]
    X: NDArray[np.float64]
    groups: NDArray[np.intp]
    classes: NDArray[np.intp]
    group_labels: tuple[Hashable, ...]
    class_labels: tuple[Hashable, ...]

    @classmethod
    def empty(cls, n_features: int, size: int, seed: int) -> RowSample:
        """A sample of no rows."""
        none = np.empty(0, dtype=np.intp)
        return cls(
            check_sample_rows(size),
            seed,
            0,
            np.empty(0, dtype=np.uint64),
            np.empty(0, dtype=np.int64),
            np.empty((0, n_features)),
            none,
            none,
            (),
            (),
        )

    @classmethod
    def of(
        cls,
        X: NDArray[np.float64],
        groups: NDArray[np.intp],
        classes: NDArray[np.intp],
        group_labels: Sequence[Hashable],
        class_labels: Sequence[Hashable],
        *,
        first_row: int,
        size: int,
        seed: int,
    ) -> RowSample:
        """The sample of a block of consecutive rows starting at row ``first_row`` of the table.

        ``groups`` and ``classes`` are codes into ``group_labels`` and
        ``class_labels`` (every label listed is kept, used or not).
        """
        n = X.shape[0]
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        keys = row_keys(rows, seed)
        sample = cls(
            check_sample_rows(size),
            seed,
            n,
            keys,
            rows,
            X,
            np.asarray(groups, dtype=np.intp),
            np.asarray(classes, dtype=np.intp),
            tuple(group_labels),
            tuple(class_labels),
        )
        return sample._pruned()

    def _pruned(self) -> RowSample:
        """Keep the ``size`` smallest keys (a copy of the kept rows only)."""
        if self.keys.size <= self.size:
            return self
        keep = np.argpartition(self.keys, self.size - 1)[: self.size]
        return RowSample(
            self.size,
            self.seed,
            self.n_rows,
            self.keys[keep],
            self.rows[keep],
            np.ascontiguousarray(self.X[keep]),
            self.groups[keep],
            self.classes[keep],
            self.group_labels,
            self.class_labels,
        )

    def merge(self, other: RowSample) -> RowSample:
        """The sample of both sets of rows (labels aligned by value; ``self``'s first)."""
        if (self.size, self.seed) != (other.size, other.seed):
            raise InputError("cannot merge samples drawn with different sizes or seeds")
        if self.X.shape[1] != other.X.shape[1]:
            raise InputError(
                f"cannot merge samples of {self.X.shape[1]} and {other.X.shape[1]} features"
            )
        glabels, g2 = _union(self.group_labels, other.group_labels, other.groups)
        clabels, c2 = _union(self.class_labels, other.class_labels, other.classes)
        # Choose on the keys alone (8 bytes a row), then copy each side's kept
        # rows straight into the output: memory is both inputs plus one sample.
        keys = np.concatenate([self.keys, other.keys])
        if keys.size > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
        else:
            keep = np.arange(keys.size)
        n_left = int(np.searchsorted(keep, self.keys.size))
        left, right = keep[:n_left], keep[n_left:] - self.keys.size

        def take(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
            out = np.empty((keep.size, *a.shape[1:]), dtype=a.dtype)
            # rows are valid indices by construction; mode="raise" would copy `out`
            # through a buffer (a gather 2.7x slower)
            np.take(a, left, axis=0, out=out[:n_left], mode="clip")
            np.take(b, right, axis=0, out=out[n_left:], mode="clip")
            return out

        return RowSample(
            self.size,
            self.seed,
            self.n_rows + other.n_rows,
            keys[keep],
            take(self.rows, other.rows),
            take(self.X, other.X),
            take(self.groups, g2),
            take(self.classes, c2),
            glabels,
            clabels,
        )

    def in_table_order(self) -> RowSample:
        """The kept rows sorted by their index in the table."""
        order = np.argsort(self.rows, kind="stable")
        return RowSample(
            self.size,
            self.seed,
            self.n_rows,
            self.keys[order],
            self.rows[order],
            self.X[order],
            self.groups[order],
            self.classes[order],
            self.group_labels,
            self.class_labels,
        )

    def fit(
        self,
        family: Any,
        group_order: Sequence[Hashable],
        class_order: Sequence[Hashable],
        *,
        seed: int = 0,
    ) -> Any:
        """Fit ``family`` (a :class:`~fairsteer.families.Families`) on the rows, in table order.

        Parameters
        ----------
        family : Families
        group_order, class_order : sequence
            The model's label order (codes of per-group transforms follow it);
            every label of the sample must be in it.
        seed : int
            ``auto``'s seed (:meth:`Families.fit <fairsteer.families.Families.fit>`).

        Raises
        ------
        InputError
            If the sample has no rows, a label is missing from an order, or a
            family cannot be fitted (e.g. a group with too few rows in the sample).
        """
        if self.keys.size == 0:
            raise InputError("the data have no rows; a fit needs samples of every (group, class)")
        s = self.in_table_order()
        g = _recode(s.groups, s.group_labels, group_order, "group")
        c = _recode(s.classes, s.class_labels, class_order, "class")
        try:
            return family.fit(s.X, g, len(group_order), classes=c, seed=seed)
        except InputError as exc:
            if self.keys.size == self.n_rows:
                raise
            raise InputError(
                f"{exc} (the families were fitted on a uniform sample of {self.keys.size} of "
                f"the {self.n_rows} rows; a larger family sample gives small groups more rows)"
            ) from None


def merge_samples(*parts: RowSample) -> RowSample:
    """Merge samples left to right (one node of a reduction tree)."""
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


def _union(
    left: tuple[Hashable, ...], right: tuple[Hashable, ...], codes: NDArray[np.intp]
) -> tuple[tuple[Hashable, ...], NDArray[np.intp]]:
    """Labels of both (left's first) and ``codes`` (into ``right``) as codes into them."""
    index = {label: k for k, label in enumerate(left)}
    labels = list(left)
    lut = np.empty(len(right), dtype=np.intp)
    for k, label in enumerate(right):
        code = index.get(label)
        if code is None:
            code = index[label] = len(labels)
            labels.append(label)
        lut[k] = code
    return tuple(labels), lut[codes] if codes.size else codes


def _recode(
    codes: NDArray[np.intp],
    labels: Sequence[Hashable],
    order: Sequence[Hashable],
    what: str,
) -> NDArray[np.intp]:
    index = {label: k for k, label in enumerate(order)}
    missing = [label for label in labels if label not in index]
    if missing:
        raise InputError(f"{what} {missing[0]!r} is not among the {what} labels {tuple(order)}")
    lut = np.array([index[label] for label in labels], dtype=np.intp)
    return lut[codes] if codes.size else codes
