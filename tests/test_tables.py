"""Streamed tables (issue 15): chunked fit and steer equal the one-shot path of before.

The one-shot reference below is the code path ``fit`` and ``steer`` ran before
streaming (``read_table`` of the whole file, ``fit_model``, ``write_table``),
so "as today" is checked on the same files, not transcribed by hand.
"""

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fairsteer import io as fio
from fairsteer.cli import main
from fairsteer.fit import fit_model
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.solve import Solution, solve

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_python(script, *argv, env=None, timeout=None):
    """``python -c script argv...`` in a fresh process with ``src`` on the path (and ``env``)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC, **(env or {})},
        timeout=timeout,
        check=False,
    )


ENGINES = ["pyarrow", "stdlib"]


def reference_steer(data, out, covariance="per-class", artifacts=None):
    """``steer`` as it ran before streaming: whole table in memory, one write.

    ``artifacts``: the ``OUT`` of a ``steer --artifacts`` run whose model and
    solution to use instead of fitting and solving again. A chunked fit equals
    the one-shot fit to round-off only, and the iterative solvers turn that
    into differences up to their stopping tolerance; with the same model and
    solution the steered rows are exactly today's.
    """
    table = fio.read_table(data)
    features = table.numeric_names(exclude=("sex", "label"))
    X = table.numeric(features)
    y = table.labels("label", "class")
    g = table.labels("sex", "group")
    if artifacts is None:
        model = fit_model(X, y, g, covariance=covariance, features=features)
        sol = solve(model, "affirmative")
    else:
        model = GaussianModel.load(f"{artifacts}.model.json")
        sol = Solution.load(f"{artifacts}.solution.json")
    maps = SteeringMaps.from_solution(model, sol)
    updates = {name: col for name, col in zip(features, maps.steer(X, y, g).T)}
    updates["weight"] = maps.weights(y, g)
    fio.write_table(table.with_columns(updates), out)
    return model


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def chunks(monkeypatch):
    """Set the engine and the chunk size: ``chunks(engine, tiny)``."""

    def setup(engine, tiny):
        monkeypatch.setattr(fio, "CSV_ENGINE", engine)
        if tiny:
            monkeypatch.setattr(fio, "CHUNK_BYTES", 150)  # a few rows per pyarrow block
            monkeypatch.setattr(fio, "CHUNK_ROWS", 3)

    return setup


def tricky_csv(path, n=300, seed=0, crlf=False, bom=False):
    """Quoted cells with commas, quotes and newlines, blank lines, spaced numbers."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + y[:, None] * np.where(g == "m", 2.0, 1.0)[:, None]
    X[::17, 0] *= 1e-6  # exponent notation in the output
    notes = ["plain", "with, comma", 'a "quote"', "two\nlines", "cr\r\nlf", "", "é ü ✓"]
    nl = "\r\n" if crlf else "\n"
    lines = ["x1,x2,sex,label,note"]
    for k in range(n):
        note = notes[k % len(notes)]
        quoted = '"' + note.replace('"', '""') + '"' if k % 2 or set(note) & set(',"\r\n') else note
        x1 = f" {float(X[k, 0])!r}" if k % 11 == 0 else repr(float(X[k, 0]))  # float() takes " 1.5"
        lines.append(f"{x1},{float(X[k, 1])!r},{g[k]},{y[k]},{quoted}")
        if k % 50 == 7:
            lines.append("")  # blank lines are not rows
    text = nl.join(lines) + nl
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return X, y, g


def assert_same_rows(out, ref, floats=(0, 1, 5)):
    """Same header, rows and carried cells; steered numbers equal to a few ulps.

    maps.steer computes each row's (x - mu) A^T with a matrix product whose
    kernel (and so its rounding) can depend on how many rows a cell has in
    one call: chunks change the last bits of a steered value, never more. The
    values are O(1) here, so 1e-13 absolute or relative is ~500 ulps of slack.
    """
    a, b = read_rows(out), read_rows(ref)
    assert a[0] == b[0] and len(a) == len(b)
    keep = [j for j in range(len(a[0])) if j not in floats]
    assert [[r[j] for j in keep] for r in a] == [[r[j] for j in keep] for r in b]
    x = np.array([[float(r[j]) for j in floats] for r in a[1:]])
    y = np.array([[float(r[j]) for j in floats] for r in b[1:]])
    np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13)


def steer(capsys, data, out, *extra):
    return run(capsys, "steer", data, "--group", "sex", "--label", "label", "-o", out, *extra)


def read_rows(path):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [r for r in csv.reader(fh) if r]


def test_format_floats_is_repr():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, 200_000, dtype=np.uint64)
    x = bits.view(np.float64)
    x = np.concatenate(
        [
            x[np.isfinite(x)],
            -x[np.isfinite(x)][:1000],
            rng.normal(size=50_000),
            rng.normal(size=5_000) * 1e-5,
            np.round(rng.normal(size=5_000) * 1e6),
            rng.normal(size=5_000) * 1e15,
            10.0 ** np.arange(-300, 300),
            # 1e9 <= |v| < 1e16: pyarrow's exponent notation starts in there
            10.0 ** rng.uniform(9, 16, 20_000),
            np.round(10.0 ** rng.uniform(9, 16, 20_000)),
            np.round(rng.normal(size=5_000) * 100) / 4,  # whole numbers and short fractions
            [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 5e-324],
        ]
    )
    assert fio.format_floats(x).to_pylist() == [repr(float(v)) for v in x]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("bom", [False, True])
def test_steer_output_is_todays_byte_for_byte(tmp_path, capsys, chunks, engine, crlf, bom):
    chunks(engine, tiny=False)  # one chunk: the same arithmetic as the one-shot path
    data = tmp_path / "d.csv"
    tricky_csv(data, crlf=crlf, bom=bom)
    reference_steer(data, tmp_path / "ref.csv")
    code, _, err = steer(capsys, data, tmp_path / "o.csv")
    assert code == 0, err
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("crlf", [False, True])
def test_chunk_boundaries_anywhere_keep_the_output(tmp_path, capsys, chunks, engine, crlf):
    chunks(engine, tiny=True)  # boundaries every few rows, inside and between quoted cells
    data = tmp_path / "d.csv"
    tricky_csv(data, crlf=crlf, bom=True)
    code, _, err = steer(capsys, data, tmp_path / "o.csv", "--artifacts")
    assert code == 0, err
    reference_steer(data, tmp_path / "ref.csv", artifacts=tmp_path / "o")
    assert_same_rows(tmp_path / "o.csv", tmp_path / "ref.csv")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_chunked_fit_equals_one_shot_fit(tmp_path, capsys, chunks, engine, covariance):
    chunks(engine, tiny=True)
    data = tmp_path / "d.csv"
    X, y, g = tricky_csv(data, n=500)
    code, _, err = run(
        capsys, "fit", data, "--group", "sex", "--label", "label", "--covariance", covariance,
        "-o", tmp_path / "m.json",
    )  # fmt: skip
    assert code == 0, err
    model = GaussianModel.load(tmp_path / "m.json")
    direct = fit_model(X, y.astype(str), g, covariance=covariance, features=["x1", "x2"])
    assert model.groups == direct.groups and model.classes == direct.classes
    # Chan's merge is exact up to round-off: ~1e-15 relative for 500 rows.
    for a, b in [(model.priors, direct.priors), (model.means, direct.means)]:
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(model.covariances, direct.covariances, rtol=1e-12)


def write_parquet(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + y[:, None] * np.where(g == "m", 2.0, 1.0)[:, None]
    city = pa.array(np.where(y == 1, "Paris", "Rome")).dictionary_encode()
    table = pa.table(
        {"x1": X[:, 0], "x2": X[:, 1].astype(np.float32), "sex": g, "label": y, "city": city}
    )
    pq.write_table(table, path)


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_parquet_types_kept(tmp_path, capsys, chunks, tiny, suffix):
    chunks("pyarrow", tiny)
    data = tmp_path / "d.parquet"
    write_parquet(data)
    out, ref = tmp_path / f"o.{suffix}", tmp_path / f"ref.{suffix}"
    code, _, err = steer(capsys, data, out, "--artifacts")
    assert code == 0, err
    reference_steer(data, ref, artifacts=tmp_path / "o")
    if suffix == "csv":
        assert_same_rows(out, ref)
        if not tiny:  # one chunk: the very same arithmetic as the one-shot path
            assert out.read_bytes() == ref.read_bytes()
        return
    got, want = pq.read_table(out), pq.read_table(ref)
    assert got.schema == want.schema
    for name in ("sex", "label", "city"):
        assert got.column(name).equals(want.column(name))
    for name in ("x1", "x2", "weight"):  # as in assert_same_rows
        np.testing.assert_allclose(got.column(name), want.column(name), rtol=1e-13, atol=1e-13)
    if not tiny:
        assert got.equals(want)
    assert got.schema.field("city").type == pa.dictionary(pa.int32(), pa.string())
    assert got.schema.field("label").type == pa.int64()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("cell", "column", "words"),
    [("nan", 0, "'x1'"), ("abc", 1, "'x2'"), ("", 2, "'sex'"), ("nan", 3, "'label'")],
)
@pytest.mark.parametrize("command", ["fit", "steer"])
def test_bad_cell_in_the_last_chunk_writes_nothing(
    tmp_path, capsys, chunks, engine, cell, column, words, command
):
    chunks(engine, tiny=True)
    data = tmp_path / "d.csv"
    tricky_csv(data, n=197)
    lines = data.read_bytes().decode().split("\n")
    last = lines[-2].split(",")  # the last row, on one line (note "plain": 196 % 7 == 0)
    last[column] = cell
    lines[-2] = ",".join(last)
    data.write_bytes("\n".join(lines).encode())
    out = tmp_path / ("m.json" if command == "fit" else "o.csv")
    code, stdout, err = run(capsys, command, data, "--group", "sex", "--label", "label", "-o", out)
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert words in err and "row 197 (line " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("feature_row", "label_row"), [(100, 110), (101, 100), (110, 100)])
def test_first_bad_chunk_is_named_although_chunks_run_in_parallel(
    tmp_path, capsys, chunks, engine, feature_row, label_row
):
    """Chunks are coded in order and their moments computed by workers: the error
    is that of the first chunk with a bad cell, and within a chunk a bad feature
    comes before a missing label (as in a one-chunk fit)."""
    chunks(engine, tiny=True)
    rng = np.random.default_rng(1)
    rows = [[repr(float(v)) for v in rng.normal(size=2)] + ["fm"[k % 2], str(k // 2 % 2)]
            for k in range(200)]  # fmt: skip
    rows[feature_row - 1][0], rows[label_row - 1][3] = "nan", ""
    data = tmp_path / "d.csv"
    data.write_text("x1,x2,sex,label\n" + "".join(",".join(r) + "\n" for r in rows))
    code, _, err = run(capsys, "fit", data, "--group", "sex", "--label", "label", "-o",
                       tmp_path / "m.json")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    same_chunk = (feature_row - 1) // 3 == (label_row - 1) // 3
    if feature_row < label_row or same_chunk:
        assert f"'x1' row {feature_row} " in err, err
    else:
        assert f"'label' row {label_row} " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shards", [False, True])
def test_a_value_outside_the_family_names_its_row_in_the_file(
    tmp_path, capsys, chunks, engine, shards
):
    """A value outside a family's domain in a late chunk is named by its row (and line)
    in the file, not by its index in the chunk; in a folder of shards, with its shard."""
    chunks(engine, tiny=True)
    rng = np.random.default_rng(2)
    rows = [[repr(float(v)) for v in rng.uniform(1, 2, size=2)] + ["fm"[k % 2], str(k // 2 % 2)]
            for k in range(200)]  # fmt: skip
    rows[149][1] = "-1.0"
    folder = tmp_path / "data"
    folder.mkdir()
    text = "".join(",".join(r) + "\n" for r in rows)
    data = folder / "d.csv"
    if shards:  # the bad row is row 50 of the second shard
        (folder / "a.csv").write_text("x1,x2,sex,label\n" + "".join(text.splitlines(True)[:99]))
        data = folder / "b.csv"
        text = "".join(text.splitlines(True)[99:])
    data.write_text("x1,x2,sex,label\n" + text)
    target = folder if shards else data
    code, _, err = run(capsys, "fit", target, "--group", "sex", "--label", "label",
                       "--family", "lognormal", "-o", tmp_path / "m.json")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    row = 51 if shards else 150
    assert f"'x2' holds -1.0 at row {row} (line {row + 1})" in err, err
    assert ("b.csv" in err) == shards
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_one_label_per_parsed_value_across_chunks(tmp_path, capsys, chunks, engine):
    chunks(engine, tiny=True)
    data = tmp_path / "d.csv"
    tricky_csv(data, n=200)
    text = data.read_text().split("\n")
    # "1.0" first appears in a later chunk than "1"
    text[150:] = [r.replace(",1,", ",1.0,") for r in text[150:]]
    data.write_text("\n".join(text))
    code, out, err = run(capsys, "fit", data, "--group", "sex", "--label", "label", "-o",
                         tmp_path / "m.json")  # fmt: skip
    assert code == 0 and "2 groups x 2 classes" in out, err
    assert GaussianModel.load(tmp_path / "m.json").classes == ("0", "1")
    code, _, err = steer(capsys, data, tmp_path / "o.csv")
    assert code == 0, err
    col = [r[3] for r in read_rows(tmp_path / "o.csv")]
    assert col == [r[3] for r in read_rows(data)]  # each cell keeps its own spelling


def test_ragged_row_in_a_late_chunk_names_row_and_line(tmp_path, capsys, chunks):
    chunks("pyarrow", tiny=True)
    data = tmp_path / "d.csv"
    tricky_csv(data, n=100)
    lines = data.read_text().split("\n")
    lines[-2] += ",extra"
    data.write_text("\n".join(lines))
    code, _, err = steer(capsys, data, tmp_path / "o.csv")
    assert code == 2 and "row 100 (line" in err and "6 fields, the header has 5" in err
    assert not (tmp_path / "o.csv").exists()


def test_help_says_how_tables_are_read(capsys):
    assert main(["fit", "--help"]) == 0
    assert "pyarrow" in " ".join(capsys.readouterr().out.split())


def test_sigterm_during_a_streamed_write_leaves_nothing(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        from fairsteer.io import atomic_output

        with atomic_output(sys.argv[1]) as fh:
            fh.write(b"x" * 100_000)
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "out.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout.readline() == "writing\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_error_inside_atomic_output_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), fio.atomic_output(path) as fh:
        fh.write(b"new")
        raise RuntimeError
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_csv_quoting_matches_the_standard_library():
    cells = ["a", "", "a,b", 'a"b', "a\nb", "a\rb", " a ", "a\tb", "é"]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[c] * 2 for c in cells])
    quoted = fio._quote(pa.array(cells * 1)).to_pylist()
    assert "".join(f"{q},{q}\n" for q in quoted) == buf.getvalue()


def test_string_array_equals_pyarrow_array():
    texts = ["", "a", "é ü ✓", "x" * 1000, "two\nlines"]
    got = fio._string_array(texts)
    assert got.equals(pa.array(texts, pa.string())) and got.to_pylist() == texts
    assert fio._string_array([]).to_pylist() == []


def test_cell_values_write_like_their_floats(tmp_path):
    """A column given as CellValues is written exactly as the same values given row by row."""
    data = tmp_path / "d.csv"
    tricky_csv(data, n=60)
    values = np.array([0.5, 1 / 3, 2.0, 1e-7])  # fixed-up ".0" and exponent cells too
    for kind, engine in [("csv", "pyarrow"), ("csv", "stdlib"), ("parquet", "pyarrow")]:
        outputs = []
        for as_cells in (False, True):
            rng = np.random.default_rng(1)  # the same rows' values for both forms
            source = fio.open_table(data, engine)
            out = tmp_path / f"o{int(as_cells)}.{kind}"
            with open(out, "wb") as fh:
                writer = fio.TableWriter(fh, kind, [*source.names, "w"], source)
                for chunk in source.chunks():
                    index = rng.integers(0, values.size, chunk.n_rows)
                    w = fio.CellValues(values, index) if as_cells else values[index]
                    writer.write(chunk, {"w": w})
                writer.close()
            outputs.append(out)
        if kind == "csv":
            assert outputs[0].read_bytes() == outputs[1].read_bytes(), engine
        else:  # the same table (CellValues columns are dictionary-encoded in the file)
            assert pq.read_table(outputs[0]).equals(pq.read_table(outputs[1]))


def lf_csv(path, n):
    """tricky_csv without carriage returns (a CR sends pyarrow's reader to the csv module)."""
    tricky_csv(path, n=n)
    path.write_bytes(path.read_bytes().replace(b"\r", b""))


def _rows(source, **kw):
    """Every chunk's columns as Python values, and the start of every chunk."""
    rows, starts = [], []
    for chunk in source.chunks(**kw):
        starts.append(chunk.start)
        cols = [chunk.columns[n] for n in source.names]
        cols = [c if isinstance(c, list) else c.to_pylist() for c in cols]
        rows += list(zip(*cols))
    return rows, starts


@pytest.mark.parametrize("tiny", [False, True])
def test_chunks_parse_floats_and_start_anywhere(chunks, tmp_path, tiny):
    chunks("pyarrow", tiny)
    data = tmp_path / "d.csv"
    lf_csv(data, n=200)
    source = fio.open_table(data)
    text, _ = _rows(source)
    parsed, _ = _rows(source, floats=["x2"], labels=["sex", "label"])
    # x2 as float64 equals float() of its text (both round correctly); the rest is the
    # text (sex and label as dictionary arrays of it)
    assert [r[1] for r in parsed] == [float(r[1]) for r in text]
    assert [r[:1] + r[2:] for r in parsed] == [r[:1] + r[2:] for r in text]
    for start in (0, 1, 57, 199):
        rows, starts = _rows(source, floats=["x2"], labels=["sex"], start=start)
        assert rows == parsed[start:] and starts[0] == start
    parquet = tmp_path / "d.parquet"
    write_parquet(parquet, n=50)
    rows, _ = _rows(fio.open_table(parquet))
    assert _rows(fio.open_table(parquet), start=7)[0] == rows[7:]


@pytest.mark.parametrize(
    "cell", ["inf", "-Infinity", "", "nan", "NULL", "abc", " 2.5", "1_000", "+3", "1e3"]
)
def test_float_columns_fall_back_to_text(chunks, tmp_path, capsys, cell):
    """A cell in a late chunk that pyarrow does not take as a finite number: read as text.

    The result (model or one-line message) is the standard-library reader's.
    """
    data = tmp_path / "d.csv"
    lf_csv(data, n=197)
    lines = data.read_bytes().decode().split("\n")
    last = lines[-2].split(",")  # the last row, on one line (note "plain": 196 % 7 == 0)
    last[1] = cell  # x2 of row 197
    lines[-2] = ",".join(last)
    data.write_bytes("\n".join(lines).encode())
    got = {}
    for engine in ENGINES:
        chunks(engine, tiny=True)
        out = tmp_path / f"m-{engine}.json"
        code, _, err = run(capsys, "fit", data, "--group", "sex", "--label", "label", "-o", out)
        got[engine] = (code, err, GaussianModel.load(out) if code == 0 else None)
    (code_a, err_a, model_a), (code_s, err_s, model_s) = got["pyarrow"], got["stdlib"]
    assert (code_a, err_a) == (code_s, err_s)
    if code_a == 0:  # chunked fits agree to round-off (see test_chunked_fit_equals_one_shot_fit)
        np.testing.assert_allclose(model_a.means, model_s.means, rtol=1e-12)
        np.testing.assert_allclose(model_a.covariances, model_s.covariances, rtol=1e-12)
    else:
        assert "row 197 (line " in err_a and "'x2'" in err_a


def test_csv_read_ahead_is_bounded(chunks, tmp_path, monkeypatch):
    """pyarrow's reader never holds more than READ_AHEAD blocks beyond the batches taken."""
    chunks("pyarrow", tiny=False)
    monkeypatch.setattr(fio, "CHUNK_BYTES", 4096)
    data = tmp_path / "d.csv"
    lf_csv(data, n=3000)  # ~60 blocks
    ahead = []

    class Watched(fio._PacedFile):
        def read(self, size=-1):
            out = super().read(size)
            ahead.append(self._read / self._block - self._taken)
            return out

    monkeypatch.setattr(fio, "_PacedFile", Watched)
    n = 0
    for chunk in fio.open_table(data).chunks(floats=["x2"]):
        n += chunk.n_rows
        time.sleep(0.002)  # a consumer slower than the disk
    assert n == 3000 and len(ahead) > 30
    # a read starts below READ_AHEAD blocks ahead and adds at most one block
    assert max(ahead) < fio.READ_AHEAD + 1


def test_paced_file_widens_its_window_after_a_stall(tmp_path, monkeypatch):
    """A reader that needs many blocks before its next batch waits log2(n) times, not n."""
    monkeypatch.setattr(fio, "STALL_SECONDS", 0.01)
    data = tmp_path / "d.bin"
    data.write_bytes(bytes(64 * 100))
    paced = fio._PacedFile(data, 100)
    try:
        got = b"".join(paced.read(100) for _ in range(64))  # no batch is ever taken
    finally:
        paced.close()
    assert got == bytes(64 * 100)
    # READ_AHEAD (2) blocks free, then windows of 4, 8, 16, 32, 64 blocks: 5 waits
    assert paced.stalls == 5


@pytest.mark.parametrize("source", ["csv", "lf-csv", "parquet"])
def test_rows_formatted_in_parts_keep_the_output(tmp_path, capsys, chunks, monkeypatch, source):
    """A chunk's rows formatted by several threads, in parts of any size: today's bytes."""
    chunks("pyarrow", tiny=False)
    monkeypatch.setattr(fio, "WRITE_THREADS", 3)
    monkeypatch.setattr(fio, "MIN_PART_ROWS", 7)  # 300 rows: 3 parts of 100
    data = tmp_path / ("d.parquet" if source == "parquet" else "d.csv")
    if source == "csv":
        tricky_csv(data)  # its carriage returns: the csv module reads it (lists of text)
    elif source == "lf-csv":
        lf_csv(data, n=300)  # pyarrow reads it (text arrays, float64 features)
    else:
        write_parquet(data)
    reference_steer(data, tmp_path / "ref.csv")
    code, _, err = steer(capsys, data, tmp_path / "o.csv")
    assert code == 0, err
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_core_only_install_steers_like_the_stdlib_engine(tmp_path, capsys, chunks):
    """Without pyarrow (blocked in a subprocess) fit and steer run and write today's bytes."""
    data = tmp_path / "d.csv"
    tricky_csv(data, n=120)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pyarrow"] = None  # as if not installed: importing it fails
        from fairsteer.cli import main
        data, out = sys.argv[1], sys.argv[2]
        args = [data, "--group", "sex", "--label", "label"]
        code = main(["steer", *args, "-o", out]) or main(["fit", *args, "-o", out + ".json"])
        loaded = [m for m, v in sys.modules.items() if v and m.startswith(("pyarrow", "pandas"))]
        print(loaded or "ok")
        sys.exit(code)
        """
    )
    out = tmp_path / "core.csv"
    res = run_python(script, data, out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")
    chunks("stdlib", tiny=False)
    code, _, err = steer(capsys, data, tmp_path / "stdlib.csv")
    assert code == 0, err
    assert out.read_bytes() == (tmp_path / "stdlib.csv").read_bytes()


def test_parquet_row_groups_gather_chunks(tmp_path, capsys, chunks, monkeypatch):
    """Chunks are gathered into row groups of >= ROW_GROUP_ROWS rows; the table is the same."""
    chunks("pyarrow", tiny=True)  # 3 rows a chunk
    data = tmp_path / "d.parquet"
    write_parquet(data, n=100)
    tables = {}
    for rows in (1, 10):
        monkeypatch.setattr(fio, "ROW_GROUP_ROWS", rows)
        out = tmp_path / f"o{rows}.parquet"
        code, _, err = steer(capsys, data, out)
        assert code == 0, err
        meta = pq.ParquetFile(out).metadata
        sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        want = [3] * 33 + [1] if rows == 1 else [12] * 8 + [4]  # 4 chunks of 3 >= 10 rows
        assert sizes == want
        tables[rows] = pq.read_table(out)
    assert tables[1].equals(tables[10])


@pytest.mark.parametrize("tiny", [False, True])
def test_label_codes_of_dictionary_chunks_match_the_csv_module(tmp_path, chunks, tiny):
    """Labels read as dictionary arrays (known entries: one take) code as the csv module's lists.

    "1.0" first appears in a later chunk than "1" (one label), and a label first
    seen late gets the next code; a second pass (grow=False) gives the same
    codes and refuses a label the first pass did not see.
    """
    data = tmp_path / "d.csv"
    lf_csv(data, n=200)
    lines = data.read_text().split("\n")
    lines[120:] = [r.replace(",1,", ",1.0,") for r in lines[120:]]
    late = next(k for k in range(170, len(lines)) if ",f," in lines[k])
    lines[late] = lines[late].replace(",f,", ",x,")  # group "x" first seen in a late row
    data.write_text("\n".join(lines))
    got = {}
    for engine in ENGINES:
        chunks(engine, tiny)
        source = fio.open_table(data)
        coders = [fio.LabelCoder(source, n, w) for n, w in (("sex", "group"), ("label", "class"))]
        passes = []
        for grow in (True, False):
            codes = [[], []]
            for chunk in source.chunks(labels=["sex", "label"]):
                if engine == "pyarrow":
                    assert pa.types.is_dictionary(chunk._dictionaries["sex"].type)
                for k, coder in enumerate(coders):
                    codes[k] += coder.encode(chunk, grow=grow).tolist()
            passes.append(codes)
        assert passes[0] == passes[1]
        got[engine] = (passes[0], [c.labels for c in coders])
    assert got["pyarrow"] == got["stdlib"]
    groups, classes = got["pyarrow"][1]
    assert sorted(groups[:2]) == ["f", "m"] and groups[2] == "x"
    assert sorted(classes) == ["0", "1"]  # "1.0" is the label "1"
    chunks("pyarrow", tiny)
    source = fio.open_table(data)
    coder = fio.LabelCoder(source, "sex", "group")
    first = [coder.encode(c) for c in source.chunks(labels=["sex"])]
    assert sum(len(c) for c in first) == 200
    coder.labels.remove("x")
    del coder._index[coder._key("x")]  # as if the first pass had not seen it
    with pytest.raises(fio.InputError, match="changed while it was being read"):
        for chunk in source.chunks(labels=["sex"]):
            coder.encode(chunk, grow=False)


def test_fit_and_steer_do_not_import_pandas(tmp_path):
    """pyarrow imports pandas for a Python str passed to a compute function (0.3 s): never here."""
    pytest.importorskip("pandas")  # only meaningful where pandas could be imported
    csv_data, pq_data = tmp_path / "d.csv", tmp_path / "d.parquet"
    lf_csv(csv_data, n=300)
    write_parquet(pq_data)
    script = textwrap.dedent(
        """
        import sys
        from fairsteer.cli import main
        for data in sys.argv[1:]:
            args = [data, "--group", "sex", "--label", "label"]
            assert main(["fit", *args, "-o", data + ".json"]) == 0
            for suffix in ("csv", "parquet"):
                assert main(["steer", *args, "-o", f"{data}.out.{suffix}"]) == 0
        print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
        """
    )
    res = run_python(script, csv_data, pq_data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_used_dictionary_entries_in_order_of_first_use():
    values = ["a", "b", "c", "d"]
    indices = np.array([2, 2, 0, 2, 0, 3], dtype=np.int32)  # "b" unused, "c" first
    labels, local = fio._used_entries(values, indices)
    assert labels == ["c", "a", "d"]
    assert [labels[k] for k in local] == [values[k] for k in indices]


def test_abandoned_reader_lets_the_process_exit(tmp_path):
    """A caller that stops after one chunk: the paced reader ends, the process exits cleanly.

    (A reader thread left waiting for the caller used to outlive the interpreter.)
    """
    data = tmp_path / "d.csv"
    lf_csv(data, n=3000)
    script = textwrap.dedent(
        """
        import sys
        import fairsteer.io as fio
        chunk = next(iter(fio.open_table(sys.argv[1]).chunks(floats=["x2"])))
        print(chunk.n_rows > 0)
        """
    )
    # timeout well under fio.STALL_SECONDS: no wait ran out
    res = run_python(script, data, env={"FAIRSTEER_CHUNK_BYTES": "4096"}, timeout=25)
    assert res.returncode == 0 and res.stdout == "True\n", res.stderr


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize(
    "values",
    [
        [0, 1, 1, 0],
        [5, -3, 5, 7, 1000, -3],  # gaps: entries of the range that no row uses
        np.array([200, 3, 255, 3], dtype=np.uint8),
        np.array([-(2**63), 2**63 - 1, 0]),  # a range too wide: pyarrow hashes it
        np.array([2, 4096, 2]),  # a range within SMALL_DICTIONARY: counted
        np.array([2, 4097, 2]),  # a range of exactly SMALL_DICTIONARY values: counted
        np.array([2, 4098, 2]),  # just beyond SMALL_DICTIONARY: hashed
        # x - lo and lo + k beyond the type: int8 spanning more than 127, int64 and
        # uint64 at their limits
        np.array([-100, 100, -100, 7], dtype=np.int8),
        np.array([-128, 127], dtype=np.int8),
        np.array([2**63 - 1, 2**63 - 3, 2**63 - 1]),
        np.array([-(2**63), -(2**63) + 7]),
        np.array([2**64 - 3, 2**63, 2**63 + 2, 2**64 - 1], dtype=np.uint64)[1:3],
        np.array([2**64 - 5, 2**64 - 3], dtype=np.uint64),
    ],
)
def test_parquet_labels_code_as_python_values_in_order_of_first_use(tmp_path, chunks, tiny, values):
    """Parquet labels: text read as dictionaries, integers of a small range coded by
    their range (with entries no row uses), others hashed. Every chunking gives codes
    in order of first appearance and the labels as Python values, as a dict over the
    rows computes them; a second pass (grow=False) gives the same codes."""
    chunks("pyarrow", tiny)
    values = np.resize(np.asarray(values), 40)
    text = np.array(["b", "a", "c", "a"])[np.arange(40) % 4]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(40.0), "g": text, "y": values}), path)
    source = fio.open_table(path)
    for name, column in (("g", text), ("y", values)):
        coder = fio.LabelCoder(source, name, "class")
        first = [coder.encode(c) for c in source.chunks(labels=[name])]
        again = [coder.encode(c, grow=False) for c in source.chunks(labels=[name])]
        index = {}
        want = [index.setdefault(v.item(), len(index)) for v in column]
        assert np.concatenate(first).tolist() == want == np.concatenate(again).tolist()
        assert coder.labels == list(index)
        assert all(type(a) is type(b) for a, b in zip(coder.labels, index, strict=True))


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_feature_matrix_of_the_parse_thread_equals_the_column_path(tmp_path, chunks, tiny, order):
    """Parquet (float64, float32 and int64 columns) and pyarrow-CSV chunks whose features
    are numeric and finite arrive with their float64 matrix made in the parse thread; it
    equals the column-by-column conversion of Chunk.floats exactly, is taken once, and a
    chunk with a NaN or a null gets none (Chunk.floats then names the bad cell)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks("pyarrow", tiny)
    rng = np.random.default_rng(4)
    n = 40
    table = pa.table(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n).astype(np.float32),
            "c": rng.integers(-(2**60), 2**60, n),  # int64 values beyond float64's precision
            "g": rng.choice(["f", "m"], n),
        }
    )
    names = ["a", "b", "c"]
    pq.write_table(table, tmp_path / "t.parquet")
    text = "a,b,c,g\n" + "".join(
        f"{float(a)!r},{float(b)!r},{int(c)},{g}\n"
        for a, b, c, g in zip(*table.to_pydict().values(), strict=True)
    )
    (tmp_path / "t.csv").write_text(text)
    for path in (tmp_path / "t.parquet", tmp_path / "t.csv"):
        source = fio.open_table(path)
        got, seen = [], 0
        for chunk in source.chunks(floats=names, order=order):
            assert chunk._matrix is not None, path
            made = chunk.floats(names)
            assert chunk._matrix is None  # taken once
            again = chunk.floats(names)  # the column path, as without the parse thread
            np.testing.assert_array_equal(made, again)
            contiguous = made.flags.c_contiguous if order == "C" else made.flags.f_contiguous
            assert contiguous and made.dtype == np.float64
            got.append(made)
            seen += chunk.n_rows
        assert seen == n
        want = np.column_stack([np.asarray(table[c]).astype(np.float64) for c in names])
        np.testing.assert_array_equal(np.concatenate(got), want)
    # a NaN or a null: no matrix for that chunk, and the error names the row
    bad = table.set_column(0, "a", pa.array([*table["a"].to_pylist()[:-1], None]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    source = fio.open_table(tmp_path / "bad.parquet")
    last = list(source.chunks(floats=names))[-1]
    assert last._matrix is None
    with pytest.raises(fio.InputError, match="row 40"):
        last.floats(names)


@pytest.mark.parametrize("chosen", [None, "system"])
def test_the_command_line_reads_tables_with_jemalloc_unless_a_pool_was_chosen(tmp_path, chosen):
    """``main`` asks for pyarrow's jemalloc pool (less peak memory than mimalloc), applied
    when a table is first read; a pool the user chose (ARROW_DEFAULT_MEMORY_POOL) stays."""
    import pyarrow as pa

    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc")
    data = tmp_path / "d.parquet"
    write_parquet(data)
    script = """
        import sys
        import pyarrow as pa
        from fairsteer.cli import main
        before = pa.default_memory_pool().backend_name
        assert main(["--version"]) == 0  # no table read: nothing changes yet
        assert pa.default_memory_pool().backend_name == before
        assert main(["fit", sys.argv[1], "--group", "sex", "--label", "label", "-o",
                     sys.argv[1] + ".json"]) == 0
        print(before, pa.default_memory_pool().backend_name)
    """
    env = {"ARROW_DEFAULT_MEMORY_POOL": chosen} if chosen else {}
    if not chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = ""  # unset for the child
    res = run_python(script, data, env=env)
    assert res.returncode == 0, res.stderr
    before, after = res.stdout.split()[-2:]
    assert after == (chosen or "jemalloc")
    if chosen:
        assert before == chosen


@pytest.mark.parametrize("kind", ["binary", "date", "decimal"])
def test_parquet_labels_of_other_types_are_refused_in_one_line(tmp_path, capsys, kind):
    """A Parquet group column of bytes, dates or decimals cannot name a model's groups
    (the model is JSON): one line naming the column and the fix, nothing written."""
    import datetime
    import decimal

    n = 40
    values = {
        "binary": pa.array([b"a", b"b"] * (n // 2)),
        "date": pa.array([datetime.date(2020, 1, 1 + k % 2) for k in range(n)]),
        "decimal": pa.array([decimal.Decimal(k % 2) for k in range(n)]),
    }[kind]
    y = np.arange(n) // 2 % 2
    table = pa.table({"x": np.random.default_rng(0).normal(size=n), "g": values, "y": y})
    pq.write_table(table, tmp_path / "d.parquet")
    for command, out in (("fit", "m.json"), ("steer", "o.parquet")):
        code, stdout, err = run(capsys, command, tmp_path / "d.parquet", "--group", "g",
                                "--label", "y", "-o", tmp_path / out)  # fmt: skip
        assert code == 2 and stdout == "" and err.count("\n") == 1, err
        assert "group column 'g' holds" in err and "convert the column" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


@pytest.mark.parametrize("engine", ENGINES)
def test_csv_integer_labels_beyond_float_precision_stay_apart(tmp_path, capsys, chunks, engine):
    """Group IDs 2^53 and 2^53 + 1 are two groups (a float key merged them), while
    "1" and "1.0" stay one class; the one-shot reader agrees with the streamed fit."""
    chunks(engine, tiny=True)
    rng = np.random.default_rng(3)
    ids = ["9007199254740992", "9007199254740993"]
    rows = [f"{float(rng.normal())!r},{ids[k % 2]},{['1', '0', '1.0', '0'][k // 2 % 4]}\n"
            for k in range(80)]  # fmt: skip
    data = tmp_path / "d.csv"
    data.write_text("x,g,y\n" + "".join(rows))
    code, out, err = run(capsys, "fit", data, "--group", "g", "--label", "y", "-o",
                         tmp_path / "m.json")  # fmt: skip
    assert code == 0 and "2 groups x 2 classes" in out, err
    model = GaussianModel.load(tmp_path / "m.json")
    assert model.groups == tuple(ids) and model.classes == ("0", "1")
    table = fio.read_table(data)
    assert sorted(set(table.labels("g", "group"))) == ids
    assert sorted(set(table.labels("y", "class"))) == ["0", "1"]


def test_a_parquet_file_replaced_between_passes_is_named(tmp_path):
    """The reader that takes text labels as dictionaries opens the file again: a file
    whose columns changed since it was opened is an error naming it, not a misread."""
    data = tmp_path / "d.parquet"
    write_parquet(data)
    source = fio.open_table(data)
    table = pq.read_table(data)
    pq.write_table(table.rename_columns([*table.column_names[:-1], "town"]), data)
    with pytest.raises(fio.InputError, match="changed while it was being read"):
        list(source.chunks(labels=["sex"]))
