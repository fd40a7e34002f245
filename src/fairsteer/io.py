"""Reading and writing tables for the command line (CSV and Parquet).

CSV goes through the standard library, so the core needs no pandas, and keeps
every cell's original text: columns that are not steered are written back
byte-for-byte. Parquet needs pyarrow (imported lazily) and keeps the original
Arrow columns.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.model import write_atomic

__all__ = ["Table", "read_table", "write_table"]

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
            try:
                key: Any = float(text)
            except ValueError:
                key = ("text", text)
            out[k] = spelling.setdefault(key, text)
        return out

    def _bad_cell_message(self, name: str, raw: NDArray[Any]) -> str:
        kinds = [_cell_kind(v) for v in raw]
        bad = [k for k, kind in enumerate(kinds) if kind != "finite"]
        k = bad[0]
        what = {
            "missing": "is empty",
            "nonfinite": f"is NaN or infinite ({_show(raw[k])})",
            "text": f"holds the non-numeric value {raw[k]!r}",
        }[kinds[k]]
        more = f" ({len(bad)} bad cells in all)" if len(bad) > 1 else ""
        return (
            f"numeric column {name!r} {self.where(k)} {what}{more}; fix or drop those rows, "
            "or leave the column out of the features"
        )

    def with_columns(self, updates: dict[str, NDArray[np.float64]]) -> Table:
        """A table with numeric columns replaced (same position) or appended."""
        names = list(self.names) + [n for n in updates if n not in self.columns]
        replaced = {**self.replaced, **{k: np.asarray(v, np.float64) for k, v in updates.items()}}
        for key, v in replaced.items():
            if v.shape != (self.n_rows,):
                raise InputError(f"column {key!r} must have {self.n_rows} values, got {v.shape}")
        return Table(names, self.columns, self.n_rows, self.kind, replaced, self.lines)


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


def _text_column(table: Table, name: str) -> list[str]:
    if name in table.replaced:
        return [repr(float(v)) for v in table.replaced[name]]
    if table.kind == "csv":
        return table.columns[name]
    return ["" if v is None else str(v) for v in table.columns[name].to_pylist()]


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install pyarrow (or use CSV)") from None
    return pyarrow


def _pyarrow_parquet() -> Any:
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet
