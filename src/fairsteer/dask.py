"""Fit and steer on Dask: per-partition cell statistics, a tree reduction, per-partition maps.

The statistics of a (group, class) cell merge exactly (:mod:`fairsteer.stats`,
Chan, Golub and LeVeque's parallel update), so a fit is a map-reduce:

1. map: every partition (a block of rows of a dask array, or a partition of a
   dask dataframe) gives its :class:`~fairsteer.stats.CellStats` with its own
   labels, and the running maximum and minimum of every feature;
2. reduce: a tree of :meth:`CellStats.merge` (``split_every`` partials per
   node, so the depth is ``log(partitions) / log(split_every)``). ``merge``
   aligns the labels by name, so a partition that lacks a group or a class,
   or has no rows at all, merges correctly;
3. the model from the merged statistics, in the sorted label order of a
   one-shot :func:`fairsteer.fit_model` (:func:`fairsteer.model_from_stats`).

A worker holds one partition and one set of statistics, O(m K d^2); nothing
but the statistics travels to the client. Steering, transforming and weighting
are per-partition maps (``map_blocks`` / ``map_partitions``) that keep the
partition order, the chunks and the divisions.

Dask is imported only here, so the core never needs it
(``pip install 'fairsteer[dask]'``). The computations run on whatever
scheduler is active: a ``distributed.Client`` (a ``LocalCluster`` or any
scheduler address), or Dask's local schedulers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.families import Families
from fairsteer.fit import check_fit_options, model_from_stats
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.sampling import DEFAULT_SAMPLE_ROWS, check_sample_rows
from fairsteer.stats import CellStats, FeatureRange, cell_statistics_from_codes, encode_labels

__all__ = [
    "cell_statistics_dask",
    "fit_model_dask",
    "steer_dask",
    "transform_dask",
    "weights_dask",
]

Array = NDArray[np.float64]
SPLIT_EVERY = 8  # partials merged per node of the reduction tree (dask's own default)


def _dask() -> Any:
    try:
        import dask
    except ImportError:
        raise InputError(
            "the Dask backend needs dask: pip install 'fairsteer[dask]' "
            "(dask[array,dataframe] and distributed)"
        ) from None
    return dask


# ---------------------------------------------------------------- partials


@dataclass(frozen=True, eq=False)
class Partial:
    """What the map step of a fit returns for some rows: their statistics and feature range.

    Attributes
    ----------
    stats : CellStats or None
        ``None`` for no rows.
    span : FeatureRange
        Row count and largest and smallest value of every feature (for the
        float64 range check of :func:`fairsteer.fit_model`).
    """

    stats: CellStats | None
    span: FeatureRange

    def merge(self, other: Partial) -> Partial:
        """The partial of the union of both sets of rows (labels aligned by name)."""
        if self.stats is None:
            stats = other.stats
        elif other.stats is None:
            stats = self.stats
        else:
            with np.errstate(all="ignore"):  # out-of-range values: FeatureRange names them
                stats = self.stats.merge(other.stats)
        span = FeatureRange(self.span.hi.size)
        span.n = self.span.n + other.span.n
        span.hi = np.maximum(self.span.hi, other.span.hi)
        span.lo = np.minimum(self.span.lo, other.span.lo)
        return Partial(stats, span)


def merge_partials(*parts: Partial) -> Partial:
    """Merge partials left to right (one node of the reduction tree)."""
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


def tree_reduce(
    parts: Sequence[Any],
    split_every: int = SPLIT_EVERY,
    merge: Callable[..., Any] = merge_partials,
) -> Any:
    """A delayed tree of ``merge`` (default :func:`merge_partials`) over delayed partials.

    Every node merges at most ``split_every`` consecutive children, so no task
    holds more than ``split_every`` sets of statistics, and the order of the
    partitions is kept (labels appear in the order of the data).
    """
    dask = _dask()
    if split_every < 2:
        raise InputError(f"split_every must be at least 2, got {split_every}")
    level = list(parts)
    if not level:
        raise InputError("the data have no partitions")
    while len(level) > 1:
        level = [
            dask.delayed(merge, pure=True)(*level[k : k + split_every])
            for k in range(0, len(level), split_every)
        ]
    return level[0]


def finish_fit(
    total: Partial,
    *,
    family: Families,
    covariance: str,
    shrinkage: float | str | None,
    features: Sequence[str] | None,
    group_labels: Sequence[Hashable] | None,
    class_labels: Sequence[Hashable] | None,
) -> tuple[CellStats, GaussianModel]:
    """Range check, sorted label order and the model of the merged partial."""
    if total.stats is None:
        raise InputError("the data have no rows; a fit needs samples of every (group, class)")
    total.span.check(features)
    stats = total.stats
    try:
        groups = tuple(group_labels) if group_labels is not None else tuple(sorted(stats.groups))
        classes = tuple(class_labels) if class_labels is not None else tuple(sorted(stats.classes))
    except TypeError:
        raise InputError(
            "group or class labels mix types across partitions (e.g. numbers and strings); "
            "convert the column to one type"
        ) from None
    stats = stats.aligned(groups, classes)
    model = model_from_stats(
        stats, covariance=covariance, shrinkage=shrinkage, family=family, features=features
    )
    return stats, model


# ------------------------------------------------------------ map: arrays


def _block_rows(
    X: Array, y: NDArray[Any], g: NDArray[Any], where: str
) -> tuple[Array, tuple[Hashable, ...], NDArray[np.intp], tuple[Hashable, ...], NDArray[np.intp]]:
    """A block's rows (C order) and its labels (the block's own, sorted) with codes."""
    X = np.ascontiguousarray(X, dtype=np.float64)  # row gathers of column-major X are slow
    y, g = np.asarray(y).reshape(-1), np.asarray(g).reshape(-1)
    try:
        if y.size != X.shape[0] or g.size != X.shape[0]:
            raise InputError(
                f"X has {X.shape[0]} rows but y has {y.size} and groups has {g.size}; "
                "partition y and groups like the rows of X"
            )
        glabels, gcodes = encode_labels(g, None, "group")
        clabels, ccodes = encode_labels(y, None, "class")
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return X, glabels, gcodes, clabels, ccodes


def _block_partial(
    X: Array,
    y: NDArray[Any],
    g: NDArray[Any],
    family: Families,
    features: Sequence[str] | None,
    where: str,
    pooled: bool = False,
    group_order: Sequence[Hashable] | None = None,
) -> Partial:
    """Statistics of one block of rows of a dask array (labels: the block's own, sorted)."""
    d = len(family)
    span = FeatureRange(d)
    if X.shape[0] == 0:
        return Partial(None, span)
    X, glabels, gcodes, clabels, ccodes = _block_rows(X, y, g, where)
    Z = _forward(family, X, glabels, gcodes, group_order, features, where)
    span.update(Z)
    with np.errstate(all="ignore"):
        stats = cell_statistics_from_codes(Z, gcodes, ccodes, glabels, clabels, pooled=pooled)
        return Partial(stats, span)


def _as_row_blocks(X: Any, y: Any, groups: Any) -> tuple[Any, Any, Any]:
    """X with one chunk across its columns, and y and groups chunked like its rows."""
    import dask.array as da

    X = da.asarray(X)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got {X.ndim} dimensions")
    X = X.rechunk({1: -1})
    rows = X.chunks[0]
    known = not any(np.isnan(c) for c in rows)
    out = []
    for v, what in ((y, "y"), (groups, "groups")):
        if v is None:
            raise InputError(f"{what} is required with a dask array X")
        if not isinstance(v, da.Array):
            v = np.asarray(v)
            if v.ndim != 1:
                raise InputError(f"{what} must be one-dimensional, got shape {v.shape}")
            if known and v.size != X.shape[0]:
                raise InputError(f"X has {X.shape[0]} rows but {what} has {v.size}")
            v = da.from_array(v, chunks=(rows,)) if known else None
            if v is None:
                raise InputError(
                    f"X has unknown chunk sizes; pass {what} as a dask array partitioned "
                    "like X (or call X.compute_chunk_sizes() first)"
                )
        if v.ndim != 1:
            raise InputError(f"{what} must be one-dimensional, got {v.ndim} dimensions")
        if known and not any(np.isnan(c) for c in v.chunks[0]):
            if v.shape[0] != X.shape[0]:
                raise InputError(f"X has {X.shape[0]} rows but {what} has {v.shape[0]}")
            v = v.rechunk((rows,))
        elif v.numblocks[0] != X.numblocks[0]:
            raise InputError(
                f"X has {X.numblocks[0]} row blocks but {what} has {v.numblocks[0]}; "
                "partition them alike"
            )
        out.append(v)
    return X, out[0], out[1]


def _families(family: Any, d: int, features: Sequence[str] | None = None) -> Families:
    """The features' families (fitted here, or in a first pass by :func:`_fit_families`)."""
    fam = family if isinstance(family, Families) else Families(family, d, features)
    if len(fam) != d:
        raise InputError(f"{len(fam)} families given for {d} features; give one per feature")
    return fam


def _group_lut(
    labels: Sequence[Hashable], order: Sequence[Hashable] | None, where: str
) -> NDArray[np.intp] | None:
    """Codes of a partition's labels in the model's group order (per-group families)."""
    if order is None:
        return None
    index = {label: k for k, label in enumerate(order)}
    missing = [label for label in labels if label not in index]
    if missing:
        raise InputError(f"{where}: group {missing[0]!r} is not among group_labels {tuple(order)}")
    return np.array([index[label] for label in labels], dtype=np.intp)


def _forward(
    family: Families,
    X: Array,
    glabels: Sequence[Hashable],
    gcodes: NDArray[np.intp],
    group_order: Sequence[Hashable] | None,
    features: Sequence[str] | None,
    where: str,
) -> Array:
    """``X`` on the Gaussian scale (partition-local group codes mapped to the model's order)."""
    lut = _group_lut(glabels, group_order, where) if family.group_dependent else None
    try:
        return family.forward(X, None if lut is None else lut[gcodes], features)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


# -------------------------------------------------------- map: dataframes


def _frame_codes(series: Any, what: str, where: str) -> tuple[tuple[Hashable, ...], Any]:
    """Sorted labels and codes of a pandas column; missing values rejected."""
    import pandas as pd

    missing = series.isna().to_numpy()
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"{where}: column {series.name!r} row {k} (index {series.index[k]!r}) has no "
            f"{what}; every row needs a {what}: fill or drop that row"
        )
    try:
        codes, uniques = pd.factorize(series, sort=True)
    except TypeError:
        raise InputError(
            f"{where}: {what} column {series.name!r} mixes types; convert it to one type"
        ) from None
    labels = tuple(v.item() if isinstance(v, np.generic) else v for v in uniques.tolist())
    return labels, np.asarray(codes, dtype=np.intp)


def _frame_features(df: Any, features: Sequence[str], where: str) -> Array:
    """The feature columns as one C-ordered float64 matrix (one copy).

    C order matters: ``DataFrame.to_numpy`` gives a column-major block, whose
    row gathers (:func:`fairsteer.stats.cell_statistics_from_codes`) are ~30x slower.
    """
    out = np.empty((len(df), len(features)))
    for j, name in enumerate(features):
        try:
            out[:, j] = df[name].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise InputError(
                f"{where}: feature column {name!r} is not numeric; convert it or leave it "
                "out of the features"
            ) from None
    return out


def _frame_partial(
    df: Any,
    features: Sequence[str],
    group: str,
    label: str,
    family: Families,
    where: str,
    pooled: bool = False,
    group_order: Sequence[Hashable] | None = None,
) -> Partial:
    """Statistics of one dataframe partition (labels: the partition's own, sorted)."""
    span = FeatureRange(len(features))
    if len(df) == 0:
        return Partial(None, span)
    X = _frame_features(df, features, where)
    if family.group_dependent:
        glabels, gcodes = _frame_codes(df[group], "group", where)
        Z = _forward(family, X, glabels, gcodes, group_order, features, where)
    else:
        Z = _forward(family, X, (), np.empty(0, np.intp), None, features, where)
        glabels, gcodes = _frame_codes(df[group], "group", where)
    clabels, ccodes = _frame_codes(df[label], "class", where)
    span.update(Z)
    with np.errstate(all="ignore"):
        stats = cell_statistics_from_codes(Z, gcodes, ccodes, glabels, clabels, pooled=pooled)
        return Partial(stats, span)


def _is_frame(data: Any) -> bool:
    return hasattr(data, "map_partitions") and hasattr(data, "columns")


def _frame_layout(
    ddf: Any, group: str | None, label: str | None, features: Sequence[str] | None
) -> list[str]:
    """The feature columns of a dask dataframe (default: every numeric column but group, label)."""
    import pandas as pd

    names = list(ddf.columns)
    for what, col in (("group", group), ("label", label)):
        if col is None:
            raise InputError(f"name the {what} column: {what}='...'")
        if col not in names:
            raise InputError(f"unknown column {col!r}; the dataframe has columns {names}")
    if features is None:
        features = [
            c
            for c in names
            if c not in (group, label)
            and pd.api.types.is_numeric_dtype(ddf.dtypes[c])
            and not pd.api.types.is_bool_dtype(ddf.dtypes[c])
        ]
        if not features:
            raise InputError("no numeric feature columns found; name them with features=[...]")
    features = [str(c) for c in features]
    for c in features:
        if c not in names:
            raise InputError(f"unknown column {c!r}; the dataframe has columns {names}")
        if c in (group, label):
            raise InputError(f"column {c!r} cannot be both a feature and the group/label")
    return features


# ------------------------------------------------------------------- fit


@dataclass(frozen=True, eq=False)
class _Blocks:
    """The partitions of the data as delayed objects, with what every task needs.

    ``inputs[k]``: the delayed arguments of partition k (a dataframe
    partition, or the row block of X, y and groups); ``lengths``: the rows of
    every partition when known without a pass (arrays with known chunks).
    """

    frame: bool
    inputs: list[tuple[Any, ...]]
    wheres: list[str]
    names: list[str] | None
    family: Families
    group: str | None = None
    label: str | None = None
    lengths: list[int] | None = None


def _blocks(
    data: Any,
    y: Any,
    groups: Any,
    group: str | None,
    label: str | None,
    features: Sequence[str] | None,
    family: Any,
) -> _Blocks:
    """Check the data and cut them into partitions (nothing is computed)."""
    if _is_frame(data):
        if y is not None or groups is not None:
            raise InputError("with a dataframe, name the columns: group='...', label='...'")
        names = _frame_layout(data, group, label, features)
        fam = _families(family, len(names), names)
        parts = [(part,) for part in data.to_delayed()]
        wheres = [f"partition {k}" for k in range(len(parts))]
        return _Blocks(True, parts, wheres, names, fam, group, label)
    if group is not None or label is not None:
        raise InputError(
            "with an array X, pass y and groups as arrays (group=/label= name columns)"
        )
    X, y, groups = _as_row_blocks(data, y, groups)
    d = X.shape[1]
    names = None if features is None else [str(f) for f in features]
    if names is not None and len(names) != d:
        raise InputError(f"{len(names)} feature names given for {d} features")
    fam = _families(family, d, names)
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
    inputs = list(zip(X.to_delayed()[:, 0], y.to_delayed(), groups.to_delayed()))
    known = bool(np.all(np.isfinite(starts)))
    wheres = [
        f"partition {k} (rows {int(starts[k])} to {int(starts[k + 1]) - 1})"
        if np.isfinite(starts[k + 1])
        else f"partition {k}"
        for k in range(len(inputs))
    ]
    lengths = [int(c) for c in X.chunks[0]] if known else None
    return _Blocks(False, inputs, wheres, names, fam, lengths=lengths)


def _partials(
    blocks: _Blocks, family: Families, pooled: bool, group_order: Sequence[Hashable] | None
) -> list[Any]:
    """Delayed partials of every partition.

    ``pooled``: keep one pooled within-class scatter per group (enough for a
    shared covariance, K times smaller partials). ``group_order``: the
    model's group labels (the codes of per-group families follow it).
    """
    dask = _dask()
    out = []
    for inp, where in zip(blocks.inputs, blocks.wheres):
        if blocks.frame:
            args = (blocks.names, blocks.group, blocks.label, family, where, pooled, group_order)
            out.append(dask.delayed(_frame_partial, pure=True)(*inp, *args))
        else:
            args = (family, blocks.names, where, pooled, group_order)
            out.append(dask.delayed(_block_partial, pure=True)(*inp, *args))
    return out


# ------------------------------------------------------- family sample


def _frame_sample(
    df: Any,
    features: Sequence[str],
    group: str,
    label: str,
    where: str,
    first_row: int,
    size: int,
    seed: int,
) -> Any:
    """The family sample of one dataframe partition (rows ``first_row``, ... of the data)."""
    from fairsteer.sampling import RowSample

    if len(df) == 0:
        return RowSample.empty(len(features), size, seed)
    X = _checked_finite(_frame_features(df, features, where), features, where)
    glabels, gcodes = _frame_codes(df[group], "group", where)
    clabels, ccodes = _frame_codes(df[label], "class", where)
    return RowSample.of(
        X, gcodes, ccodes, glabels, clabels, first_row=first_row, size=size, seed=seed
    )


def _block_sample(
    X: Array,
    y: NDArray[Any],
    g: NDArray[Any],
    features: Sequence[str] | None,
    where: str,
    first_row: int,
    size: int,
    seed: int,
) -> Any:
    """The family sample of one row block of a dask array."""
    from fairsteer.sampling import RowSample

    if X.shape[0] == 0:
        return RowSample.empty(X.shape[1], size, seed)
    X, glabels, gcodes, clabels, ccodes = _block_rows(X, y, g, where)
    X = _checked_finite(X, features, where)
    return RowSample.of(
        X, gcodes, ccodes, glabels, clabels, first_row=first_row, size=size, seed=seed
    )


def _checked_finite(X: Array, features: Sequence[str] | None, where: str) -> Array:
    try:
        return Families("normal", X.shape[1]).forward(X, None, features)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _block_length(*inputs: Any) -> int:
    return len(inputs[0])


def _fit_families(
    blocks: _Blocks,
    group_labels: Sequence[Hashable] | None,
    class_labels: Sequence[Hashable] | None,
    size: int,
    seed: int,
    split_every: int,
) -> tuple[Families, tuple[Hashable, ...]]:
    """Fit the families on a seeded uniform sample of at most ``size`` rows.

    Two passes: the rows of every partition (unless known), then every
    partition's bottom-k sample (:class:`fairsteer.sampling.RowSample`, keys
    hashed from a row's index in the whole data) merged by a tree. Returns the
    fitted families and the model's group labels.
    """
    from fairsteer.sampling import merge_samples

    dask = _dask()
    lengths = blocks.lengths
    if lengths is None:
        lengths = list(dask.compute(*[dask.delayed(_block_length)(*inp) for inp in blocks.inputs]))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    parts = []
    for inp, where, first in zip(blocks.inputs, blocks.wheres, offsets):
        if blocks.frame:
            args = (blocks.names, blocks.group, blocks.label, where, first, size, seed)
            parts.append(dask.delayed(_frame_sample, pure=True)(*inp, *args))
        else:
            args = (blocks.names, where, first, size, seed)
            parts.append(dask.delayed(_block_sample, pure=True)(*inp, *args))
    (sample,) = dask.compute(tree_reduce(parts, split_every, merge_samples))
    if sample.n_rows == 0:
        raise InputError("the data have no rows; a fit needs samples of every (group, class)")
    order_g = tuple(group_labels) if group_labels is not None else _sorted(sample.group_labels)
    order_c = tuple(class_labels) if class_labels is not None else _sorted(sample.class_labels)
    return sample.fit(blocks.family, order_g, order_c, seed=seed), order_g


def cell_statistics_dask(
    data: Any,
    y: Any = None,
    groups: Any = None,
    *,
    group: str | None = None,
    label: str | None = None,
    features: Sequence[str] | None = None,
    family: Any = "normal",
    group_labels: Sequence[Hashable] | None = None,
    class_labels: Sequence[Hashable] | None = None,
    split_every: int = SPLIT_EVERY,
    family_sample: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
) -> CellStats:
    r"""Per-cell count, mean and centred scatter of a dask array or dataframe.

    Every partition gives its statistics; a tree of :meth:`CellStats.merge`
    (Chan, Golub and LeVeque 1979) combines them. For two sets of rows with
    counts :math:`n_1, n_2`, means :math:`\mu_1, \mu_2` and centred scatters
    :math:`S_1, S_2`, with :math:`n = n_1 + n_2` and :math:`\delta = \mu_2 - \mu_1`,

    .. math::

        \mu = \mu_1 + \delta\, n_2 / n, \qquad
        S = S_1 + S_2 + \delta \delta^\top n_1 n_2 / n ,

    exact in exact arithmetic whatever the tree (:ref:`theory-1`; the
    statistics of :func:`fairsteer.cell_statistics`).

    Parameters
    ----------
    data : dask array of shape (n, d) or dask dataframe
        Features (array), or a table with feature, group and label columns.
    y, groups : dask array or array-like of shape (n,), optional
        Class and group labels (with an array ``data``), partitioned like its rows.
    group, label : str, optional
        Group and label columns (with a dataframe).
    features : sequence of str, optional
        Dataframe: the feature columns (default every numeric column but
        group and label). Array: feature names for messages.
    family : str, Family, one per feature, or columns
        As :func:`fairsteer.fit_model`. Families with parameters
        (``yeo-johnson``, ``normal-scores``, ``auto``, ``-by-group``) are
        fitted first on a seeded uniform sample of at most ``family_sample``
        rows (two extra passes: the rows of every partition, unless the chunks
        of an array are known, then every partition's sample, merged by a
        tree; :mod:`fairsteer.sampling`); the statistics are then accumulated
        on their Gaussian scale. Data of at most ``family_sample`` rows are
        fitted on every row, exactly as ``fit_model`` fits them. An already
        fitted per-group family needs ``group_labels``.
    group_labels, class_labels : sequence, optional
        Label order; default the sorted labels of the whole data.
    split_every : int
        Partials merged per node of the reduction tree.
    family_sample : int
        Largest number of rows the families are fitted on (at least 2).
        Memory: a task holds at most ``split_every`` samples of
        ``family_sample`` rows and d features.
    seed : int
        Seed of the sample and of ``auto``'s held-out split. The sample is a
        function of the seed and the rows in order only, not of the partitions.

    Returns
    -------
    CellStats
        On the model scale (the families' Gaussian scale).

    Raises
    ------
    InputError
        For bad input in any partition (named, with the row), no rows, or
        labels of mixed types.
    """
    return _fit(
        data,
        y,
        groups,
        group,
        label,
        features,
        family,
        group_labels,
        class_labels,
        split_every,
        "per-class",
        None,
        model=False,
        family_sample=family_sample,
        seed=seed,
    )[0]


def fit_model_dask(
    data: Any,
    y: Any = None,
    groups: Any = None,
    *,
    group: str | None = None,
    label: str | None = None,
    features: Sequence[str] | None = None,
    family: Any = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    group_labels: Sequence[Hashable] | None = None,
    class_labels: Sequence[Hashable] | None = None,
    split_every: int = SPLIT_EVERY,
    family_sample: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
) -> GaussianModel:
    """Fit the model of :func:`fairsteer.fit_model` from a dask array or dataframe.

    The statistics come from :func:`cell_statistics_dask` (one pass over the
    data, a tree reduction; families with parameters are fitted first, on a
    bounded sample); the model is
    ``model_from_stats(stats, covariance=..., shrinkage=..., family=...)``:
    priors ``counts / n``, the cell means, and the maximum-likelihood
    covariances (scatter / count per cell, or the pooled within-class scatter
    of a group), optionally shrunk (:func:`fairsteer.shrink_covariance`).
    Equal to ``fit_model`` on the same rows up to round-off (with families to
    fit: when there are at most ``family_sample`` rows).

    Parameters
    ----------
    data, y, groups, group, label, features, family, group_labels, class_labels
        As :func:`cell_statistics_dask`.
    split_every, family_sample, seed
        As :func:`cell_statistics_dask`.
    covariance : {"per-class", "shared"}
    shrinkage : None, float in [0, 1] or "oas"

    Returns
    -------
    GaussianModel

    Examples
    --------
    >>> from distributed import Client, LocalCluster           # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2))              # doctest: +SKIP
    >>> ddf = dask.dataframe.read_parquet("shards/")            # doctest: +SKIP
    >>> model = fit_model_dask(ddf, group="sex", label="y")     # doctest: +SKIP
    """
    return _fit(
        data,
        y,
        groups,
        group,
        label,
        features,
        family,
        group_labels,
        class_labels,
        split_every,
        covariance,
        shrinkage,
        model=True,
        family_sample=family_sample,
        seed=seed,
    )[1]


def _fit(
    data: Any,
    y: Any,
    groups: Any,
    group: str | None,
    label: str | None,
    features: Sequence[str] | None,
    family: Any,
    group_labels: Sequence[Hashable] | None,
    class_labels: Sequence[Hashable] | None,
    split_every: int,
    covariance: str,
    shrinkage: float | str | None,
    model: bool,
    family_sample: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
) -> tuple[CellStats, GaussianModel | None]:
    dask = _dask()
    check_fit_options(covariance, shrinkage)
    size = check_sample_rows(family_sample)
    if split_every < 2:
        raise InputError(f"split_every must be at least 2, got {split_every}")
    pooled = model and covariance == "shared"
    blocks = _blocks(data, y, groups, group, label, features, family)
    fam = blocks.family
    group_order = None if group_labels is None else tuple(group_labels)
    if not fam.fitted:
        fam, group_order = _fit_families(
            blocks, group_labels, class_labels, size, seed, split_every
        )
    elif fam.group_dependent and group_order is None:
        raise InputError(
            "a family fitted per group needs group_labels (the order its groups were fitted "
            "in); pass group_labels"
        )
    parts = _partials(blocks, fam, pooled, group_order if fam.group_dependent else None)
    names = blocks.names
    (total,) = dask.compute(tree_reduce(parts, split_every))
    if not model:
        if total.stats is None:
            raise InputError("the data have no rows")
        total.span.check(names)
        order_g = group_order if group_order is not None else _sorted(total.stats.groups)
        order_c = class_labels if class_labels is not None else _sorted(total.stats.classes)
        return total.stats.aligned(order_g, order_c), None
    return finish_fit(
        total,
        family=fam,
        covariance=covariance,
        shrinkage=shrinkage,
        features=names,
        group_labels=group_order,
        class_labels=class_labels,
    )


def _sorted(labels: Sequence[Hashable]) -> tuple[Hashable, ...]:
    try:
        return tuple(sorted(labels))  # type: ignore[type-var]
    except TypeError:
        raise InputError(
            "group or class labels mix types across partitions (e.g. numbers and strings); "
            "convert the column to one type"
        ) from None


# ------------------------------------------------------------------ maps


def _steer_block(X: Array, y: NDArray[Any], g: NDArray[Any], maps: SteeringMaps) -> Array:
    if X.shape[0] == 0:
        return np.empty((0, X.shape[1]))
    return maps.steer(X, y.reshape(-1), g.reshape(-1))


def _transform_block(
    X: Array,
    g: NDArray[Any],
    p: NDArray[Any] | None = None,
    *,
    maps: SteeringMaps,
    mode: str,
) -> Array:
    if X.shape[0] == 0:
        return np.empty((0, X.shape[1]))
    return maps.transform(X, g.reshape(-1), mode, None if p is None else p.reshape(-1))


def _weights_block(y: NDArray[Any], g: NDArray[Any], maps: SteeringMaps) -> Array:
    if y.shape[0] == 0:
        return np.empty(0)
    return maps.weights(y.reshape(-1), g.reshape(-1))


def _weights_frame(df: Any, maps: SteeringMaps, group: str, label: str) -> Any:
    import pandas as pd

    w = maps.weights(df[label].to_numpy(), df[group].to_numpy()) if len(df) else np.empty(0)
    return pd.Series(w, index=df.index, name="weight")


def _steer_frame(
    df: Any,
    maps: SteeringMaps,
    features: list[str],
    group: str,
    label: str | None,
    mode: str,
    weight_column: str | None,
) -> Any:
    """One partition with the feature columns replaced in place (and a weight column)."""
    out = df.copy()
    for name in features:
        out[name] = out[name].astype(np.float64)
    if len(df):
        X = df[features].to_numpy(dtype=np.float64)
        g = df[group].to_numpy()
        if mode == "steer":
            Z = maps.steer(X, df[label].to_numpy(), g)
        else:
            pred = None if label is None else df[label].to_numpy()
            Z = maps.transform(X, g, mode, pred)
        for j, name in enumerate(features):
            out[name] = Z[:, j]
    if weight_column is not None:
        out[weight_column] = (
            maps.weights(df[label].to_numpy(), df[group].to_numpy()) if len(df) else np.empty(0)
        )
    return out


def _frame_meta(ddf: Any, features: list[str], weight_column: str | None) -> Any:
    meta = ddf._meta.copy()
    for name in features:
        meta[name] = meta[name].astype(np.float64)
    if weight_column is not None:
        meta[weight_column] = np.empty(0)
    return meta


def _map_features(maps: SteeringMaps, ddf: Any, features: Sequence[str] | None) -> list[str]:
    if features is None:
        features = maps.original.features
    if features is None:
        raise InputError("the model has no feature names; name the columns with features=[...]")
    names = [str(f) for f in features]
    if len(names) != maps.original.n_features:
        raise InputError(
            f"{len(names)} feature columns given for a model of {maps.original.n_features}"
        )
    missing = [n for n in names if n not in ddf.columns]
    if missing:
        raise InputError(f"unknown column {missing[0]!r}; the dataframe has {list(ddf.columns)}")
    return names


def steer_dask(
    maps: SteeringMaps,
    data: Any,
    y: Any = None,
    groups: Any = None,
    *,
    group: str | None = None,
    label: str | None = None,
    features: Sequence[str] | None = None,
    weight_column: str | None = None,
) -> Any:
    r"""Apply :meth:`SteeringMaps.steer` partition by partition (lazy).

    Every row of cell (a, i) moves by its optimal-transport map
    :math:`T_{a,i}(x) = \tilde\mu_{a,i} + A_{a,i}(x - \mu_{a,i})` (:ref:`theory-5`); the maps are
    per row, so partitions are independent.

    Parameters
    ----------
    maps : SteeringMaps
    data : dask array of shape (n, d) or dask dataframe
    y, groups : dask array or array-like of shape (n,)
        Labels of the rows (with an array ``data``).
    group, label : str
        Columns (with a dataframe).
    features : sequence of str, optional
        Dataframe feature columns (default the model's feature names).
    weight_column : str, optional
        Dataframe: also add this column with :meth:`SteeringMaps.weights`.

    Returns
    -------
    dask array (same chunks) or dask dataframe (same columns in the same
    order, features as float64, same divisions)
    """
    return _apply(maps, data, y, groups, group, label, features, "steer", weight_column)


def transform_dask(
    maps: SteeringMaps,
    data: Any,
    groups: Any = None,
    *,
    mode: str = "soft",
    y_pred: Any = None,
    group: str | None = None,
    label: str | None = None,
    features: Sequence[str] | None = None,
) -> Any:
    r"""Apply :meth:`SteeringMaps.transform` (unknown labels) partition by partition (lazy).

    ``soft``: :math:`\sum_i P(Y=i \mid x, a)\, T_{a,i}(x)` with the fitted
    posterior; ``hard``: the map of ``y_pred`` (or of the most probable class);
    ``none``: identity (:ref:`theory-5`).

    Parameters
    ----------
    maps : SteeringMaps
    data : dask array of shape (n, d) or dask dataframe
    groups : dask array or array-like of shape (n,)
        With an array ``data``.
    mode : {"soft", "hard", "none"}
    y_pred : dask array or array-like of shape (n,), optional
        Predicted labels for ``hard`` (array ``data``); with a dataframe name
        their column with ``label``.
    group, label, features : str, str, sequence of str
        Dataframe columns.

    Returns
    -------
    dask array or dask dataframe, partitioned like ``data``
    """
    from fairsteer.maps import UNLABELED_MODES

    if mode not in UNLABELED_MODES:
        raise InputError(f"mode must be one of {UNLABELED_MODES}, got {mode!r}")
    return _apply(maps, data, y_pred, groups, group, label, features, mode, None)


def weights_dask(
    maps: SteeringMaps,
    data: Any,
    groups: Any = None,
    *,
    group: str | None = None,
    label: str | None = None,
) -> Any:
    r"""Importance weights :math:`\tilde\pi_i / \pi_{a,i}` per row (:ref:`theory-4c`), lazily.

    Parameters
    ----------
    maps : SteeringMaps
    data : dask array of shape (n,) (the class labels) or dask dataframe
    groups : dask array or array-like of shape (n,)
        With an array ``data``.
    group, label : str
        With a dataframe.

    Returns
    -------
    dask array of shape (n,), or a dask series (same divisions)
    """
    import dask.array as da
    import pandas as pd

    if _is_frame(data):
        if group is None or label is None:
            raise InputError("name the columns: group='...', label='...'")

        for col in (group, label):
            if col not in data.columns:
                raise InputError(f"unknown column {col!r}; the dataframe has {list(data.columns)}")
        return data.map_partitions(
            _weights_frame, maps, group, label, meta=pd.Series(dtype=np.float64, name="weight")
        )
    y = da.asarray(data)
    fake = y[:, None].astype(np.float64) if y.ndim == 1 else y
    _, y, g = _as_row_blocks(fake, y, groups)
    return da.map_blocks(_weights_block, y, g, maps=maps, dtype=np.float64)


def _apply(
    maps: SteeringMaps,
    data: Any,
    y: Any,
    groups: Any,
    group: str | None,
    label: str | None,
    features: Sequence[str] | None,
    mode: str,
    weight_column: str | None,
) -> Any:
    import dask.array as da

    if _is_frame(data):
        if group is None or (mode == "steer" and label is None):
            raise InputError(
                "name the columns: group='...'" + (", label='...'" * (mode == "steer"))
            )
        names = _map_features(maps, data, features)
        for col in (group, label):
            if col is not None and col not in data.columns:
                raise InputError(f"unknown column {col!r}; the dataframe has {list(data.columns)}")
        if weight_column is not None and weight_column in data.columns:
            raise InputError(f"column {weight_column!r} already exists; choose another name")
        return data.map_partitions(
            _steer_frame,
            maps,
            names,
            group,
            label,
            mode,
            weight_column,
            meta=_frame_meta(data, names, weight_column),
        )
    if weight_column is not None:
        raise InputError("weight_column needs a dataframe; use weights_dask for arrays")
    if mode == "steer":
        X, y, g = _as_row_blocks(data, y, groups)
        return da.map_blocks(_steer_block, X, y[:, None], g[:, None], maps=maps, dtype=np.float64)
    if y is None:
        X, _, g = _as_row_blocks(data, groups, groups)
        return da.map_blocks(
            _transform_block, X, g[:, None], maps=maps, mode=mode, dtype=np.float64
        )
    X, p, g = _as_row_blocks(data, y, groups)
    return da.map_blocks(
        _transform_block, X, g[:, None], p[:, None], maps=maps, mode=mode, dtype=np.float64
    )
