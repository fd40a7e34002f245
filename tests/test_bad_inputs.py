"""Every bad input a new user can give gets one clear line (CLI: exit 2) or correct output.

Issue 10, item 4. CLI cases run through ``fairsteer.cli.main`` with capsys; a
subprocess is used only where a real signal or a closed pipe is needed.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from fairsteer.cli import main
from fairsteer.errors import InputError
from fairsteer.estimator import OptimalSteering
from fairsteer.files import write_atomic
from fairsteer.fit import fit_model
from fairsteer.model import GaussianModel
from fairsteer.solve import solve

SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_data(n=400, seed=0, d=2):
    """Two groups, two classes, d features with a group-dependent class shift."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) + y[:, None] * np.where(g == "m", 2.0, 1.0)[:, None]
    return X, y, g


def write_csv(path, X, y, g, names=None, note=True):
    names = names or [f"x{j + 1}" for j in range(X.shape[1])]
    header = [*names, "sex", "label"] + (["note"] if note else [])
    lines = [",".join(header)]
    for k in range(len(y)):
        cells = [repr(float(v)) for v in X[k]] + [str(g[k]), str(y[k])]
        lines.append(",".join(cells + ([f"row {k}"] if note else [])))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, out, err, *words):
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fairsteer: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


def fit_args(data, tmp_path, *extra):
    return ("fit", data, "--group", "sex", "--label", "label", "-o", tmp_path / "m.json", *extra)


def steer_args(data, tmp_path, *extra):
    return ("steer", data, "--group", "sex", "--label", "label", "-o", tmp_path / "o.csv", *extra)


# ---------------------------------------------------------------- CSV cells


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("-inf", "NaN or infinite"),
        ("", "is empty"),
        ("abc", "non-numeric value 'abc'"),
    ],
)
def test_bad_cell_in_numeric_column_is_named_not_dropped(tmp_path, capsys, cell, words):
    X, y, g = make_data(d=3)
    data = write_csv(tmp_path / "d.csv", X, y, g)
    lines = data.read_text().split("\n")
    cells = lines[5].split(",")
    cells[1] = cell  # x2 of data row 5 (file line 6)
    lines[5] = ",".join(cells)
    data.write_text("\n".join(lines))
    for command in ("fit", "steer"):
        args = fit_args if command == "fit" else steer_args
        code, out, err = run(capsys, *args(data, tmp_path))
        assert_one_line_error(code, out, err, "'x2'", "row 5 (line 6)", words, "--features")
    # naming the features explicitly is the documented way around it
    code, out, err = run(capsys, *fit_args(data, tmp_path, "--features", "x1", "x3"))
    assert code == 0 and "on 2 features" in out, err


def test_text_columns_are_still_skipped(tmp_path, capsys):
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X, y, g)  # with the free-text "note" column
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert code == 0 and "on 2 features" in out, err


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path, capsys):
    X, y, g = make_data()
    text = write_csv(tmp_path / "plain.csv", X, y, g).read_text()
    data = tmp_path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, _, err = run(capsys, *fit_args(data, tmp_path, "--features", "x1", "x2"))
    assert code == 0, err
    assert GaussianModel.load(tmp_path / "m.json").features == ("x1", "x2")
    code, _, err = run(capsys, *steer_args(data, tmp_path))
    assert code == 0, err
    assert (tmp_path / "o.csv").read_bytes().startswith(b"x1,x2,sex,label,note,weight\n")


@pytest.mark.parametrize("column", ["label", "sex"])
def test_numeric_labels_spelled_differently_are_one_label(tmp_path, capsys, column):
    X, y, g = make_data()
    g = np.where(g == "f", "0", "1")
    spelled = {"label": y.astype(str).astype(object), "sex": g.astype(object)}[column]
    spelled[::3] = [f"{v}.0" for v in spelled[::3]]  # "1" and "1.0" in the same column
    if column == "label":
        data = write_csv(tmp_path / "d.csv", X, spelled, g)
    else:
        data = write_csv(tmp_path / "d.csv", X, y, spelled)
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert code == 0 and "2 groups x 2 classes" in out, err
    model = GaussianModel.load(tmp_path / "m.json")
    direct = fit_model(X, y, g)
    np.testing.assert_allclose(model.means, direct.means, rtol=1e-12)
    code, _, err = run(capsys, *steer_args(data, tmp_path))
    assert code == 0, err
    rows_in = data.read_text().splitlines()
    rows_out = (tmp_path / "o.csv").read_text().splitlines()
    col = rows_in[0].split(",").index(column)
    # the output keeps every cell's own text
    assert [r.split(",")[col] for r in rows_out] == [r.split(",")[col] for r in rows_in]


@pytest.mark.parametrize("column", ["sex", "label"])
def test_empty_group_or_label_cell(tmp_path, capsys, column):
    X, y, g = make_data()
    g = g.astype(object)
    y = y.astype(object)
    (g if column == "sex" else y)[6] = ""
    data = write_csv(tmp_path / "d.csv", X, y, g)
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert_one_line_error(code, out, err, f"'{column}'", "row 7 (line 8)", "fill or drop")


@pytest.mark.parametrize("column", ["sex", "label"])
def test_null_group_or_label_in_parquet(tmp_path, capsys, column):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, y, g = make_data()
    gl, yl = g.tolist(), y.tolist()
    (gl if column == "sex" else yl)[3] = None
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "sex": gl, "label": yl}), path)
    code, out, err = run(capsys, *fit_args(path, tmp_path))
    assert_one_line_error(code, out, err, f"'{column}'", "row 4", "fill or drop")


def test_null_feature_in_parquet(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, y, g = make_data()
    x2 = X[:, 1].tolist()
    x2[9] = None
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x1": X[:, 0], "x2": x2, "sex": g, "label": y}), path)
    code, out, err = run(capsys, *fit_args(path, tmp_path))
    assert_one_line_error(code, out, err, "'x2'", "row 10")


# ------------------------------------------------------- features at fit


@pytest.mark.parametrize(
    ("make_x3", "named"),
    [
        (lambda X: X[:, 0].copy(), ("'x1'", "'x3'")),
        (lambda X: 1e6 * X[:, 0], ("'x1'", "'x3'")),  # scale does not hide a duplicate
        (lambda X: X[:, 0] + 1e-4 * X[:, 1], ("'x1'", "'x2'", "'x3'")),
    ],
)
def test_collinear_features_are_named_at_fit(tmp_path, capsys, make_x3, named):
    X, y, g = make_data()
    X = np.column_stack([X, make_x3(X)])
    data = write_csv(tmp_path / "d.csv", X, y, g)
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert_one_line_error(code, out, err, "linearly dependent", *named, "drop one of them")
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(InputError, match="linearly dependent"):
        fit_model(X, y, g, features=["x1", "x2", "x3"])
    # the suggested shrinkage does help
    code, out, err = run(capsys, *fit_args(data, tmp_path, "--shrinkage", "oas"))
    assert code == 0, err


def test_badly_scaled_but_independent_features_fit(tmp_path, capsys):
    X, y, g = make_data(d=3)
    X *= np.array([1e5, 1e-5, 1.0])
    X[:, 2] += 1e6  # a year-like offset
    data = write_csv(tmp_path / "d.csv", X, y, g)
    code, _, err = run(capsys, *fit_args(data, tmp_path))
    assert code == 0, err


def test_feature_constant_in_a_cell_is_named(tmp_path, capsys):
    X, y, g = make_data()
    X[(g == "m") & (y == 1), 1] = 3.0
    data = write_csv(tmp_path / "d.csv", X, y, g)
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert_one_line_error(
        code, out, err, "'x2' is constant", "(group 'm', class '1')", "--covariance shared"
    )
    code, _, err = run(capsys, *fit_args(data, tmp_path, "--covariance", "shared"))
    assert code == 0, err


def test_single_sample_cell_names_the_cell_and_a_fix_that_works(tmp_path, capsys):
    X, y, g = make_data()
    keep = ~((g == "f") & (y == 1))
    keep[np.flatnonzero((g == "f") & (y == 1))[0]] = True  # one sample left in (f, 1)
    data = write_csv(tmp_path / "d.csv", X[keep], y[keep], g[keep])
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert_one_line_error(
        code, out, err, "(group 'f', class '1')", "single sample", "--covariance shared"
    )
    assert "shrinkage" not in err  # shrinkage cannot help a zero covariance
    code, out, err = run(capsys, *fit_args(data, tmp_path, "--shrinkage", "oas"))
    assert_one_line_error(code, out, err, "single sample")
    code, _, err = run(capsys, *fit_args(data, tmp_path, "--covariance", "shared"))
    assert code == 0, err


def test_too_few_samples_for_the_dimension(tmp_path, capsys):
    X, y, g = make_data(d=4)
    keep = ~((g == "f") & (y == 1))
    keep[np.flatnonzero((g == "f") & (y == 1))[:3]] = True  # 3 samples, 4 features
    data = write_csv(tmp_path / "d.csv", X[keep], y[keep], g[keep])
    code, out, err = run(capsys, *fit_args(data, tmp_path))
    assert_one_line_error(code, out, err, "3 samples for 4 features", "--shrinkage oas")
    code, _, err = run(capsys, *fit_args(data, tmp_path, "--shrinkage", "oas"))
    assert code == 0, err


@pytest.mark.parametrize(("scale", "words"), [(1e300, "too large"), (1e-300, "too small")])
def test_features_beyond_float64_variances(tmp_path, capsys, scale, words):
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X * scale, y, g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning lines either
        code, out, err = run(capsys, *steer_args(data, tmp_path))
    assert_one_line_error(code, out, err, "'x1'", words, "the results do not depend on units")


@pytest.mark.parametrize(
    "scale", [np.array([1e150, 1e150]), np.array([1e5, 1e-5])], ids=["x1e150", "1e5-1e-5"]
)
@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_extreme_but_representable_scales_steer(tmp_path, capsys, scale, covariance):
    """Units do not matter (THEORY 4d): same KL, and an ideal steered sample."""
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X * scale, y, g)
    write_csv(tmp_path / "unit.csv", X, y, g)
    cov = ("--covariance", covariance, "--artifacts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or RuntimeWarning on the way
        code, _, err = run(capsys, *steer_args(data, tmp_path, *cov))
        assert code == 0, err
        code, _, err = run(
            capsys, *steer_args(tmp_path / "unit.csv", tmp_path, *cov, "-o", tmp_path / "u.csv")
        )
        assert code == 0, err
    scaled = json.loads((tmp_path / "o.solution.json").read_text())
    unit = json.loads((tmp_path / "u.solution.json").read_text())
    # The solvers run on the standardised model, where both inputs coincide up to
    # round-off of the scaling: equal KL to ~1e-9 relative.
    assert scaled["kl"] == pytest.approx(unit["kl"], rel=1e-9)
    steered = np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    plain = np.loadtxt(tmp_path / "u.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    if scale[0] == scale[1]:
        # A uniform scale leaves the OT maps unchanged: the output just scales.
        np.testing.assert_allclose(steered / scale, plain, rtol=1e-8, atol=1e-8)
    refit = fit_model(steered, y, g, covariance=covariance)
    # The steered features are exactly ideal (priors are equalised by the weight
    # column, not by moving rows): every cell KL of the refit's nearest ideal
    # model is round-off.
    assert solve(refit).cell_kl.max() <= 1e-10


# -------------------------------------------------------------- model JSON


def deep_json(path, depth=100_000):
    path.write_text("[" * depth + "]" * depth)
    return path


@pytest.mark.parametrize("command", ["audit", "solve"])
def test_deeply_nested_json(tmp_path, capsys, command):
    path = deep_json(tmp_path / "deep.json")
    extra = ["-o", tmp_path / "s.json"] if command == "solve" else []
    code, out, err = run(capsys, command, path, *extra)
    assert_one_line_error(code, out, err, "nested too deeply")


def test_deeply_nested_json_in_the_api(tmp_path):
    path = deep_json(tmp_path / "deep.json")
    with pytest.raises(InputError, match="nested too deeply"):
        OptimalSteering.load(path)
    with pytest.raises(InputError, match="nested too deeply"):
        GaussianModel.load(path)


def small_model(tmp_path):
    X, y, g = make_data()
    path = tmp_path / "m.json"
    fit_model(X, y, g).save(path)
    return path


@pytest.mark.parametrize("command", ["audit", "solve"])
def test_huge_means_in_model_json(tmp_path, capsys, command):
    path = small_model(tmp_path)
    data = json.loads(path.read_text())
    data["means"] = (np.array(data["means"]) * 1e200).tolist()
    path.write_text(json.dumps(data))
    extra = ["-o", tmp_path / "s.json"] if command == "solve" else []
    code, out, err = run(capsys, command, path, *extra)
    assert_one_line_error(code, out, err, "standard deviations apart", "same units")


# --------------------------------------------------------------- arguments


@pytest.mark.parametrize("command", ["audit", "solve", "steer"])
def test_negative_seed(tmp_path, capsys, command):
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X, y, g)
    model = small_model(tmp_path)
    argv = {
        "audit": ("audit", model),
        "solve": ("solve", model, "-o", tmp_path / "s.json"),
        "steer": steer_args(data, tmp_path),
    }[command]
    code, out, err = run(capsys, *argv, "--seed", "-1")
    assert_one_line_error(code, out, err, "--seed", "whole number >= 0", f"fairsteer {command}")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ((), "required"),
        (("nope",), "invalid choice"),
        (("fit", "d.csv"), "the following arguments are required"),
        (("solve", "m.json", "--method", "best", "-o", "x.json"), "invalid choice: 'best'"),
        (("audit", "m.json", "--seed", "x"), "whole number"),
        (("audit", "m.json", "--bogus"), "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, out, err, words, "--help")


def test_help_and_version_still_exit_0(capsys):
    assert main(["--version"]) == 0
    assert "fairsteer" in capsys.readouterr().out
    assert main(["fit", "--help"]) == 0
    assert "--group" in capsys.readouterr().out


def test_failed_artifact_write_comes_instead_of_success(tmp_path, capsys):
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X, y, g)
    (tmp_path / "o.model.json").mkdir()  # cannot be replaced by a file
    code, out, err = run(capsys, *steer_args(data, tmp_path, "--artifacts"))
    assert_one_line_error(code, out, err, "o.model.json")
    assert "steered" not in out


# ------------------------------------------------------------------- API


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (lambda y: [None, *y[1:]], "missing value"),
        (lambda y: [float("nan"), *y[1:]], "NaN"),
        (lambda y: ["1", *y[1:]], "mix types"),
        (lambda y: np.array([None, *y[1:]], dtype=object), "missing value"),
        (lambda y: np.array(["a", *y[1:]], dtype=object), "mix types"),
    ],
)
@pytest.mark.parametrize("where", ["y", "groups"])
def test_missing_or_mixed_labels_in_the_api(bad, words, where):
    X, y, g = make_data()
    labels = {"y": y.tolist(), "groups": (y + 10).tolist()}[where]
    labels = bad(labels)
    yy, gg = (labels, g) if where == "y" else (y, labels)
    with pytest.raises(InputError, match=words):
        fit_model(X, yy, gg)
    with pytest.raises(InputError, match=words):
        OptimalSteering().fit(X, yy, sensitive_features=gg)


def test_pandas_missing_labels():
    pd = pytest.importorskip("pandas")
    X, y, g = make_data()
    groups = pd.Series(g, dtype="string")
    groups[4] = pd.NA
    with pytest.raises(InputError, match="missing value"):
        OptimalSteering().fit(X, y, sensitive_features=groups)


def test_string_feature_column_in_a_frame():
    pd = pytest.importorskip("pandas")
    X, y, g = make_data()
    frame = pd.DataFrame({"x1": X[:, 0], "city": np.where(g == "f", "Paris", "Rome")})
    with pytest.raises(InputError, match=r"X column 'city' is not numeric \(row 0 holds 'Rome'\)"):
        OptimalSteering().fit(frame, y, sensitive_features=g)
    pl = pytest.importorskip("polars")
    with pytest.raises(InputError, match="X column 'city' is not numeric"):
        OptimalSteering().fit(pl.from_pandas(frame), y, sensitive_features=g)


def test_nan_feature_in_the_api_names_column_and_row():
    X, y, g = make_data()
    X[7, 1] = np.nan
    with pytest.raises(InputError, match="X column 'b' holds nan at row 7"):
        fit_model(X, y, g, features=["a", "b"])


def test_negative_seed_in_the_api():
    X, y, g = make_data()
    with pytest.raises(InputError, match="seed must be a whole number >= 0"):
        OptimalSteering(seed=-1).fit(X, y, sensitive_features=g)


@pytest.fixture(scope="module")
def saved_steering(tmp_path_factory):
    X, y, g = make_data()
    path = tmp_path_factory.mktemp("est") / "est.json"
    OptimalSteering(covariance="shared").fit(X, y, sensitive_features=g).save(path)
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(params="affirmative"), "'params' must be an object"),
        (lambda d: d["solution"].update(kl="0.1"), "'kl' must be a number"),
        (lambda d: d["params"].update(method="fastest"), "method must be one of"),
        (lambda d: d["params"].update(method=3), "method must be one of"),
        (lambda d: d["params"].update(unlabeled="maybe"), "unlabeled must be one of"),
        (lambda d: d["params"].update(seed=-3), "seed must be"),
        (lambda d: d["params"].update(colour="red"), "unknown parameter"),
        (lambda d: d["params"].update(method="all-subgroups"), "the solution was found"),
        (lambda d: d.pop("model"), "needs params, model, solution"),
    ],
)
def test_saved_steering_json_is_validated(tmp_path, saved_steering, change, words):
    data = json.loads(json.dumps(saved_steering))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=words):
        OptimalSteering.load(path)


def test_saved_steering_round_trip(tmp_path, saved_steering):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(saved_steering))
    est = OptimalSteering.load(path)
    assert est.covariance == "shared"


def test_unknown_class_message_spelling():
    X, y, g = make_data()
    est = OptimalSteering().fit(X, y, sensitive_features=g)
    with pytest.raises(InputError, match=r"the known classes are \[0, 1\]"):
        est.steer(X[:2], [0, 7], sensitive_features=g[:2])


def test_soft_transform_of_huge_rows_is_finite():
    X, y, g = make_data()
    est = OptimalSteering(covariance="shared").fit(X, y, sensitive_features=g)
    rows = np.array([[1e154, 0.0], [-1e200, 1e200], [1e300, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = est.transform(rows, sensitive_features=["f", "m", "f"])
    assert np.all(np.isfinite(out))


# ------------------------------------------------------------------ writes


def test_outputs_follow_the_umask(tmp_path, capsys):
    X, y, g = make_data()
    data = write_csv(tmp_path / "d.csv", X, y, g)
    old = os.umask(0o022)
    try:
        code, _, err = run(capsys, *steer_args(data, tmp_path, "--artifacts"))
        assert code == 0, err
        for name in ("o.csv", "o.model.json", "o.solution.json", "o.audit.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        os.umask(0o027)
        write_atomic(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_existing_output_keeps_its_mode(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    path.chmod(0o604)
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys, time
        from fairsteer import files as model

        real_replace = os.replace

        def slow_replace(src, dst):
            print("writing", flush=True)
            time.sleep(60)
            real_replace(src, dst)

        model.os.replace = slow_replace
        model.write_atomic(sys.argv[1], "x" * 100_000)
        """
    )
    target = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target)],
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
    assert proc.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file


def test_closed_pipe_is_quiet(tmp_path):
    model = small_model(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader (e.g. head) has gone away before anything is printed
    try:
        res = subprocess.run(
            [sys.executable, "-m", "fairsteer", "audit", str(model), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
            check=False,
            timeout=300,
        )
    finally:
        os.close(write)
    assert res.stderr == ""
    assert res.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [("kl", "0.1", "'kl' must be a finite number"), ("method", "magic", "method must be one of")],
)
def test_solution_json_fields_are_validated(tmp_path, capsys, key, value, words):
    X, y, g = make_data()
    sol = solve(fit_model(X, y, g))
    data = sol.to_dict()
    data[key] = value
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "audit", path)
    assert code == 0, err  # audit reads the model part only
    from fairsteer.solve import Solution

    with pytest.raises(InputError, match=words):
        Solution.load(path)
