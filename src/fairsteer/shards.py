"""Sharded tables for the command line: ``fit`` and ``steer`` over many CSV or Parquet files.

``fairsteer fit DATA`` and ``fairsteer steer DATA`` take for DATA a directory
or a glob of shards (``.csv``, ``.parquet``, ``.pq``; all of one kind, all
with the same columns). Each shard is one task:

- fit: the shard is streamed chunk by chunk exactly as the one-file path does
  (:mod:`fairsteer.io`: the same parsing, checks and messages, prefixed with
  the shard's name), its cell statistics merged; the shards' statistics are
  then merged by a tree reduction (:func:`fairsteer.dask.tree_reduce`) and the
  model is built once (:func:`fairsteer.model_from_stats`);
- steer: every shard is written to an output shard of the same name, feature
  columns replaced, every other column carried, a weight column appended, each
  file atomically (temporary file + rename) into a temporary directory that
  is renamed to the output directory only when every shard is written. On an
  error nothing is left behind.

``--engine local`` runs the tasks one after the other in this process;
``--engine dask`` runs them on a ``distributed`` cluster: a ``LocalCluster``
of ``--workers N`` processes, or the scheduler at ``--scheduler ADDRESS``
(whose workers must see the same file paths). The results are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.options import parse_shrinkage
from fairsteer.stats import CellStats, FeatureRange

__all__ = [
    "ENGINES",
    "fit_command",
    "no_context_on_shards",
    "shard_paths",
    "steer_command",
    "use_shards",
]

ENGINES = ("local", "dask")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
FEATURES_HINT = " (list the features to use with --features)"


# ------------------------------------------------------------- discovery


def shard_paths(data: str | os.PathLike[str]) -> list[Path] | None:
    """The shards that ``data`` names, in sorted order, or ``None`` for one file.

    Parameters
    ----------
    data : str or path-like
        A directory (its ``.csv`` / ``.parquet`` / ``.pq`` files, hidden files
        skipped) or a glob pattern; anything else is a single file.

    Raises
    ------
    InputError
        If no shard matches, the shards mix CSV and Parquet, or two shards
        have the same name (the output shards take the input names).
    """
    text = os.fspath(data)
    path = Path(text)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    elif not path.exists() and any(ch in text for ch in "*?["):
        found = [Path(p) for p in glob.glob(text) if Path(p).is_file()]
    else:
        return None
    shards = sorted(p for p in found if p.suffix.lower() in SUFFIXES)
    if not shards:
        raise InputError(f"no .csv or .parquet shards in {text}")
    kinds = {SUFFIXES[p.suffix.lower()] for p in shards}
    if len(kinds) > 1:
        raise InputError(f"{text} mixes CSV and Parquet shards; keep one kind per data set")
    names = [p.name for p in shards]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise InputError(
            f"two shards are named {twins[0]!r}; the output shards take the input names, so "
            "shard names must be unique"
        )
    return shards


def use_shards(args: Any) -> bool:
    """Whether ``fit``/``steer`` take the sharded path (a directory, a glob or ``--engine dask``).

    Raises
    ------
    InputError
        For ``--scheduler`` or ``--workers`` without ``--engine dask``, both
        at once, or a worker count below one.
    """
    engine = getattr(args, "engine", "local")
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    if engine != "dask" and (scheduler is not None or workers is not None):
        raise InputError("--scheduler and --workers need --engine dask")
    if scheduler is not None and workers is not None:
        raise InputError(
            "give --scheduler (an existing cluster) or --workers (a local one), not both"
        )
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    return engine == "dask" or shard_paths(args.data) is not None


def no_context_on_shards(args: Any) -> None:
    """``--context`` reads one table into memory: refuse shards and ``--engine dask`` with it.

    Raises
    ------
    InputError
        For a directory or glob of shards, or ``--engine dask``, with ``--context``.
    """
    if use_shards(args):
        raise InputError(
            "--context reads one table into memory; it does not take shards or --engine dask "
            "yet: concatenate the shards into one file"
        )


# ----------------------------------------------------------------- labels


def label_key(kind: str, value: Any) -> Hashable:
    """The identity of a label: CSV cells that spell one number (``1``, ``1.0``) are one label.

    The rule of :class:`fairsteer.io.LabelCoder`, applied across shards.
    """
    from fairsteer.io import csv_label_key

    return csv_label_key(value) if kind == "csv" else value


@dataclass(frozen=True, eq=False)
class ShardPartial:
    """Merged statistics of some shards, with the labels keyed by :func:`label_key`.

    Attributes
    ----------
    partial : fairsteer.dask.Partial
        Statistics (labels are keys) and feature range.
    spellings : dict
        Key -> the first spelling of the label, in shard order.
    n_rows : int
    """

    partial: Any
    spellings: dict[Hashable, Hashable]
    n_rows: int

    def labelled(self) -> CellStats | None:
        """The statistics with every label spelled as it first appeared."""
        stats = self.partial.stats
        if stats is None:
            return None
        spell = self.spellings
        return CellStats(
            tuple(spell[k] for k in stats.groups),
            tuple(spell[k] for k in stats.classes),
            stats.counts,
            stats.means,
            stats.scatters,
            stats.pooled,
        )


def merge_shard_partials(*parts: ShardPartial) -> ShardPartial:
    """Merge left to right; the first spelling of a label (in shard order) wins."""
    partial = parts[0].partial
    spellings = dict(parts[0].spellings)
    n_rows = parts[0].n_rows
    for part in parts[1:]:
        partial = partial.merge(part.partial)
        for key, text in part.spellings.items():
            spellings.setdefault(key, text)
        n_rows += part.n_rows
    return ShardPartial(partial, spellings, n_rows)


# ------------------------------------------------------------ shard tasks


@dataclass(frozen=True)
class Layout:
    """What every shard task needs to know about the table.

    Attributes
    ----------
    names : list of str
        The columns of every shard, in order.
    features : list of str
    group, label : str
    family : Families
        The features' families (fitted: statistics are on the Gaussian scale).
    defaulted : bool
        The features were chosen by default (errors then suggest --features).
    pooled : bool
        Keep one pooled within-class scatter per group (``--covariance shared``).
    dequantize : tuple of str
        The ``--dequantize`` columns.
    seed : int
        Seed of the dequantisation noise and of the family sample.
    group_codes : dict, optional
        Group label key -> the model's group code (for per-group families).
    """

    names: list[str]
    features: list[str]
    group: str
    label: str
    family: Any
    defaulted: bool
    pooled: bool = False
    dequantize: tuple[str, ...] = ()
    seed: int = 0
    group_codes: dict[Hashable, int] | None = None

    def floats(self, chunk: Any, offset: int) -> NDArray[np.float64]:
        """A chunk's features (``--dequantize`` columns dequantised by table row index)."""
        from argparse import Namespace

        from fairsteer.table_args import chunk_features

        args = Namespace(dequantize=list(self.dequantize), seed=self.seed)
        return chunk_features(chunk, self.features, args, offset)  # type: ignore[no-any-return]

    def forward(self, X: NDArray[np.float64], coder: Any, codes: Any, chunk: Any) -> Any:
        """A chunk's features on the Gaussian scale (per-group families get the model's
        group codes; messages name the rows of the file)."""
        if not self.family.group_dependent:
            return self.family.forward(X, None, self.features, rows=chunk.where)
        lut = np.array(
            [self.group_codes[label_key(chunk.source.kind, v)] for v in coder.labels],  # type: ignore[index]
            dtype=np.intp,
        )
        return self.family.forward(X, lut[codes], self.features, rows=chunk.where)


def _in_shard(path: Path, exc: InputError, hint: str = "") -> InputError:
    message = str(exc)
    if str(path) not in message:
        message = f"shard {path.name}: {message}"
    if hint and "--features" not in message:
        message += hint
    return InputError(message)


def _open_shard(path: Path, layout: Layout) -> Any:
    from fairsteer.io import open_table

    source = open_table(path)
    if source.names != layout.names:
        raise InputError(
            f"has columns {source.names}, the first shard has {layout.names}; every shard "
            "needs the same columns in the same order"
        )
    return source


Codes = NDArray[np.intp]


class _CodedShard:
    """One shard opened with its group and class coders (both passes of ``fit`` read it so)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        from fairsteer.io import LabelCoder

        self.path, self.layout = path, layout
        self.source = _open_shard(path, layout)
        self.groups = LabelCoder(self.source, layout.group, "group")
        self.classes = LabelCoder(self.source, layout.label, "class")

    def chunks(self, offset: int) -> Iterator[tuple[Any, NDArray[np.float64], Codes, Codes]]:
        """``(chunk, features, group codes, class codes)``; a bad feature cell names the shard."""
        for chunk in self.source.chunks():
            try:
                X = self.layout.floats(chunk, offset)
            except InputError as exc:
                hint = FEATURES_HINT if self.layout.defaulted else ""
                raise _in_shard(self.path, exc, hint) from None
            c = self.classes.encode(chunk)
            yield chunk, X, self.groups.encode(chunk), c


def shard_partial(path: Path, layout: Layout, offset: int = 0) -> ShardPartial:
    """Statistics of one shard, streamed chunk by chunk (the one-file path of ``fit``).

    ``offset`` is the number of rows in the shards before this one (the
    dequantisation noise depends on a row's index in the whole table).

    Raises
    ------
    InputError
        For any bad cell, naming the shard, the row (and line) and the column.
    """
    from fairsteer.dask import Partial
    from fairsteer.stats import cell_statistics_from_codes

    features = layout.features
    span = FeatureRange(len(features))
    stats = None
    n_rows = 0
    try:
        shard = _CodedShard(path, layout)
        source, groups, classes = shard.source, shard.groups, shard.classes
        for chunk, X, g, c in shard.chunks(offset):
            Z = layout.forward(X, groups, g, chunk)
            span.update(Z)
            part = cell_statistics_from_codes(
                Z, g, c, groups.labels, classes.labels, pooled=layout.pooled
            )
            with np.errstate(all="ignore"):  # out-of-range values: FeatureRange names them
                stats = part if stats is None else stats.merge(part)
            n_rows += chunk.n_rows
    except InputError as exc:
        raise _in_shard(path, exc) from None
    spellings: dict[Hashable, Hashable] = {}
    if stats is not None:
        key = source.kind
        gk = tuple(label_key(key, v) for v in stats.groups)
        ck = tuple(label_key(key, v) for v in stats.classes)
        spellings = {
            **dict(zip(gk, stats.groups)),
            **dict(zip(ck, stats.classes)),
        }
        stats = CellStats(gk, ck, stats.counts, stats.means, stats.scatters, stats.pooled)
    return ShardPartial(Partial(stats, span), spellings, n_rows)


def shard_rows(path: Path, layout: Layout) -> int:
    """Data rows of one shard (Parquet: from its footer; CSV: by reading it).

    Needed before a pass that depends on a row's index in the whole table
    (the family sample's keys, the dequantisation noise).
    """
    try:
        source = _open_shard(path, layout)
        if source.kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        return sum(chunk.n_rows for chunk in source.chunks())
    except InputError as exc:
        raise _in_shard(path, exc) from None


@dataclass(frozen=True, eq=False)
class ShardSample:
    """The family sample of some shards (labels are :func:`label_key` keys) and their spellings."""

    sample: Any
    spellings: dict[Hashable, Hashable]

    @property
    def n_rows(self) -> int:
        """Rows seen."""
        return int(self.sample.n_rows)


def merge_shard_samples(*parts: ShardSample) -> ShardSample:
    """Merge left to right; the first spelling of a label (in shard order) wins."""
    from fairsteer.sampling import merge_samples

    spellings: dict[Hashable, Hashable] = {}
    for part in parts:
        for key, text in part.spellings.items():
            spellings.setdefault(key, text)
    return ShardSample(merge_samples(*(p.sample for p in parts)), spellings)


def shard_sample(path: Path, layout: Layout, offset: int, size: int) -> ShardSample:
    """The family sample of one shard (rows ``offset``, ``offset + 1``, ... of the table).

    Every row is read and checked as in :func:`shard_partial`; at most
    ``size`` rows (the smallest keys, :class:`fairsteer.sampling.RowSample`)
    are kept at any time.
    """
    from fairsteer.sampling import RowSample

    sample = RowSample.empty(len(layout.features), size, layout.seed)
    try:
        shard = _CodedShard(path, layout)
        source, groups, classes = shard.source, shard.groups, shard.classes
        for chunk, X, g, c in shard.chunks(offset):
            part = RowSample.of(
                X,
                g,
                c,
                range(len(groups.labels)),
                range(len(classes.labels)),
                first_row=offset + chunk.start,
                size=size,
                seed=layout.seed,
            )
            sample = sample.merge(part)
    except InputError as exc:
        raise _in_shard(path, exc) from None
    # Codes -> label keys (CSV cells spelling one number are one label across shards).
    kind = source.kind
    gk = tuple(label_key(kind, v) for v in groups.labels)
    ck = tuple(label_key(kind, v) for v in classes.labels)
    spellings = {**dict(zip(gk, groups.labels)), **dict(zip(ck, classes.labels))}
    sample = dataclasses.replace(
        sample,
        group_labels=tuple(gk[k] for k in sample.group_labels),
        class_labels=tuple(ck[k] for k in sample.class_labels),
    )
    return ShardSample(sample, spellings)


@dataclass(frozen=True)
class SteerPlan:
    """What every steer task needs: the maps, the label codes and the cell weights."""

    layout: Layout
    maps: Any
    group_index: dict[Hashable, int]
    class_index: dict[Hashable, int]
    cell_weights: NDArray[np.float64]
    weight_column: str
    round_dequantized: bool = False


def _codes(coder: Any, chunk: Any, index: dict[Hashable, int], kind: str) -> NDArray[np.intp]:
    local = coder.encode(chunk)
    try:
        lut = np.array([index[label_key(kind, v)] for v in coder.labels], dtype=np.intp)
    except KeyError:
        raise InputError(f"{coder.source.path} changed while it was being read") from None
    return lut[local]


def shard_steer(path: Path, target: Path, out_kind: str, plan: SteerPlan, offset: int = 0) -> int:
    """Steer one shard into ``target`` (written atomically); returns its row count.

    Feature columns are replaced in place, every other column is carried as
    the one-file ``steer`` carries it, and the weight column is appended.
    ``offset``: the rows of the shards before this one (dequantisation noise).
    """
    from fairsteer.io import LabelCoder, TableWriter, atomic_output

    layout, maps = plan.layout, plan.maps
    group_names = np.array(maps.original.groups)
    class_names = np.array(maps.original.classes)
    K = len(class_names)
    n_rows = 0
    try:
        source = _open_shard(path, layout)
        groups = LabelCoder(source, layout.group, "group")
        classes = LabelCoder(source, layout.label, "class")
        with atomic_output(target) as fh:
            names = [*source.names, plan.weight_column]
            writer = TableWriter(fh, out_kind, names, source)
            for chunk in source.chunks():
                X = layout.floats(chunk, offset)
                c = _codes(classes, chunk, plan.class_index, source.kind)
                g = _codes(groups, chunk, plan.group_index, source.kind)
                steered = maps.steer(X, class_names[c], group_names[g])
                if plan.round_dequantized:
                    for name in layout.dequantize:  # floor inverts x + U, U in [0, 1)
                        j = layout.features.index(name)
                        steered[:, j] = np.floor(steered[:, j])
                updates = {name: steered[:, j] for j, name in enumerate(layout.features)}
                updates[plan.weight_column] = plan.cell_weights[g * K + c]
                writer.write(chunk, updates)
                n_rows += chunk.n_rows
            if n_rows == 0 and out_kind == "parquet":
                _empty_parquet(fh, path, names, layout.features)
            else:
                writer.close()
    except InputError as exc:
        raise _in_shard(path, exc) from None
    return n_rows


def _empty_parquet(fh: Any, path: Path, names: list[str], features: list[str]) -> None:
    """A Parquet file with no rows and the schema the steered shard would have."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() in (".parquet", ".pq"):
        schema = pq.read_schema(path)
        types = {f.name: f.type for f in schema}
    else:
        types = {}
    fields = [
        pa.field(n, pa.float64() if n in features or n not in types else types[n]) for n in names
    ]
    pq.ParquetWriter(fh, pa.schema(fields)).close()


# ------------------------------------------------------------------ engines


class LocalRunner:
    """Run shard tasks one after the other in this process."""

    def reduce(
        self,
        fn: Callable[..., Any],
        items: Sequence[tuple[Any, ...]],
        merge: Callable[..., Any] = merge_shard_partials,
    ) -> Any:
        total = None
        for item in items:
            part = fn(*item)
            total = part if total is None else merge(total, part)
        return total

    def map(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [fn(*item) for item in items]

    def reduce_at_offsets(
        self,
        fn: Callable[..., Any],
        shards: Sequence[Path],
        layout: Layout,
        rest: tuple[Any, ...],
        merge: Callable[..., Any],
        offsets: list[int] | None,
    ) -> tuple[Any, list[int]]:
        """``fn(path, layout, offset, *rest)`` merged over the shards, and the offsets.

        Shard after shard: unknown offsets are counted on the way (each part's
        ``n_rows``), with no extra pass.
        """
        total, found, offset = None, [], 0
        for k, path in enumerate(shards):
            start = offset if offsets is None else offsets[k]
            part = fn(path, layout, start, *rest)
            found.append(start)
            offset = start + part.n_rows
            total = part if total is None else merge(total, part)
        return total, found


class DaskRunner:
    """Run shard tasks on a ``distributed`` client.

    :meth:`reduce` merges the shards' statistics (or family samples) by a
    tree (:func:`fairsteer.dask.tree_reduce`); :meth:`map` waits for every task,
    finished or failed, before it reports the first failure (in shard order),
    so that no task is still writing when the caller cleans up.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def reduce(
        self,
        fn: Callable[..., Any],
        items: Sequence[tuple[Any, ...]],
        merge: Callable[..., Any] = merge_shard_partials,
    ) -> Any:
        import dask

        from fairsteer.dask import tree_reduce

        parts = [dask.delayed(fn, pure=False)(*item) for item in items]
        tree = tree_reduce(parts, merge=merge)
        with _engine_errors():
            return self.client.compute(tree).result()

    def reduce_at_offsets(
        self,
        fn: Callable[..., Any],
        shards: Sequence[Path],
        layout: Layout,
        rest: tuple[Any, ...],
        merge: Callable[..., Any],
        offsets: list[int] | None,
    ) -> tuple[Any, list[int]]:
        """``fn(path, layout, offset, *rest)`` merged by a tree, and the offsets.

        The tasks run at once, so unknown offsets come from a first pass that
        counts every shard's rows (:func:`shard_rows`).
        """
        if offsets is None:
            counts = self.map(shard_rows, [(path, layout) for path in shards])
            offsets = [0, *np.cumsum(counts)[:-1].astype(int).tolist()]
        items = [(path, layout, start, *rest) for path, start in zip(shards, offsets)]
        return self.reduce(fn, items, merge), offsets

    def map(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]]) -> list[Any]:
        with _engine_errors():
            futures = [self.client.submit(fn, *item, pure=False) for item in items]
            results, errors = [], []
            for future in futures:  # every task ends (done or failed) before we go on
                try:
                    results.append(future.result())
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
            return results


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """A worker that died or a lost connection -> InputError naming the engine."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "distributed" and not isinstance(
            exc, OSError | TimeoutError
        ):
            raise
        hint = (
            "a worker died (out of memory?): give the workers more memory or use smaller shards"
            if type(exc).__name__ == "KilledWorker"
            else "check that the scheduler and its workers are running and see the same files"
        )
        raise InputError(
            f"the Dask computation failed ({type(exc).__name__}: {exc}); {hint}"
        ) from None


@contextlib.contextmanager
def runner(args: Any, n_tasks: int) -> Iterator[LocalRunner | DaskRunner]:
    """The engine of ``--engine``: in process, a LocalCluster, or ``--scheduler ADDRESS``."""
    if getattr(args, "engine", "local") != "dask":
        yield LocalRunner()
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "--engine dask needs dask and distributed: pip install 'fairsteer[dask]'"
        ) from None
    import logging

    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {args.scheduler} ({exc}); start one "
                "(dask scheduler; dask worker ADDRESS) or use --workers N for a local cluster"
            ) from None
        with client:
            yield DaskRunner(client)
        return
    n = args.workers or max(1, min(os.cpu_count() or 1, n_tasks))
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: never a clash with a running cluster
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster, set_as_default=False) as client:
        yield DaskRunner(client)


# ----------------------------------------------------------------- commands


def _layout(args: Any, shards: list[Path], reserved: Sequence[str]) -> tuple[Layout, Any]:
    """Columns, features and family, from the first shard (its first chunk for the features)."""
    from fairsteer.io import open_table

    first = open_table(shards[0])
    first.require([args.group, args.label])
    for name in args.features or ():
        if name in (args.group, args.label):
            raise InputError(f"column {name!r} cannot be both a feature and the group/label")
    if args.features:
        first.require(args.features)
    for name in reserved:
        if name in first.names:
            raise InputError(f"column {name!r} already exists; choose another --weight-column")
    features = list(args.features or ())
    if not features:
        for path in shards:
            source = open_table(path) if path != shards[0] else first
            chunk = next(iter(source.chunks()), None)
            if chunk is None:
                continue
            try:
                features = chunk.numeric_names(exclude=(args.group, args.label))
            except InputError as exc:
                raise _in_shard(path, exc, FEATURES_HINT) from None
            break
        if not features:
            raise InputError("no numeric feature columns found; name them with --features")
    from fairsteer.table_args import families as _families

    family = _families(args.family, len(features), features)
    layout = Layout(
        list(first.names),
        features,
        args.group,
        args.label,
        family,
        not args.features,
        args.covariance == "shared",
        tuple(getattr(args, "dequantize", None) or ()),
        getattr(args, "seed", 0),
    )
    return layout, family


@dataclass
class ShardFit:
    """The model of a sharded fit and what the steer pass needs.

    ``offsets[k]``: the rows of the shards before shard k (all zero when no
    pass needs a row's index in the whole table).
    """

    model: Any
    layout: Layout
    total: ShardPartial
    kind: str
    offsets: list[int]


def _sorted_keys(keys: Sequence[Hashable], spellings: dict[Hashable, Hashable]) -> list[Hashable]:
    """Label keys in the sorted order of their spellings (the model's label order)."""
    try:
        return sorted(keys, key=lambda k: spellings[k])  # type: ignore[arg-type,return-value]
    except TypeError:
        raise InputError(
            "group or class labels mix types across shards (e.g. numbers and strings); "
            "convert the column to one type"
        ) from None


def _fit_families(
    args: Any, shards: list[Path], run: Any, layout: Layout
) -> tuple[Layout, tuple[Hashable, ...], tuple[Hashable, ...], list[int]]:
    """Pass 1: the family sample of every shard, merged; the families fitted on it.

    Returns the layout with the fitted families (and the model's group codes
    for per-group ones), the model's group and class labels, and the offsets
    of the shards (rows before each).
    """
    from fairsteer.table_args import family_sample_rows

    size = family_sample_rows(args)
    total, offsets = run.reduce_at_offsets(
        shard_sample, shards, layout, (size,), merge_shard_samples, None
    )
    sample, spell = total.sample, total.spellings
    if sample.n_rows == 0:
        raise InputError(f"the {len(shards)} shard(s) of {args.data} have no data rows")
    order_g = _sorted_keys(sample.group_labels, spell)
    order_c = _sorted_keys(sample.class_labels, spell)
    family = sample.fit(layout.family, order_g, order_c, seed=layout.seed)
    layout = dataclasses.replace(
        layout, family=family, group_codes={key: k for k, key in enumerate(order_g)}
    )
    return layout, tuple(spell[k] for k in order_g), tuple(spell[k] for k in order_c), offsets


def _fit(args: Any, shards: list[Path], run: Any, reserved: Sequence[str] = ()) -> ShardFit:
    """Fit from the shards: the family sample first where needed, then the statistics.

    - pass 1 (only with families to fit): the family sample
      (:func:`_fit_families`);
    - pass 2: the cell statistics on the Gaussian scale, tree-merged.

    Both need every row's index in the whole table (the sample's keys, the
    ``--dequantize`` noise): the local engine counts the rows on the way, the
    Dask engine counts every shard's rows first (:func:`shard_rows`).
    """
    from fairsteer.dask import Partial, finish_fit
    from fairsteer.table_args import family_sample_rows

    family_sample_rows(args)  # checked before any pass
    layout, family = _layout(args, shards, reserved)
    offsets = None if layout.dequantize else [0] * len(shards)
    group_labels = class_labels = None
    if not family.fitted:
        layout, group_labels, class_labels, offsets = _fit_families(args, shards, run, layout)
        family = layout.family
    total, offsets = run.reduce_at_offsets(
        shard_partial, shards, layout, (), merge_shard_partials, offsets
    )
    stats = total.labelled()
    if stats is None:
        raise InputError(f"the {len(shards)} shard(s) of {args.data} have no data rows")
    _, model = finish_fit(
        Partial(stats, total.partial.span),
        family=family,
        covariance=args.covariance,
        shrinkage=parse_shrinkage(args.shrinkage),
        features=layout.features,
        group_labels=group_labels,
        class_labels=class_labels,
    )
    return ShardFit(model, layout, total, SUFFIXES[shards[0].suffix.lower()], offsets)


def _check_output(output: Path, shards: Sequence[Path]) -> None:
    out = output.resolve()
    for path in shards:
        if path.resolve() == out:
            raise InputError(f"refusing to overwrite the input {path}; choose another -o")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")


def fit_command(args: Any) -> int:
    """``fairsteer fit`` on shards or on Dask: the model JSON of the concatenated shards."""
    shards = shard_paths(args.data) or [Path(args.data)]
    output = Path(args.output)
    _check_output(output, shards)
    with runner(args, len(shards)) as run:
        fitted = _fit(args, shards, run)
    model = fitted.model
    model.save(output)
    print(
        f"fitted {model.n_groups} groups x {model.n_classes} classes on "
        f"{len(fitted.layout.features)} features ({model.family}, {args.covariance} "
        f"covariance) from {fitted.total.n_rows} rows in {len(shards)} shard(s) -> {output}"
    )
    return 0


def _output_dir(output: Path, shards: Sequence[Path]) -> None:
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise InputError(
            f"output {output} already exists; -o names a new (or empty) directory for the "
            "steered shards"
        )
    _check_output(output, shards)
    ins = {p.resolve().parent for p in shards}
    if output.resolve() in ins:
        raise InputError(f"refusing to write into the input directory {output}; choose another -o")


def steer_command(args: Any) -> int:
    """``fairsteer steer`` on shards or on Dask.

    A directory or glob of shards gives a directory of steered shards (same
    names); one file with ``--engine dask`` gives one file, as without it.
    """
    import json

    from fairsteer.files import write_atomic
    from fairsteer.maps import SteeringMaps
    from fairsteer.solve import solve

    sharded = shard_paths(args.data)
    shards = sharded or [Path(args.data)]
    output = Path(args.output)
    if getattr(args, "round_dequantized", False) and not args.dequantize:
        raise InputError("--round-dequantized floors the --dequantize columns; name them")
    if sharded is None:
        _check_output(output, shards)
        out_kinds = [_file_kind(output)]
    else:
        _output_dir(output, shards)
        out_kinds = [SUFFIXES[p.suffix.lower()] for p in shards]
    base = output.with_suffix("") if sharded is None else output
    artifacts = [Path(f"{base}.model.json"), Path(f"{base}.solution.json")]
    artifacts.append(Path(f"{base}.audit.json"))
    if args.artifacts:
        for path in artifacts:
            _check_output(path, shards)
    with runner(args, len(shards)) as run:
        fitted = _fit(args, shards, run, reserved=[args.weight_column])
        model = fitted.model
        sol = solve(model, args.method, reference=args.reference, seed=args.seed)
        maps = SteeringMaps.from_solution(model, sol)
        m, K = model.n_groups, model.n_classes
        cell_weights = maps.weights(
            np.tile(np.array(model.classes), m), np.repeat(np.array(model.groups), K)
        )
        kind = fitted.kind
        plan = SteerPlan(
            fitted.layout,
            maps,
            {label_key(kind, v): k for k, v in enumerate(model.groups)},
            {label_key(kind, v): k for k, v in enumerate(model.classes)},
            cell_weights,
            args.weight_column,
            bool(getattr(args, "round_dequantized", False)),
        )
        starts = fitted.offsets
        if sharded is None:
            counts = run.map(shard_steer, [(shards[0], output, out_kinds[0], plan, 0)])
        else:
            with _staging(output) as stage:
                items = [
                    (path, stage / path.name, kind, plan, start)
                    for path, kind, start in zip(shards, out_kinds, starts)
                ]
                counts = run.map(shard_steer, items)
    if args.artifacts:
        from fairsteer.audit import audit

        model.save(artifacts[0])
        sol.save(artifacts[1])
        report = {
            "before": audit(model, nearest=sol).to_dict(),
            "after": audit(sol.ideal).to_dict(),
        }
        write_atomic(artifacts[2], json.dumps(report, indent=1))
    where = f"{len(shards)} shard(s) in {output}" if sharded is not None else str(output)
    print(
        f"steered {sum(counts)} rows, {len(fitted.layout.features)} features ({sol.method}"
        + (f", reference {sol.reference_group!r}" if sol.reference_group is not None else "")
        + f"; KL = {sol.kl:.6g} nats) -> {where}"
    )
    if args.artifacts:
        print(f"wrote {', '.join(map(str, artifacts))}")
    return 0


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported file type {suffix!r} for {path}; use .csv or .parquet")
    return SUFFIXES[suffix]


@contextlib.contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A temporary directory beside ``output``, renamed to it when the block succeeds.

    On any error (or interrupt) the directory and every shard in it are removed.
    """
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        stage.chmod(0o777 & ~mask)
        yield stage
        if output.exists():
            output.rmdir()  # empty (checked before the work)
        os.replace(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
