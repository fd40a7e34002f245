"""Reading and writing tables for the command line (CSV and Parquet).

Two layers:

- :func:`open_table` / :class:`TableSource` stream a file in chunks
  (:class:`Chunk`) and :class:`TableWriter` writes chunk by chunk into the
  temporary file of :func:`atomic_output`; this is what ``fit`` and ``steer``
  use, so their memory is bounded by a chunk, not by the file. CSV goes through
  pyarrow's streaming reader when pyarrow is installed (every column read as
  text, the features then parsed as float64) and through the standard library
  otherwise; Parquet needs pyarrow.
- :func:`read_table` / :func:`write_table` read and write a whole
  :class:`Table` at once (small files, the synthetic data generator).

CSV cells keep their original text: the columns that are not steered are
written back as the standard library's ``csv.writer`` writes their text (the
same bytes whichever reader and writer run), steered numbers as ``repr`` of
the float. Parquet keeps the original Arrow types.
"""

from __future__ import annotations

import atexit
import csv
import functools
import importlib.util
import io
import os
import sys
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.files import atomic_output, write_atomic
from fairsteer.linalg import all_finite

__all__ = [
    "CellValues",
    "Chunk",
    "ChunkStream",
    "LabelCoder",
    "Table",
    "TableSource",
    "TableWriter",
    "atomic_output",
    "check_output",
    "format_floats",
    "open_table",
    "read_table",
    "write_table",
]

# Chunk sizes (tests set them tiny to put chunk boundaries everywhere):
# pyarrow's CSV reader cuts the file into blocks of CHUNK_BYTES (grown when a
# single row is longer); the standard-library CSV reader and the Parquet reader
# take CHUNK_ROWS rows at a time.
# Read buffer of the Parquet reader (bounded memory whatever the file size).
READ_BUFFER = 1 << 20
# Blocks that pyarrow's CSV reader may hold beyond the batches handed out, and the
# longest wait for the caller to take a batch before one more block is read anyway.
READ_AHEAD = 2
# Dictionaries up to this many entries: integer labels coded by their range, and
# the entries that rows use found by counting (LabelCoder.encode).
SMALL_DICTIONARY = 4096
STALL_SECONDS = 30.0
# Threads that format the rows of a CSV chunk, in parts of at least MIN_PART_ROWS.
WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))
MIN_PART_ROWS = 4096
# Rows of a Parquet row group that steer writes (chunks are buffered up to it).
ROW_GROUP_ROWS = 1 << 17
# 32768 rows: on 2M rows (bench_tables.py, 2026-11-26) as fast as 131072 (fit
# faster: the reader and the statistics overlap sooner) with a third less peak
# memory; 16384 rows saves 10-15 MB but fit is 25-55% slower. 2 MB CSV blocks: fit
# as fast as 4 MB, steer with shared covariance 15% faster, 15-40 MB less peak
# memory (3 interleaved fresh processes each; 1 MB saves 30 MB more but fit is
# 10-15% slower).
CHUNK_BYTES = int(os.environ.get("FAIRSTEER_CHUNK_BYTES", 2 << 20))
CHUNK_ROWS = int(os.environ.get("FAIRSTEER_CHUNK_ROWS", 1 << 15))
# "auto": pyarrow when importable, else the standard library; "stdlib" forces it.
CSV_ENGINE = os.environ.get("FAIRSTEER_CSV_ENGINE", "auto")

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"unsupported file type {suffix!r} for {path}; use .csv or .parquet")
    return FORMATS[suffix]


@dataclass
class Table:
    """Named columns of equal length, in file order.

    ``columns[name]`` is a list of strings (CSV) or a pyarrow array (Parquet);
    ``lines[k]`` is the file line of data row k (CSV only, for messages).
    """

    names: list[str]
    columns: dict[str, Any]
    n_rows: int
    kind: str = "csv"
    replaced: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    lines: list[int] | None = None

    def require(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise InputError(f"unknown column {missing[0]!r}; the table has columns {self.names}")

    def values(self, name: str) -> NDArray[Any]:
        """Raw values of a column as a numpy array (strings for CSV)."""
        self.require([name])
        col = self.columns[name]
        if self.kind == "csv":
            return np.asarray(col, dtype=object)
        return np.asarray(col.to_numpy(zero_copy_only=False))

    def where(self, row: int) -> str:
        """``"row k"`` (1-based data row), with the file line for CSV."""
        if self.lines is not None:
            return f"row {row + 1} (line {self.lines[row]})"
        return f"row {row + 1}"

    def numeric(self, names: Sequence[str]) -> NDArray[np.float64]:
        """Columns as a float64 matrix (n_rows, len(names)).

        Raises
        ------
        InputError
            Naming the column, the row and the value of the first cell that is
            empty, NaN, infinite or not a number.
        """
        self.require(names)
        out = np.empty((self.n_rows, len(names)))
        for j, name in enumerate(names):
            raw = self.values(name)
            try:
                with np.errstate(all="ignore"):
                    out[:, j] = raw.astype(np.float64)
            except (TypeError, ValueError):
                raise InputError(self._bad_cell_message(name, raw)) from None
            if not np.all(np.isfinite(out[:, j])):
                raise InputError(self._bad_cell_message(name, raw))
        return out

    def numeric_names(self, exclude: Sequence[str] = ()) -> list[str]:
        """The numeric columns (the default features), in file order.

        A column is numeric when at least half of its cells parse as numbers.
        Such a column must be clean: an empty, NaN, infinite or non-numeric
        cell in it raises instead of silently dropping the column. Columns
        that are mostly text are not numeric and are skipped.

        Raises
        ------
        InputError
            For a numeric column with a bad cell (column, row and value named).
        """
        names = []
        for name in self.names:
            if name in exclude:
                continue
            raw = self.values(name)
            try:
                with np.errstate(all="ignore"):
                    vals = raw.astype(np.float64)
            except (TypeError, ValueError):
                kinds = [_cell_kind(v) for v in raw]
                numbers = sum(k in ("finite", "nonfinite") for k in kinds)
                if 2 * numbers < len(kinds):
                    continue  # a text column (category, id, note): not a feature
                raise InputError(self._bad_cell_message(name, raw)) from None
            if not np.all(np.isfinite(vals)):
                raise InputError(self._bad_cell_message(name, raw))
            names.append(name)
        return names

    def labels(self, name: str, what: str) -> NDArray[Any]:
        """Group or class label of every row, missing values rejected.

        CSV cells that spell the same number (``1``, ``1.0``, `` 1``) are one
        label, named by the first spelling in the file; the output keeps every
        cell's own text.

        Parameters
        ----------
        name : str
            Column name.
        what : str
            ``"group"`` or ``"class"``, for messages.

        Raises
        ------
        InputError
            If a cell is empty, null or NaN.
        """
        raw = self.values(name)
        for k, v in enumerate(raw):
            if _cell_kind(v) in ("missing", "nonfinite"):
                raise InputError(
                    f"column {name!r} {self.where(k)} has no {what} ({_show(v)}); every row "
                    f"needs a {what}: fill or drop that row"
                )
        if self.kind != "csv":
            return raw
        spelling: dict[Any, str] = {}
        out = np.empty(raw.size, dtype=object)
        for k, text in enumerate(raw):
            out[k] = spelling.setdefault(csv_label_key(text), text)
        return out

    def _bad_cell_message(self, name: str, raw: NDArray[Any]) -> str:
        return _bad_cell_message(name, raw, self.where, "in all")

    def with_columns(self, updates: dict[str, NDArray[np.float64]]) -> Table:
        """A table with numeric columns replaced (same position) or appended."""
        names = list(self.names) + [n for n in updates if n not in self.columns]
        replaced = {**self.replaced, **{k: np.asarray(v, np.float64) for k, v in updates.items()}}
        for key, v in replaced.items():
            if v.shape != (self.n_rows,):
                raise InputError(f"column {key!r} must have {self.n_rows} values, got {v.shape}")
        return Table(names, self.columns, self.n_rows, self.kind, replaced, self.lines)


def _bad_cell_message(name: str, raw: Any, where: Any, scope: str) -> str:
    """Name the first cell of ``raw`` that is not a finite number (``where(k)`` places it)."""
    kinds = [_cell_kind(v) for v in raw]
    bad = [k for k, kind in enumerate(kinds) if kind != "finite"]
    k = bad[0]
    what = {
        "missing": "is empty",
        "nonfinite": f"is NaN or infinite ({_show(raw[k])})",
        "text": f"holds the non-numeric value {raw[k]!r}",
    }[kinds[k]]
    more = f" ({len(bad)} bad cells {scope})" if len(bad) > 1 else ""
    return (
        f"numeric column {name!r} {where(k)} {what}{more}; fix or drop those rows, "
        "or leave the column out of the features"
    )


def csv_label_key(text: str) -> Hashable:
    """The identity of a CSV label cell: cells that spell one number are one label.

    ``1``, ``1.0``, `` 1`` and ``1e0`` are the number 1 (an int and a float
    that are equal are one dictionary key); an integer is read exactly, so
    IDs beyond 2^53 that differ in their last digits stay apart; any other
    text is itself.
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return ("text", text)


def _cell_kind(v: Any) -> str:
    """``"finite"``, ``"nonfinite"`` (NaN, inf), ``"missing"`` (empty, null) or ``"text"``."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return "missing"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "text"
    return "finite" if np.isfinite(x) else "nonfinite"


def _show(v: Any) -> str:
    return "empty" if v is None or (isinstance(v, str) and not v.strip()) else repr(v)


def read_table(path: str | os.PathLike[str]) -> Table:
    """Read a CSV or Parquet file.

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported type, empty table, ragged rows,
        duplicate column names.
    """
    kind = _format(path)
    if not Path(path).is_file():
        raise InputError(f"file not found: {path}")
    lines = None
    if kind == "csv":
        rows, ends = [], []
        try:
            # utf-8-sig: a byte-order mark (Excel) must not become part of the first name
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                for row in reader:
                    if row:  # blank lines are not rows
                        rows.append(row)
                        ends.append(reader.line_num)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read {path} as CSV: {exc}") from None
        if len(rows) < 2:
            raise InputError(f"{path} has no data rows; it needs a header and at least one row")
        header, body, lines = rows[0], rows[1:], ends[1:]
        bad = next((k for k, r in enumerate(body) if len(r) != len(header)), None)
        if bad is not None:
            raise InputError(
                f"{path} row {bad + 1} (line {lines[bad]}) has {len(body[bad])} fields, "
                f"the header has {len(header)}"
            )
        cols = {name: [r[j] for r in body] for j, name in enumerate(header)}
        n_rows = len(body)
    else:
        pq = _pyarrow_parquet()
        try:
            arrow = pq.read_table(path)
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise InputError(f"cannot read {path} as Parquet: {exc}") from None
        header = list(arrow.column_names)
        cols = {name: arrow.column(name).combine_chunks() for name in header}
        n_rows = arrow.num_rows
        if n_rows == 0:
            raise InputError(f"{path} has no rows")
    if len(set(header)) != len(header):
        raise InputError(f"{path} has duplicate column names; rename them")
    return Table(header, cols, n_rows, kind, lines=lines)


def write_table(table: Table, path: str | os.PathLike[str], *, input_path: Any = None) -> None:
    """Write atomically as CSV or Parquet (by extension); never over ``input_path``."""
    if input_path is not None and Path(path).resolve() == Path(input_path).resolve():
        raise InputError(f"refusing to overwrite the input {input_path}; choose another -o")
    kind = _format(path)
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.names)
        cols = [_text_column(table, name) for name in table.names]
        writer.writerows(zip(*cols))
        write_atomic(path, buf.getvalue())
        return
    pa = _pyarrow()
    pq = _pyarrow_parquet()
    arrays = []
    for name in table.names:
        if name in table.replaced:
            arrays.append(pa.array(table.replaced[name]))
        elif table.kind == "parquet":
            arrays.append(table.columns[name])
        else:
            arrays.append(pa.array(table.columns[name]))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays, names=table.names), sink)
    write_atomic(path, sink.getvalue().to_pybytes())


def check_output(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> None:
    """Refuse an output path that is one of the inputs or lies in a missing folder.

    Called before any work, so a bad output path costs nothing.

    Raises
    ------
    InputError
        If ``output`` resolves to the same file as one of ``inputs``, or its
        folder does not exist.
    """
    out = Path(output).resolve()
    for path in inputs:
        if Path(path).resolve() == out:
            raise InputError(f"refusing to overwrite the input {path}; choose another output path")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")


def _text_column(table: Table, name: str) -> list[str]:
    if name in table.replaced:
        return [repr(float(v)) for v in table.replaced[name]]
    if table.kind == "csv":
        return table.columns[name]
    return ["" if v is None else str(v) for v in table.columns[name].to_pylist()]


_PYARROW: Any = None  # the module, once imported here
_POOL: str | None = None  # the memory pool asked for by prefer_memory_pool


def _pyarrow() -> Any:
    global _PYARROW
    # (a test may hide pyarrow after it was imported: then ask again)
    if _PYARROW is None or sys.modules.get("pyarrow") is not _PYARROW:
        from fairsteer.extras import require

        require("Parquet", "io", ["pyarrow"])
        import pyarrow

        _use_pool(pyarrow)
        _PYARROW = pyarrow
    return _PYARROW


def prefer_memory_pool(name: str) -> None:
    """Make pyarrow's ``name`` pool (``"jemalloc"``) the process's default when tables are read.

    For a process that is one command (the command line): the default pool is
    process-wide. Nothing changes when the user chose a pool
    (``ARROW_DEFAULT_MEMORY_POOL``) or pyarrow lacks ``name``. Measured on
    2M-row tables (``fit`` and ``steer``, CSV and Parquet): jemalloc's peak
    memory is 35-80 MB below that of mimalloc, pyarrow's default on Linux;
    Parquet is 5-15% faster, CSV 2-4% slower (``docs/benchmarks.md``).

    Parameters
    ----------
    name : str
        A pool of ``pyarrow`` (``pyarrow.<name>_memory_pool``), applied now if
        this module has imported pyarrow, else when it first does.
    """
    global _POOL
    _POOL = name
    if _PYARROW is not None:
        _use_pool(_PYARROW)


def _use_pool(pa: Any) -> None:
    if _POOL is None or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pool = getattr(pa, f"{_POOL}_memory_pool")()
    except (AttributeError, NotImplementedError):  # a build without it
        return
    if pa.default_memory_pool().backend_name != pool.backend_name:
        pa.set_memory_pool(pool)


def _pyarrow_parquet() -> Any:
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet


def have_pyarrow() -> bool:
    """Whether pyarrow is installed (without importing it)."""
    return importlib.util.find_spec("pyarrow") is not None


# ------------------------------------------------------------------ streaming


@dataclass
class Chunk:
    """Consecutive data rows of a table, in file order.

    ``columns[name]`` is a list of cell texts (CSV through the standard
    library), a pyarrow string array (CSV through pyarrow) or a typed pyarrow
    array (Parquet). ``start`` is the index of the first row in the file.
    """

    source: TableSource
    start: int
    n_rows: int
    columns: dict[str, Any]
    lines: list[int] | None = None
    # pyarrow's parse of each CSV text column (None: Python must decide), kept
    # because the default features parse every column twice on the first chunk.
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False)
    # Dictionary arrays of the label columns (group, class), made by the reader's
    # parse thread (pyarrow); the columns themselves keep their type.
    _dictionaries: dict[str, Any] = field(default_factory=dict, repr=False)
    # The feature matrix, made by the reader's parse thread when every feature
    # column is numeric, without nulls and finite (:func:`_float_matrix`): the
    # names it holds and the (n_rows, d) float64 array (in the order the stream
    # was asked for, TableSource.chunks); taken once.
    _matrix: tuple[tuple[str, ...], NDArray[np.float64]] | None = field(default=None, repr=False)

    def where(self, k: int) -> str:
        """``"row r (line l)"`` of row ``k`` of the chunk (1-based data row, file line for CSV)."""
        row = self.start + k
        if self.lines is not None:
            return f"row {row + 1} (line {self.lines[k]})"
        line = self.source.line_of(row) if self.source.kind == "csv" else None
        return f"row {row + 1}" + (f" (line {line})" if line is not None else "")

    def raw(self, name: str) -> NDArray[Any]:
        """The cells of a column as a numpy array (Python strings for CSV), as :class:`Table`."""
        col = self.columns[name]
        if isinstance(col, list):
            return np.asarray(col, dtype=object)
        if self.source.kind == "csv":
            return np.asarray(col.to_pylist(), dtype=object)
        return np.asarray(_numpy(col))

    def _fast_floats(self, name: str) -> NDArray[np.float64] | None:
        """pyarrow's parse of a CSV text column, or None where Python must decide."""
        col = self.columns[name]
        if isinstance(col, list) or self.source.kind != "csv":
            return None
        if name not in self._parsed and col.type != _pyarrow().string():  # read as float64
            self._parsed[name] = _numpy(col)
        if name not in self._parsed:
            pa, pc = _pyarrow(), _pyarrow_compute()
            try:
                # pyarrow accepts a subset of what float() accepts (not " 1" or "1_000"),
                # and both round correctly: where it succeeds the values are float()'s.
                self._parsed[name] = _numpy(pc.cast(col, pa.float64()))
            except pa.ArrowInvalid:
                self._parsed[name] = None
        return self._parsed[name]

    def floats(self, names: Sequence[str]) -> NDArray[np.float64]:
        """Columns as a float64 matrix (n_rows, len(names)).

        Raises
        ------
        InputError
            Naming the column, the row and the value of the first cell that is
            empty, NaN, infinite or not a number.
        """
        if self._matrix is not None and self._matrix[0] == tuple(names):
            out, self._matrix = self._matrix[1], None
            return out
        out = np.empty((self.n_rows, len(names)))
        for j, name in enumerate(names):
            values = self._fast_floats(name)
            if values is None:
                raw = self.raw(name)
                try:
                    with np.errstate(all="ignore"):
                        values = raw.astype(np.float64)
                except (TypeError, ValueError):
                    raise InputError(self._bad_cell_message(name, raw)) from None
            out[:, j] = values
            if not np.all(np.isfinite(out[:, j])):
                raise InputError(self._bad_cell_message(name, self.raw(name)))
        return out

    def numeric_names(self, exclude: Sequence[str] = ()) -> list[str]:
        """The numeric columns of this chunk (the default features), in file order.

        The rule of :meth:`Table.numeric_names`: a column is numeric when at
        least half of its cells parse as numbers, and then it must be clean.

        Raises
        ------
        InputError
            For a numeric column with a bad cell (column, row and value named).
        """
        names = []
        for name in self.source.names:
            if name in exclude:
                continue
            values = self._fast_floats(name)
            if values is None:
                try:
                    with np.errstate(all="ignore"):
                        values = self.raw(name).astype(np.float64)
                except (TypeError, ValueError):
                    values = None
            if values is not None and np.all(np.isfinite(values)):
                names.append(name)
                continue
            kinds, counts = self._kind_counts(name)
            numbers = sum(c for k, c in zip(kinds, counts) if k in ("finite", "nonfinite"))
            if 2 * numbers >= sum(counts):
                self.floats([name])  # raises naming the bad cell if there is one
                names.append(name)
        return names

    def _kind_counts(self, name: str) -> tuple[list[str], list[int]]:
        """:func:`_cell_kind` of the distinct cells of a column, with their counts."""
        col = self.columns[name]
        if not isinstance(col, list) and self.source.kind == "csv":
            vc = _pyarrow_compute().value_counts(col)
            values = vc.field("values").to_pylist()
            return [_cell_kind(v) for v in values], vc.field("counts").to_pylist()
        kinds = [_cell_kind(v) for v in self.raw(name)]
        return kinds, [1] * len(kinds)

    def _bad_cell_message(self, name: str, raw: NDArray[Any]) -> str:
        last = self.start + self.n_rows
        return _bad_cell_message(name, raw, self.where, f"in rows {self.start + 1}-{last}")


class ChunkStream(Iterator[Chunk]):
    """The chunks of one pass over a table (:meth:`TableSource.chunks`), in file order.

    An iterator with :meth:`close` (stop reading early) and :meth:`parse`.
    """

    def __init__(
        self, source: TableSource, chunks: Iterator[Chunk], floats: Sequence[str] = ()
    ) -> None:
        self.source, self.chunks = source, chunks
        self.floats = tuple(floats)

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Chunk:
        return next(self.chunks)

    def parse(self, floats: Sequence[str]) -> None:
        """Parse these columns too as float64 in the reader's thread, in the chunks not yet read.

        As ``floats`` of :meth:`TableSource.chunks`, for the chunks that the
        reader has not prepared yet (the features, once the first chunk has
        decided them); a chunk read before keeps them as text, which
        :meth:`Chunk.floats` parses.
        """
        self.floats = tuple(n for n in self.source.names if n in floats)

    def close(self) -> None:
        """Stop reading (a reader thread stops, its file is closed)."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class LabelCoder:
    """Integer codes of the group or class labels of a table, consistent across chunks.

    Codes follow the order of first appearance in the file; :meth:`sorted_codes`
    turns them into the sorted label order of a one-shot fit. CSV cells that
    spell the same number (``1``, ``1.0``) are one label, named by the first
    spelling in the file, as in :meth:`Table.labels`.

    Parameters
    ----------
    source : TableSource
    name : str
        Column name.
    what : str
        ``"group"`` or ``"class"``, for messages.
    """

    def __init__(self, source: TableSource, name: str, what: str) -> None:
        self.source, self.name, self.what = source, name, what
        self.labels: list[Hashable] = []
        self._index: dict[Any, int] = {}
        kind = getattr(source, "types", {}).get(name)  # Parquet's column types
        if kind is not None and not _label_type(kind):
            raise InputError(
                f"{what} column {name!r} holds {kind} values; labels must be text, numbers "
                "or booleans: convert the column (e.g. to strings)"
            )

    def _key(self, value: Any) -> Any:
        return csv_label_key(value) if self.source.kind == "csv" else value

    def encode(self, chunk: Chunk, *, grow: bool = True) -> NDArray[np.intp]:
        """Code of every row of ``chunk``.

        Raises
        ------
        InputError
            For an empty, null or NaN cell (row named), or, with ``grow=False``,
            a label not seen before.
        """
        col = chunk._dictionaries.get(self.name, chunk.columns[self.name])
        if not isinstance(col, list) and col.null_count:
            k = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(
                f"column {self.name!r} {chunk.where(k)} has no {self.what} (empty); every "
                f"row needs a {self.what}: fill or drop that row"
            )
        if not isinstance(col, list) and _pyarrow().types.is_dictionary(col.type):
            # A dictionary array whose entries are all labels seen before (every
            # chunk after the first, usually): one lookup per entry and one take,
            # instead of ordering the entries by first use.
            codes = [self._index.get(self._key(v)) for v in self._entries(col.dictionary)]
            indices = _numpy(col.indices)
            if None in codes and len(codes) <= SMALL_DICTIONARY:
                # entries that no row uses (a range of integers, a sliced batch) need no code
                used = np.bincount(indices, minlength=len(codes)) > 0
                codes = [-1 if k is None and not u else k for k, u in zip(codes, used)]
            if None not in codes:
                return np.array(codes, dtype=np.intp)[indices]
        uniques, local = self._distinct(col)
        lut = np.empty(len(uniques), dtype=np.intp)
        bad = [u for u, v in enumerate(uniques) if _cell_kind(v) in ("missing", "nonfinite")]
        if bad:
            k = int(np.flatnonzero(np.isin(local, bad))[0])
            v = uniques[local[k]]
            raise InputError(
                f"column {self.name!r} {chunk.where(k)} has no {self.what} ({_show(v)}); every "
                f"row needs a {self.what}: fill or drop that row"
            )
        for u, value in enumerate(uniques):
            key = self._key(value)
            code = self._index.get(key)
            if code is None:
                if not grow:
                    raise InputError(f"{self.source.path} changed while it was being read")
                code = self._index[key] = len(self.labels)
                self.labels.append(value)
            lut[u] = code
        return lut[local]

    def _entries(self, values: Any) -> list[Any]:
        """A pyarrow array's values as labels: CSV text, Parquet values as numpy gives them.

        (Parquet as :meth:`Table.labels`.)
        """
        if self.source.kind == "csv":
            return values.to_pylist()  # type: ignore[no-any-return]
        return [_py_value(v) for v in np.asarray(_numpy(values))]

    def _distinct(self, col: Any) -> tuple[list[Any], NDArray[np.intp]]:
        """Distinct cells in order of first appearance, and the index of every row's cell.

        ``col`` has no nulls.
        """
        if isinstance(col, list):
            seen: dict[str, int] = {}
            local = np.fromiter((seen.setdefault(v, len(seen)) for v in col), np.intp, len(col))
            return list(seen), local
        if _pyarrow().types.is_dictionary(col.type):
            return _used_entries(self._entries(col.dictionary), _numpy(col.indices))
        enc = _pyarrow_compute().dictionary_encode(col)
        return self._entries(enc.dictionary), _numpy(enc.indices).astype(np.intp)

    def sorted_labels(self) -> tuple[Hashable, ...]:
        """The labels in sorted order (the order of a one-shot fit)."""
        return tuple(sorted(self.labels))  # type: ignore[type-var]

    def sorted_codes(self, codes: NDArray[np.intp]) -> NDArray[np.intp]:
        """Codes in first-appearance order -> codes in sorted label order."""
        order = sorted(range(len(self.labels)), key=lambda k: self.labels[k])  # type: ignore[arg-type,return-value]
        rank = np.empty(len(order), dtype=np.intp)
        rank[order] = np.arange(len(order))
        return rank[codes]


def _encode_labels(chunk: Chunk, names: Sequence[str]) -> Chunk:
    """The dictionary arrays of the label columns ``names`` of a pyarrow chunk (for LabelCoder)."""
    pa, pc = _pyarrow(), _pyarrow_compute()
    for name in names:
        col = chunk.columns[name]
        if not pa.types.is_dictionary(col.type):
            coded = _integer_range_dictionary(col)
            chunk._dictionaries[name] = coded if coded is not None else pc.dictionary_encode(col)
    return chunk


def _integer_range_dictionary(col: Any) -> Any:
    """An integer column spanning at most :data:`SMALL_DICTIONARY` values, as a dictionary array.

    Its distinct values are counted (:func:`fairsteer.stats.small_int_unique`)
    instead of hashed (32k rows: ~0.1 ms against 0.2 ms). None for other
    columns (then pyarrow hashes them).
    """
    from fairsteer.stats import small_int_unique

    pa = _pyarrow()
    if not pa.types.is_integer(col.type) or col.null_count:
        return None
    counted = small_int_unique(_numpy(col), SMALL_DICTIONARY)
    if counted is None:
        return None
    uniq, codes = counted
    return pa.DictionaryArray.from_arrays(_arrow(codes.astype(np.int32)), _arrow(uniq))


def _used_entries(values: list[Any], indices: NDArray[Any]) -> tuple[list[Any], NDArray[np.intp]]:
    """The dictionary entries that rows use, in order of first use, and each row's index.

    A dictionary array's dictionary may hold entries no row uses (a sliced
    batch) or list them in another order than the rows first use them.
    """
    used, first = np.unique(indices, return_index=True)
    order = used[np.argsort(first)]
    local = np.empty(len(values), dtype=np.intp)
    local[order] = np.arange(order.size)
    return [values[k] for k in order], local[indices]


def _py_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class TableSource:
    """A CSV or Parquet file read chunk by chunk, as many times as needed.

    Parameters
    ----------
    path : str or path-like
    engine : {"auto", "pyarrow", "stdlib"}, optional
        CSV reader (default :data:`CSV_ENGINE`): pyarrow's streaming reader,
        or the standard library's ``csv`` module (no pyarrow needed, slower).
    """

    def __init__(self, path: str | os.PathLike[str], engine: str | None = None) -> None:
        self.path = path
        self.kind = _format(path)
        if not Path(path).is_file():
            raise InputError(f"file not found: {path}")
        engine = engine or CSV_ENGINE
        if self.kind == "parquet":
            self.engine = "pyarrow"
            pq = _pyarrow_parquet()
            try:
                # Unbuffered column chunks, read through a small buffer: memory bounded
                # by a batch, not by the file's row groups (pre_buffer keeps them all).
                self._parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
            except Exception as exc:  # pyarrow raises many types for a bad file
                raise InputError(f"cannot read {path} as Parquet: {exc}") from None
            self.names = list(self._parquet.schema_arrow.names)
            self.types = {f.name: f.type for f in self._parquet.schema_arrow}
        else:
            self.engine = "pyarrow" if engine != "stdlib" and have_pyarrow() else "stdlib"
            self.names = self._csv_header()
        if len(set(self.names)) != len(self.names):
            raise InputError(f"{path} has duplicate column names; rename them")

    def require(self, names: Sequence[str]) -> None:
        """Raise naming the first of ``names`` that is not a column."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise InputError(f"unknown column {missing[0]!r}; the table has columns {self.names}")

    def _open_text(self) -> Any:
        # utf-8-sig: a byte-order mark (Excel) must not become part of the first name
        return open(self.path, newline="", encoding="utf-8-sig")

    def _csv_header(self) -> list[str]:
        try:
            with self._open_text() as fh:
                for row in csv.reader(fh):
                    if row:
                        return row
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read {self.path} as CSV: {exc}") from None
        raise InputError(f"{self.path} has no data rows; it needs a header and at least one row")

    def no_rows_message(self) -> str:
        """The message for a table without data rows."""
        if self.kind == "csv":
            return f"{self.path} has no data rows; it needs a header and at least one row"
        return f"{self.path} has no rows"

    def chunks(
        self,
        floats: Sequence[str] = (),
        start: int = 0,
        labels: Sequence[str] = (),
        order: str = "C",
    ) -> ChunkStream:
        """The data rows, chunk after chunk, in file order.

        Parameters
        ----------
        floats : sequence of str
            Columns that the pyarrow CSV reader parses as float64 in a
            thread of its own (the features: the parse overlaps pyarrow's
            read of the next block and the caller's work on the previous
            chunk). Such a column then holds float64
            values, not its text, so it must be replaced when written. In a
            chunk with a cell that pyarrow does not take as a finite number
            the column stays text, so that :meth:`Chunk.floats` decides and
            words any error as for text. The Parquet reader (typed columns)
            only builds the feature matrix of these columns; the
            standard-library reader ignores them. :meth:`ChunkStream.parse`
            names them later.
        start : int
            Index of the first data row to yield (the rows before it are read
            and checked, not yielded).
        labels : sequence of str
            Columns with few distinct values (group and class) that the
            pyarrow readers dictionary-encode in a thread of their own, for
            :class:`LabelCoder`. The CSV columns keep their type; Parquet text
            columns are read as dictionary arrays, which
            :class:`TableWriter` writes with the column's type.
        order : {"C", "F"}
            Memory order of the feature matrix that the pyarrow readers' parse
            thread builds for :meth:`Chunk.floats` (``"F"``, column after
            column, is 3x cheaper to build from columns and what the
            statistics of a fit read best; ``"C"``, row after row, is what
            row gathers such as steering read best).

        Raises
        ------
        InputError
            Unreadable file, a row with the wrong number of fields (row and line
            named), text that is not UTF-8.
        """
        if self.kind == "parquet":
            names = [n for n in self.names if n in labels]
            pstream = ChunkStream(self, iter(()), [n for n in self.names if n in floats])

            def prepare(chunk: Chunk) -> Chunk:
                _float_matrix(chunk, pstream.floats, order)  # a tuple, replaced by parse()
                return _encode_labels(chunk, names)

            pstream.chunks = _prefetched(self._parquet_chunks(start, names), prepare=prepare)
            return pstream
        if self.engine == "stdlib":
            return ChunkStream(self, self._stdlib_chunks(start))
        stream = ChunkStream(self, iter(()), [n for n in self.names if n in floats])
        labels = [n for n in self.names if n in labels and n not in stream.floats]
        streams: list[_PacedFile] = []

        def stop() -> None:  # a caller that stops early: pyarrow's reads end at once
            for paced in streams:
                paced.stop()

        def parse(chunk: Chunk) -> Chunk:
            # pyarrow converts a block's columns one after the other in the thread
            # that reads it (2M rows of 5 features: 0.58 s read as float64, 0.32 s
            # as text): the casts and the dictionaries are made here instead.
            if any(isinstance(c, list) for c in chunk.columns.values()):
                return chunk  # the csv module's text (a fallback): Chunk decides
            floats = stream.floats  # a tuple, replaced (not changed) by parse()
            for name in floats:
                if name not in labels:
                    chunk.columns[name] = _finite_floats(chunk.columns[name])
            _float_matrix(chunk, floats, order)
            return _encode_labels(chunk, labels)

        stream.chunks = _prefetched(self._arrow_chunks(start, streams), on_stop=stop, prepare=parse)
        return stream

    def _parquet_chunks(self, skip: int, labels: Sequence[str] = ()) -> Iterator[Chunk]:
        """pyarrow's Parquet batches; text ``labels`` are read as dictionary arrays.

        Parquet stores such columns dictionary-encoded: reading them as
        dictionaries skips decoding every cell and hashing it again for
        :class:`LabelCoder` (2M rows: 0.05 s of 0.28 CPU-seconds of a fit).
        Their values are those of the column; a writer restores the column's
        type (:meth:`TableWriter.write`).
        """
        text = [n for n in labels if _is_text(self.types[n])]
        start = 0
        reader = self._parquet
        try:
            if text:
                reader = _pyarrow_parquet().ParquetFile(
                    self.path, pre_buffer=False, buffer_size=READ_BUFFER, read_dictionary=text
                )
                if reader.schema_arrow.names != self.names:
                    raise InputError(f"{self.path} changed while it was being read")
            # One thread: pyarrow's column threads cost 2.4x the CPU time for 1.5x less
            # wall time on a batch of 32k rows (2M rows: 0.14 CPU-s against 0.06), and
            # the other core has the parse thread and the caller's work.
            batches = reader.iter_batches(batch_size=max(1, CHUNK_ROWS), use_threads=False)
            for batch in batches:
                if start + batch.num_rows <= skip:
                    start += batch.num_rows
                    continue
                if start < skip:
                    batch, start = batch.slice(skip - start), skip
                if batch.num_rows:
                    cols = {n: batch.column(j) for j, n in enumerate(self.names)}
                    yield Chunk(self, start, batch.num_rows, cols)
                    start += batch.num_rows
        except InputError:
            raise
        except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
            raise InputError(f"cannot read {self.path} as Parquet: {exc}") from None
        finally:
            if reader is not self._parquet:
                reader.close()

    def _stdlib_chunks(self, skip: int) -> Iterator[Chunk]:
        """Standard-library reader; the first ``skip`` data rows are checked but not yielded."""
        width = len(self.names)
        rows: list[list[str]] = []
        lines: list[int] = []
        k = 0
        start = skip
        try:
            with self._open_text() as fh:
                reader = csv.reader(fh)
                header = True
                for row in reader:
                    if not row:  # blank lines are not rows
                        continue
                    if header:
                        header = False
                        continue
                    if len(row) != width:
                        raise InputError(
                            f"{self.path} row {k + 1} (line {reader.line_num}) has {len(row)} "
                            f"fields, the header has {width}"
                        )
                    k += 1
                    if k <= skip:
                        continue
                    rows.append(row)
                    lines.append(reader.line_num)
                    if len(rows) >= max(1, CHUNK_ROWS):
                        yield self._list_chunk(start, rows, lines)
                        start += len(rows)
                        rows, lines = [], []
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read {self.path} as CSV: {exc}") from None
        if rows:
            yield self._list_chunk(start, rows, lines)

    def _list_chunk(self, start: int, rows: list[list[str]], lines: list[int]) -> Chunk:
        cols = {name: [r[j] for r in rows] for j, name in enumerate(self.names)}
        return Chunk(self, start, len(rows), cols, lines)

    def _arrow_chunks(self, skip: int, streams: list[_PacedFile]) -> Iterator[Chunk]:
        """pyarrow's streaming reader, every column as text.

        The features are not parsed here: pyarrow's streaming reader parses a
        block only when asked for its batch, and converts its columns one
        after the other, where parsing floats costs as much as splitting the
        text into cells (2M rows of 5 features: 0.58 s read as float64, 0.32 s
        as text). :meth:`chunks` casts them in another thread, while this one
        asks pyarrow for the next block.

        A row longer than a block makes pyarrow fail: the read restarts with
        larger blocks, skipping the rows already yielded. Any other
        parse failure (a ragged row, bad UTF-8, a quirk pyarrow refuses) hands
        over to the standard-library reader at the same row, which gives
        today's exact result or message.
        """
        pa = _pyarrow()
        import pyarrow.csv as pcsv

        done = skip
        block = max(1, CHUNK_BYTES)
        while True:
            stream = _PacedFile(self.path, block)
            streams[:] = [stream]
            types = {n: pa.string() for n in self.names}
            reader = None
            try:
                reader = pcsv.open_csv(
                    stream,
                    read_options=pcsv.ReadOptions(block_size=block),
                    parse_options=pcsv.ParseOptions(newlines_in_values=True),
                    convert_options=pcsv.ConvertOptions(
                        column_types=types, strings_can_be_null=False
                    ),
                )
                if reader.schema.names != self.names:
                    break  # pyarrow reads the header differently: let csv decide
                seen = 0
                for batch in reader:
                    stream.taken()
                    n = batch.num_rows
                    if seen + n <= done:  # already yielded before a restart
                        seen += n
                        continue
                    if seen < done:
                        batch = batch.slice(done - seen)
                    seen += n
                    cols = {name: batch.column(j) for j, name in enumerate(self.names)}
                    # stream.cr: a carriage return in the bytes read so far, which
                    # hold this batch's rows (no cell scan for the usual LF file)
                    if stream.cr and any(_has_substring(c, "\r") for c in cols.values()):
                        # pyarrow 26 can lose the "\n" of a quoted "\r\n" that a block
                        # boundary splits: cells with a CR are read by csv instead.
                        yield from self._stdlib_chunks(done)
                        return
                    yield Chunk(self, done, batch.num_rows, cols)
                    done += batch.num_rows
                return
            except pa.ArrowInvalid as exc:
                if "straddl" in str(exc) and block < (1 << 31) // 4:
                    block *= 4
                    continue
                break
            finally:
                stream.stop()  # every further read is the end of the file
                _drain(reader)
                stream.close()
        yield from self._stdlib_chunks(done)

    def line_of(self, row: int) -> int | None:
        """File line (1-based) on which data row ``row`` (0-based) ends; for messages."""
        if self.kind != "csv":
            return None
        k = -1
        try:
            with self._open_text() as fh:
                reader = csv.reader(fh)
                for r in reader:
                    if r:
                        k += 1
                        if k == row + 1:  # the header is row -1
                            return reader.line_num
        except (OSError, UnicodeDecodeError, csv.Error):
            return None
        return None


class _PacedFile(io.RawIOBase):
    """A file that pyarrow's streaming CSV reader may read only a few blocks ahead.

    pyarrow's reader reads ahead as fast as the disk allows, so a consumer
    slower than the disk (every ``fit`` and ``steer``) would find the whole
    file in memory. Here a read waits while :data:`READ_AHEAD` blocks beyond
    the batches taken (:meth:`taken`) are in memory; a batch needs its own
    block and at most the next one, so the reader can always make the next
    batch (no test run ever waited out the timeout). Should pyarrow need
    more, a wait of :data:`STALL_SECONDS` lets a read through and doubles
    the blocks allowed ahead from then on: slower and more memory, never a
    deadlock, and a need of n more blocks costs log2(n) waits, not n.
    Also notes whether any byte read was a carriage return (``cr``).

    Plain reads, not a memory map: the pages of a mapped file count in the
    process's resident memory, which would grow with the file.
    """

    def __init__(self, path: str | os.PathLike[str], block: int) -> None:
        super().__init__()
        import threading

        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self._cond = threading.Condition()
        self._block, self._taken, self._read = block, 0, 0
        self._ahead = READ_AHEAD  # blocks read beyond those taken (doubled by each stall)
        self.stalls = 0
        self._stopped = False
        self._in_flight, self._last_call, self._at_end = 0, 0.0, False
        self._early = False  # stopped before pyarrow read to the end
        self.cr = False
        _PACED.add(self)

    def readable(self) -> bool:
        return True

    def taken(self) -> None:
        """One more batch has been handed to the caller."""
        with self._cond:
            self._taken += 1
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            self._in_flight += 1
        try:
            return self._paced_read(size)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._last_call = time.monotonic()
                self._cond.notify_all()

    def _paced_read(self, size: int) -> bytes:
        with self._cond:

            def free() -> bool:
                return self._stopped or self._read < (self._taken + self._ahead) * self._block

            if not free() and not self._cond.wait_for(free, timeout=STALL_SECONDS):
                # pyarrow needs more blocks than allowed to make its next batch: let
                # twice as many through from now on, so that such a need costs a few
                # waits, not one per block (once seen: 15 min for a 2M-row fit)
                self._ahead *= 2
                self.stalls += 1
            if self._stopped:  # closed: the end of the file, so pyarrow stops reading
                return b""
        data = self._fh.read(size)
        self._read += len(data)
        self._at_end = self._at_end or (size != 0 and not data)
        if not self.cr and b"\r" in data:
            self.cr = True
        return data

    def quiesce(self, quiet: float = 0.2, timeout: float = 2.0) -> None:
        """Stop, then wait until pyarrow's I/O threads have made no read for ``quiet`` s.

        pyarrow's read-ahead tasks call :meth:`read` from its own threads; one
        that arrives while the interpreter shuts down cannot take the GIL and
        aborts the process ("terminate called without an active exception").
        After :meth:`stop` every read returns at once and pyarrow, at the end of
        the file, issues no more, so a short quiet spell is reached quickly.
        """
        self.stop()
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._early and self._in_flight == 0:
                return  # pyarrow read to the end by itself: it makes no more reads
            while time.monotonic() < deadline:
                idle = time.monotonic() - self._last_call
                if self._in_flight == 0 and idle >= quiet:
                    return
                self._cond.wait(timeout=max(quiet - idle, 0.005))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def stop(self) -> None:
        """From now on every read returns the end of the file (a waiting one at once)."""
        global _LAST_EARLY_STOP
        with self._cond:
            if not self._stopped and not self._at_end:
                self._early = True
                _LAST_EARLY_STOP = time.monotonic()
            self._stopped = True
            self._cond.notify_all()

    def close(self) -> None:
        self.stop()
        self._fh.close()
        super().close()


def _drain(reader: Any) -> None:
    """Run a stopped streaming reader to its end, so no read-ahead task outlives it.

    Destroying pyarrow's reader while its I/O tasks still run lets them call
    into Python later, possibly during interpreter shutdown, which aborts the
    process; with the stream stopped, the remaining batches come at once.
    """
    if reader is None:
        return
    try:
        while True:
            reader.read_next_batch()
    except Exception:  # StopIteration at the end, or any error of the stopped stream
        return


_PACED: weakref.WeakSet[_PacedFile] = weakref.WeakSet()


# Seconds an exit waits after a reader was stopped before the end of its file.
EXIT_GRACE = 0.5
_LAST_EARLY_STOP: float | None = None


@atexit.register
def _quiesce_paced_files() -> None:
    """At exit, let pyarrow's work on a stopped reader end first.

    A reader stopped early (a caller that gave up, an error in a chunk) can
    leave pyarrow tasks running for a moment after it is drained and closed;
    one still running when the interpreter shuts down aborts the process
    ("terminate called without an active exception": seen in about 1 of 20
    such exits on a loaded machine, never with a 0.5 s grace). So the reads
    into any paced file must go quiet (``quiesce``), and the exit waits until
    :data:`EXIT_GRACE` seconds have passed since the last early stop. A
    process whose readers all reached the end of their files waits for
    nothing. This is a grace period, not a guarantee: pyarrow offers no way
    to wait for its thread pools to go idle.
    """
    for paced in list(_PACED):
        paced.quiesce()
    if _LAST_EARLY_STOP is not None:
        time.sleep(max(0.0, _LAST_EARLY_STOP + EXIT_GRACE - time.monotonic()))


def _finite_floats(col: Any) -> Any:
    """A CSV text column as float64 if pyarrow parses every cell as a finite number, else as is.

    pyarrow accepts a subset of what ``float()`` accepts (not `` 1`` or
    ``1_000``) and both round correctly, so where the cast succeeds its values
    are ``float()``'s; any other column stays text and :meth:`Chunk.floats`
    decides, with the words of the standard-library path.
    """
    pa, pc = _pyarrow(), _pyarrow_compute()
    try:
        values = pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        return col
    return values if bool(np.isfinite(_numpy(values)).all()) else col


def _float_matrix(chunk: Chunk, names: Sequence[str], order: str = "C") -> None:
    """The features ``names`` of a pyarrow chunk as one float64 matrix, in the parse thread.

    Only when every column is numeric (Parquet's types, or a CSV column that
    :func:`_finite_floats` parsed), has no nulls and every value is finite:
    then the values are those :meth:`Chunk.floats` would give (float64 of
    each value) and the caller's thread is spared the conversion. Anything
    else is left to :meth:`Chunk.floats`, which names the bad cell.
    """
    if not names:
        return
    pa = _pyarrow()
    cols = []
    for name in names:
        col = chunk.columns[name]
        if isinstance(col, list) or col.null_count:
            return
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return
        cols.append(col)
    X = np.empty((chunk.n_rows, len(cols)), order=order)
    for j, col in enumerate(cols):
        X[:, j] = _numpy(col)
    if all_finite(X):
        chunk._matrix = (tuple(names), X)


def _label_type(t: Any) -> bool:
    """Whether a pyarrow type holds labels a model can name (text, numbers, booleans)."""
    pa = _pyarrow()
    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(
        _is_text(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    )


def _is_text(t: Any) -> bool:
    pa = _pyarrow()
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _as_type(col: Any, t: Any) -> Any:
    """A pyarrow array as type ``t`` (a dictionary array decoded), unchanged if it has it."""
    return col if col.type == t else col.cast(t)


def _has_substring(col: Any, text: str) -> bool:
    pc = _pyarrow_compute()
    return bool(pc.any(pc.match_substring(col, text)).as_py())


def open_table(path: str | os.PathLike[str], engine: str | None = None) -> TableSource:
    """A :class:`TableSource` for a CSV or Parquet file (header read and checked)."""
    return TableSource(path, engine)


# ------------------------------------------------------------------- writing


def _csv_specials() -> str:
    """Characters that make the standard library's ``csv.writer`` quote a field."""
    out = []
    for ch in ',"\n\r\t ;':
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([f"a{ch}b", "x"])
        if buf.getvalue().startswith('"'):
            out.append(ch)
    return "".join(out)


_CSV_SPECIALS = _csv_specials()


def format_floats(values: NDArray[np.float64]) -> Any:
    """``repr(float(v))`` of every value, as a pyarrow string array.

    pyarrow's float-to-text cast writes the same shortest round-trip digits as
    Python's ``repr`` (both pick the shortest digit string that reads back to
    the same float, the closest one on a tie) but formats them differently:
    ``1`` for ``1.0``, ``1.5e-7`` for ``1.5e-07``, and it switches to
    exponent notation at other magnitudes. For 0 and 1e-4 <= |v| < 1e9 neither
    writes an exponent, and pyarrow's text lacks a ``.`` exactly when ``v`` is
    a whole number: those get ``.0``. Between 1e9 and 1e16 Python writes no
    exponent and pyarrow sometimes does: the text is checked. Every other
    value (rare in data) goes through ``repr``.
    """
    pa, pc = _pyarrow(), _pyarrow_compute()
    x = np.ascontiguousarray(values, dtype=np.float64)
    text = pc.cast(_arrow(x), pa.string())
    a = np.abs(x)
    plain = (a == 0) | ((a >= 1e-4) & (a < 1e9))
    whole = plain & (x == np.floor(x))
    slow = ~plain
    big = (a >= 1e9) & (a < 1e16)  # Python's fixed notation, pyarrow's maybe not
    if big.any():
        has_e = _numpy(pc.match_substring(text, "e"))
        no_dot = ~_numpy(pc.match_substring(text, "."))
        whole |= big & ~has_e & no_dot
        slow &= ~(big & ~has_e)
    fix = np.flatnonzero(whole | slow)
    if fix.size == 0:
        return text
    if fix.size > x.size // 16:  # many whole numbers: one vectorised pass for them
        dotted = pc.binary_join_element_wise(text, _scalar(".0"), _scalar(""))
        text = pc.if_else(_arrow(whole), dotted, text)
        fix = np.flatnonzero(slow)
        if fix.size == 0:
            return text.cast(pa.string())
    # the few values to fix, as Python writes them, in row order
    extra = _string_array([repr(v) for v in x[fix].tolist()])
    mask = np.zeros(x.size, dtype=np.bool_)
    mask[fix] = True
    return pc.replace_with_mask(text, _arrow(mask), extra).cast(pa.string())


def _arrow(x: NDArray[Any]) -> Any:
    """A pyarrow array viewing a 1-D numeric or bool numpy array.

    ``pyarrow.array`` would first import pandas to ask whether ``x`` is a
    pandas object: 0.3 s of a short command.
    """
    pa = _pyarrow()
    if x.dtype == np.bool_:
        bits = np.packbits(x, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), x.size, [None, pa.py_buffer(bits)])
    kind = pa.from_numpy_dtype(x.dtype)  # a numeric type
    x = np.ascontiguousarray(x)
    return pa.Array.from_buffers(kind, x.size, [None, pa.py_buffer(x)])


def _string_array(texts: Sequence[str]) -> Any:
    """A pyarrow string array of Python strings, built from its buffers.

    ``pyarrow.array`` of a list would first import pandas (0.3 s of a short
    command) to ask whether the list is a pandas object.
    """
    pa = _pyarrow()
    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] < 2**31:
        kind, offsets = pa.string(), offsets.astype(np.int32)
    else:
        kind = pa.large_string()
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(kind, len(encoded), [None, pa.py_buffer(offsets), data])


@functools.cache
def _scalar(text: str) -> Any:
    """A pyarrow string scalar (for compute functions) without importing pandas.

    A Python ``str`` passed to a compute function, or ``pyarrow.scalar``,
    first imports pandas to ask whether it is a pandas object: 0.3 s of a
    short command.
    """
    return _string_array([text])[0]


def _numpy(arr: Any) -> NDArray[Any]:
    """A pyarrow array without nulls as numpy (bool, int and float types), without pandas.

    ``Array.to_numpy`` imports pandas on its first call (0.3 s); the buffers
    of a primitive array are read directly instead, and text (also as a
    dictionary array) becomes the object array of Python strings (``None``
    for null) that ``to_numpy`` gives.
    """
    pa = _pyarrow()
    t = arr.type
    if _is_text(t.value_type if pa.types.is_dictionary(t) else t):
        out = np.empty(len(arr), dtype=object)
        out[:] = arr.to_pylist()
        return out
    if arr.null_count == 0 and pa.types.is_boolean(t):
        bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[arr.offset : arr.offset + len(arr)].view(
            np.bool_
        )
    if arr.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        dtype = np.dtype(t.to_pandas_dtype())
        return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset : arr.offset + len(arr)]
    return arr.to_numpy(zero_copy_only=False)


def _decoded(col: Any) -> Any:
    """A CSV text column read as a dictionary array (group, class) as plain text."""
    return col.dictionary_decode() if _pyarrow().types.is_dictionary(col.type) else col


def _text_bytes(col: Any) -> memoryview:
    """The UTF-8 bytes of a pyarrow string array's cells, concatenated (no copy)."""
    pa = _pyarrow()
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(col.type) else np.int32
    offsets = np.frombuffer(col.buffers()[1], dtype=width)
    lo, hi = offsets[col.offset], offsets[col.offset + len(col)]
    data = col.buffers()[2]
    return memoryview(data)[lo:hi] if data is not None else memoryview(b"")


def _quote(col: Any) -> Any:
    """CSV text of string cells as ``csv.writer`` writes them (quoted when needed)."""
    pa, pc = _pyarrow(), _pyarrow_compute()
    text = bytes(_text_bytes(col))  # every cell's bytes, one after the other
    if not any(c.encode() in text for c in _CSV_SPECIALS):  # the usual case: one scan
        return col
    pattern = "[" + "".join("\\" + c if c in '\\"]^-' else c for c in _CSV_SPECIALS) + "]"
    needs = pc.match_substring_regex(col, pattern)
    if not pc.any(needs).as_py():
        return col
    quoted = pc.binary_join_element_wise(
        _scalar('"'), pc.replace_substring(col, '"', '""'), _scalar('"'), _scalar("")
    )
    return pc.if_else(needs, quoted, col).cast(pa.string())


class CellValues(NamedTuple):
    """A float column given as ``values[index]``: few distinct values, one per row.

    ``steer``'s weight column takes one value per (group, class) cell; written
    as CSV, each distinct value is formatted once instead of once per row.
    """

    values: NDArray[np.float64]
    index: NDArray[np.intp]


class TableWriter:
    """Write a table chunk by chunk to an open binary file, as CSV or Parquet.

    Parameters
    ----------
    fh : binary file
        Usually the temporary file of :func:`atomic_output`.
    kind : {"csv", "parquet"}
        Output format.
    names : list of str
        Output columns: the source columns, then any appended ones.
    source : TableSource
        Where the carried (not replaced) columns come from.
    """

    def __init__(self, fh: BinaryIO, kind: str, names: list[str], source: TableSource) -> None:
        self.fh, self.kind, self.names, self.source = fh, kind, names, source
        self._parquet: Any = None
        self._batches: list[Any] = []  # Parquet rows not yet written
        self._fast = have_pyarrow() and not (kind == "csv" and source.engine == "stdlib")
        self._pending: Any = None
        self._pool: Any = None
        if self._fast:
            from concurrent.futures import ThreadPoolExecutor

            # Formatting and writing a chunk (pyarrow kernels, file writes: the
            # GIL is released) overlap the next chunk's parse and steer.
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fairsteer-writer")
        self._formatters: Any = None
        if self._fast and kind == "csv" and WRITE_THREADS > 1:
            # Float formatting is most of the time of a CSV write: a chunk's rows
            # are formatted in WRITE_THREADS parts at once.
            self._formatters = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="fairsteer-fmt")
        if kind == "csv":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(names)
            fh.write(buf.getvalue().encode())

    def write(self, chunk: Chunk, replaced: dict[str, Any]) -> None:
        """Write the rows of ``chunk`` with the ``replaced`` columns swapped in.

        ``replaced[name]`` is a float64 array of the chunk's rows or a
        :class:`CellValues`.

        With pyarrow the chunk is formatted and written in a background thread
        while the caller prepares the next one (one chunk in flight, order
        kept); an error there is raised by the next ``write`` or ``close``.
        """
        if self._pool is None:
            self._write_now(chunk, replaced)
            return
        self._wait()
        self._pending = self._pool.submit(self._write_now, chunk, replaced)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_now(self, chunk: Chunk, replaced: dict[str, NDArray[np.float64]]) -> None:
        if self.kind == "parquet":
            self._write_parquet(chunk, replaced)
        elif self._fast:
            self._write_csv_arrow(chunk, replaced)
        else:
            self._write_csv_stdlib(chunk, replaced)

    def _write_csv_stdlib(self, chunk: Chunk, replaced: dict[str, NDArray[np.float64]]) -> None:
        cols = []
        for name in self.names:
            if name in replaced:
                value = replaced[name]
                if isinstance(value, CellValues):
                    texts = [repr(float(v)) for v in value.values]
                    cols.append([texts[k] for k in value.index])
                else:
                    cols.append([repr(float(v)) for v in value])
            elif isinstance(chunk.columns[name], list):
                cols.append(chunk.columns[name])
            else:
                cols.append(_python_text(chunk, name))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(zip(*cols))
        self.fh.write(buf.getvalue().encode())

    def _write_csv_arrow(self, chunk: Chunk, replaced: dict[str, Any]) -> None:
        # Python-level text (stdlib or Parquet cells) is made once, not once per part.
        text = {
            name: _python_text(chunk, name)
            for name in self.names
            if name not in replaced
            and (isinstance(chunk.columns[name], list) or self.source.kind != "csv")
        }
        n = chunk.n_rows
        parts = max(1, min(WRITE_THREADS, n // MIN_PART_ROWS))
        bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
        if parts == 1:
            rows = [self._csv_rows(chunk, replaced, text, 0, n)]
        else:  # the row ranges formatted side by side (pyarrow releases the GIL)
            rows = list(
                self._formatters.map(lambda b: self._csv_rows(chunk, replaced, text, *b), bounds)
            )
        for part in rows:
            self.fh.write(_text_bytes(part))

    def _csv_rows(
        self, chunk: Chunk, replaced: dict[str, Any], text: dict[str, list[str]], lo: int, hi: int
    ) -> Any:
        """CSV lines of rows ``lo:hi`` of the chunk, as one pyarrow string array."""
        pa, pc = _pyarrow(), _pyarrow_compute()
        cols = []
        for name in self.names:
            if name in replaced:
                value = replaced[name]
                if isinstance(value, CellValues):  # each distinct value formatted once
                    index = _arrow(np.asarray(value.index[lo:hi], dtype=np.int64))
                    cols.append(format_floats(value.values).take(index))
                else:
                    cols.append(format_floats(value[lo:hi]))
            elif name in text:
                cols.append(_quote(_string_array(text[name][lo:hi])))
            else:
                cols.append(_quote(_decoded(chunk.columns[name].slice(lo, hi - lo))))
        cols[-1] = pc.binary_join_element_wise(cols[-1], _scalar("\n"), _scalar(""))
        rows = pc.binary_join_element_wise(*cols, _scalar(",")) if len(cols) > 1 else cols[0]
        return rows.cast(pa.string())

    def _write_parquet(self, chunk: Chunk, replaced: dict[str, NDArray[np.float64]]) -> None:
        pa, pq = _pyarrow(), _pyarrow_parquet()
        arrays = []
        for name in self.names:
            if name in replaced:
                value = replaced[name]
                if isinstance(value, CellValues):
                    value = np.asarray(value.values, dtype=np.float64)[value.index]
                arrays.append(_arrow(np.asarray(value, dtype=np.float64)))
            elif isinstance(chunk.columns[name], list):
                arrays.append(_string_array(chunk.columns[name]))
            elif self.source.kind == "csv":  # CSV cells are text in Parquet too
                arrays.append(_decoded(chunk.columns[name]))
            else:  # a label read as a dictionary array gets its column's type back
                arrays.append(_as_type(chunk.columns[name], self.source.types[name]))
        if self._parquet is None:
            schema = pa.schema([pa.field(n, a.type) for n, a in zip(self.names, arrays)])
            # Dictionary encoding pays for labels and carried columns, not for steered
            # (continuous) features: trying it on them made the write 4x slower.
            continuous = {n for n, v in replaced.items() if not isinstance(v, CellValues)}
            dictionary = [n for n in self.names if n not in continuous]
            self._parquet = pq.ParquetWriter(self.fh, schema, use_dictionary=dictionary)
        self._batches.append(pa.record_batch(arrays, schema=self._parquet.schema))
        if sum(b.num_rows for b in self._batches) >= ROW_GROUP_ROWS:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        """Write the buffered batches as one row group (chunks are smaller than row groups)."""
        if self._batches:
            pa = _pyarrow()
            table = pa.Table.from_batches(self._batches)
            self._batches = []
            self._parquet.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        """Finish the file (the Parquet footer); the caller closes ``fh``."""
        try:
            self._wait()
        finally:
            for pool in (self._pool, self._formatters):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._pool = self._formatters = None
        if self.kind == "parquet":
            if self._parquet is None:
                raise InputError("no rows to write")
            self._flush_parquet()
            self._parquet.close()

    def __del__(self) -> None:  # a writer abandoned after an error: stop its threads
        for name in ("_pool", "_formatters"):
            pool = getattr(self, name, None)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _prefetched(
    chunks: Iterator[Chunk],
    depth: int = 1,
    on_stop: Callable[[], None] | None = None,
    prepare: Callable[[Chunk], Chunk] | None = None,
) -> Iterator[Chunk]:
    """``chunks``, read ahead by ``depth`` chunks in a background thread.

    pyarrow's readers release the GIL, so reading and parsing the next chunk
    overlaps the caller's work on this one; memory grows by ``depth`` chunks.
    ``prepare`` (if given) runs on every chunk in a third thread, in order,
    while the reader thread reads the next one (``depth`` chunks queued, one
    being prepared). An error of the reader or of ``prepare`` is raised
    here, at the chunk where it happened; a caller that stops early stops the
    reader (``on_stop`` is called first, to end a read the reader thread may
    be waiting for).
    """
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = ThreadPoolExecutor(1, thread_name_prefix="fairsteer-parse") if prepare else None

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                item = worker.submit(prepare, chunk) if worker and prepare else chunk
                if not put(("chunk", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, name="fairsteer-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item.result() if worker else item
    finally:
        stop.set()
        if on_stop is not None:
            on_stop()
        thread.join()
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _python_text(chunk: Chunk, name: str) -> list[str]:
    """CSV text of a typed (Parquet) column: ``str`` of every value, empty for null."""
    col = chunk.columns[name]
    if isinstance(col, list):
        return col
    return ["" if v is None else str(v) for v in col.to_pylist()]


def _pyarrow_compute() -> Any:
    _pyarrow()
    import pyarrow.compute

    return pyarrow.compute
