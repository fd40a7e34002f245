"""The Dask backend and the sharded command line, on a real LocalCluster (processes).

One cluster of two single-threaded worker processes serves the whole module:
library calls run on it as the default client, and the command line reaches
it with ``--engine dask --scheduler ADDRESS`` (the path to any cluster).
"""

import hashlib
import itertools
import json
import logging
import os

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from fairsteer import SteeringMaps, fit_model, solve  # noqa: E402
from fairsteer.cli import main  # noqa: E402
from fairsteer.dask import (  # noqa: E402
    cell_statistics_dask,
    fit_model_dask,
    steer_dask,
    transform_dask,
    weights_dask,
)
from fairsteer.errors import InputError  # noqa: E402

# Merging statistics (Chan's update) instead of one pass reorders the sums:
# every merge adds a relative error of a few eps (2.2e-16) to means and
# scatters, and the reduction tree over <= 20 partitions of <= 5000 rows
# accumulates at most ~n * eps ~ 1e-12 relative (the worst-case bound of
# summation; typically sqrt(n) * eps ~ 1e-14). 1e-10 leaves a 100-fold margin,
# while a lost or doubled row would move a mean by ~1 / n ~ 2e-4.
RTOL = 1e-10
# Steered values are A (x - mu) + mu~ with A from eigendecompositions of the
# (round-off-perturbed) covariances: perturbations of ~1e-12 relative in the
# model give ~1e-11 in the maps for these well-conditioned cells (condition
# numbers below 10).
STEER_ATOL = 1e-9


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: never a clash with a running cluster
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as c:
        yield c


def sample(n=4000, seed=0, groups=("a", "b", "c"), d=3):
    rng = np.random.default_rng(seed)
    g = rng.choice(list(groups), n)
    y = rng.integers(0, 2, n)
    shift = np.array([1.0 + k for k in range(len(groups))])[np.searchsorted(groups, g)]
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 2000.0
    X += (y * shift)[:, None]
    return X, y, g


def frame(X, y, g):
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(X.shape[1])])
    df["sex"] = g
    df["label"] = y
    df["note"] = [f"row {k}" for k in range(len(y))]
    return df


def close(a, b, rtol=RTOL):
    return np.allclose(a, b, rtol=rtol, atol=0)


def same_model(m1, m2):
    assert m1.groups == m2.groups and m1.classes == m2.classes
    assert m1.features == m2.features and m1.family == m2.family
    assert close(m1.priors, m2.priors)
    scale = np.abs(m2.means).max()  # means ~2000: compare on their own scale
    assert np.allclose(m1.means, m2.means, rtol=0, atol=RTOL * scale)
    assert close(m1.covariances, m2.covariances)


# ----------------------------------------------------------------- library


@pytest.mark.parametrize(
    ("covariance", "shrinkage", "family"),
    [("per-class", None, "normal"), ("shared", "oas", "normal"), ("per-class", 0.1, "lognormal")],
)
def test_array_fit_equals_in_memory_fit(client, covariance, shrinkage, family):
    X, y, g = sample()
    # uneven row blocks, several column blocks (rechunked to whole rows)
    Xd = da.from_array(X, chunks=((700, 1, 1500, 1799), (2, 1)))
    kw = dict(covariance=covariance, shrinkage=shrinkage, family=family)
    got = fit_model_dask(Xd, da.from_array(y, chunks=500), g, split_every=2, **kw)
    same_model(got, fit_model(X, y, g, **kw))


def test_statistics_match_brute_force(client):
    X, y, g = sample(n=1500, seed=3)
    stats = cell_statistics_dask(da.from_array(X, chunks=(200, 3)), y, g)
    for a, name in enumerate(stats.groups):
        for i, cls in enumerate(stats.classes):
            rows = X[(g == name) & (y == cls)]
            assert stats.counts[a, i] == rows.shape[0]
            assert np.allclose(stats.means[a, i], rows.mean(axis=0), rtol=RTOL)
            # np.cov with bias: the scatter / n, computed independently
            assert close(stats.scatters[a, i] / rows.shape[0], np.cov(rows.T, bias=True))


def partitions(*frames):
    """A dask dataframe with exactly these partitions (empty ones kept)."""
    parts = [dask.delayed(f.copy)() for f in frames]
    return dd.from_delayed(parts, meta=frames[0].iloc[:0], verify_meta=False)


def test_dataframe_fit_with_missing_cell_and_empty_partition(client):
    X, y, g = sample(n=3000, seed=1)
    df = frame(X, y, g)
    # partition 0 lacks group "c" and class 1 of group "b"; partition 1 is empty;
    # partition 3 holds a single group
    p0 = df[(df.sex != "c") & ~((df.sex == "b") & (df.label == 1))]
    rest = df.drop(p0.index)
    p2, p3 = rest[rest.sex != "c"], rest[rest.sex == "c"]
    ddf = partitions(p0, df.iloc[:0], p2, p3)
    assert ddf.npartitions == 4
    got = fit_model_dask(ddf, group="sex", label="label", covariance="shared")
    whole = pd.concat([p0, p2, p3])
    ref = fit_model(
        whole[["x1", "x2", "x3"]],
        whole.label.to_numpy(),
        whole.sex.to_numpy(),
        covariance="shared",
        features=["x1", "x2", "x3"],
    )
    same_model(got, ref)


def test_fit_errors_name_the_partition(client):
    X, y, g = sample(n=1000)
    X[612, 1] = np.nan
    with pytest.raises(InputError, match=r"partition 3 \(rows 600 to 799\).*column 1.*row 12"):
        fit_model_dask(da.from_array(X, chunks=(200, 3)), y, g)
    df = frame(X, y, g)
    with pytest.raises(InputError, match=r"partition 1: .*'x2'"):
        fit_model_dask(dd.from_pandas(df, npartitions=2), group="sex", label="label")
    empty = partitions(df.iloc[:0], df.iloc[:0])
    with pytest.raises(InputError, match="no rows"):
        fit_model_dask(empty, group="sex", label="label")


def test_a_partition_whose_read_raises_gives_its_error(client):
    df = frame(*sample(n=600))

    def unreadable():
        raise OSError("shard 2 is unreadable")

    parts = [dask.delayed(df.iloc[:300].copy)(), dask.delayed(unreadable)()]
    ddf = dd.from_delayed(parts, meta=df.iloc[:0], verify_meta=False)
    with pytest.raises(OSError, match="shard 2 is unreadable"):
        fit_model_dask(ddf, group="sex", label="label")


def test_steer_transform_weights_keep_partitions(client):
    X, y, g = sample(n=2000, seed=2)
    df = frame(X, y, g)
    model = fit_model(X, y.astype(np.int64), g, features=["x1", "x2", "x3"])
    maps = SteeringMaps.from_solution(model, solve(model))
    ddf = dd.from_pandas(df, npartitions=5)
    out = steer_dask(maps, ddf, group="sex", label="label", weight_column="w")
    assert out.divisions == ddf.divisions and out.npartitions == ddf.npartitions
    res = out.compute()
    assert list(res.columns) == [*df.columns, "w"]
    assert res.index.equals(df.index)
    # the per-partition map is the in-memory map applied to the same rows: identical
    assert np.array_equal(res[["x1", "x2", "x3"]].to_numpy(), maps.steer(X, y, g))
    assert np.array_equal(res.w.to_numpy(), maps.weights(y, g))
    # carried as they are (dask itself stores text columns as its string dtype)
    pd.testing.assert_frame_equal(
        res[["sex", "label", "note"]], df[["sex", "label", "note"]], check_dtype=False
    )
    soft = transform_dask(maps, ddf, group="sex").compute()
    assert np.array_equal(soft[["x1", "x2", "x3"]].to_numpy(), maps.transform(X, g))
    Xd = da.from_array(X, chunks=(300, 3))
    steered = steer_dask(maps, Xd, da.from_array(y, chunks=300), g)
    assert steered.chunks == Xd.chunks
    assert np.array_equal(steered.compute(), maps.steer(X, y, g))
    hard = transform_dask(maps, Xd, g, mode="hard", y_pred=y).compute()
    assert np.array_equal(hard, maps.transform(X, g, "hard", y))
    w = weights_dask(maps, da.from_array(y, chunks=300), g).compute()
    assert np.array_equal(w, maps.weights(y, g))
    assert np.array_equal(
        weights_dask(maps, ddf, group="sex", label="label").compute().to_numpy(), w
    )


def test_steered_dask_fit_is_the_ideal_model(client):
    """Steering is exact: the refit of the steered rows is the ideal model (THEORY 5)."""
    X, y, g = sample(n=3000, seed=4)
    Xd, yd = da.from_array(X, chunks=(400, 3)), da.from_array(y, chunks=400)
    model = fit_model_dask(Xd, yd, g)
    sol = solve(model)
    refit = fit_model_dask(steer_dask(SteeringMaps.from_solution(model, sol), Xd, yd, g), yd, g)
    assert np.allclose(refit.means, sol.ideal.means, rtol=1e-9)
    assert np.allclose(refit.covariances, sol.ideal.covariances, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------ command line


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_shards(tmp_path, kind, cuts=(0, 700, 701, 1500, 2400, 3000), n=3000, seed=5):
    X, y, g = sample(n=n, seed=seed, groups=("f", "m"), d=2)
    df = frame(X, y, g)
    whole = tmp_path / f"all.{kind}"
    shards = tmp_path / f"{kind}-shards"
    shards.mkdir()
    write = {"csv": lambda d, p: d.to_csv(p, index=False), "parquet": lambda d, p: d.to_parquet(p)}
    write[kind](df, whole)
    for k, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        write[kind](df.iloc[lo:hi].reset_index(drop=True), shards / f"part-{k:02d}.{kind}")
    return whole, shards, df


def read(path):
    return pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_parquet(path)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_sharded_fit_and_steer_equal_the_one_file_path(client, tmp_path, capsys, kind):
    whole, shards, _ = write_shards(tmp_path, kind)
    before = {p.name: digest(p) for p in shards.iterdir()}
    args = ["--group", "sex", "--label", "label", "--covariance", "shared"]
    assert run(capsys, "fit", whole, *args, "-o", tmp_path / "m0.json")[0] == 0
    dask_args = ["--engine", "dask", "--scheduler", client.scheduler.address]
    code, out, err = run(capsys, "fit", shards, *args, *dask_args, "-o", tmp_path / "m1.json")
    assert code == 0 and "in 5 shard(s)" in out, err
    from fairsteer import GaussianModel

    same_model(GaussianModel.load(tmp_path / "m1.json"), GaussianModel.load(tmp_path / "m0.json"))

    assert run(capsys, "steer", whole, *args, "-o", tmp_path / f"s0.{kind}")[0] == 0
    code, out, err = run(capsys, "steer", shards, *args, *dask_args, "-o", tmp_path / "out")
    assert code == 0, err
    names = sorted(p.name for p in shards.iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    ref = read(tmp_path / f"s0.{kind}")
    got = pd.concat([read(tmp_path / "out" / name) for name in names], ignore_index=True)
    assert list(got.columns) == list(ref.columns) == ["x1", "x2", "sex", "label", "note", "weight"]
    carried = ["sex", "label", "note"]
    assert got[carried].equals(ref[carried])  # CSV: the same text, Parquet: the same values
    num = ["x1", "x2"]
    assert np.allclose(got[num].astype(float), ref[num].astype(float), rtol=0, atol=STEER_ATOL)
    # weights depend on the cell's counts only: equal up to the round-off of a ratio
    assert np.allclose(got.weight.astype(float), ref.weight.astype(float), rtol=1e-14)
    if kind == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_schema(tmp_path / "out" / names[0]).equals(
            pq.read_schema(tmp_path / f"s0.{kind}")
        )
    assert {p.name: digest(p) for p in shards.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_local_engine_on_shards_with_an_empty_shard_and_a_missing_cell(tmp_path, capsys):
    # shard 1 is a header only; shard 0 holds a single group
    X, y, g = sample(n=800, seed=6, groups=("f", "m"), d=2)
    df = frame(X, y, g).sort_values("sex", kind="stable").reset_index(drop=True)
    shards = tmp_path / "in"
    shards.mkdir()
    n_f = int((df.sex == "f").sum())
    df.iloc[:n_f].to_csv(shards / "a.csv", index=False)
    df.iloc[:0].to_csv(shards / "b.csv", index=False)
    df.iloc[n_f:].to_csv(shards / "c.csv", index=False)
    df.to_csv(tmp_path / "all.csv", index=False)
    args = ["--group", "sex", "--label", "label"]
    assert run(capsys, "steer", tmp_path / "all.csv", *args, "-o", tmp_path / "s0.csv")[0] == 0
    code, _, err = run(capsys, "steer", f"{shards}/*.csv", *args, "-o", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "b.csv").read_text() == "x1,x2,sex,label,note,weight\n"
    got = pd.concat([read(tmp_path / "out" / f"{s}.csv") for s in "abc"], ignore_index=True)
    ref = read(tmp_path / "s0.csv")
    assert got[["sex", "label", "note"]].equals(ref[["sex", "label", "note"]])
    assert np.allclose(got[["x1", "x2"]].astype(float), ref[["x1", "x2"]].astype(float), atol=1e-9)


def test_bad_cell_in_a_shard_exits_2_and_leaves_nothing(client, tmp_path, capsys):
    _, shards, _ = write_shards(tmp_path, "csv")
    lines = (shards / "part-03.csv").read_text().splitlines()
    cells = lines[5].split(",")
    cells[1] = "oops"
    lines[5] = ",".join(cells)
    (shards / "part-03.csv").write_text("\n".join(lines) + "\n")
    before = {p.name: digest(p) for p in shards.iterdir()}
    dask_args = ["--engine", "dask", "--scheduler", client.scheduler.address]
    for cmd in ("fit", "steer"):
        out_path = tmp_path / ("m.json" if cmd == "fit" else "out")
        code, out, err = run(
            capsys, cmd, shards, "--group", "sex", "--label", "label", *dask_args, "-o", out_path
        )
        assert code == 2 and out == ""
        assert err.count("\n") == 1
        assert "part-03.csv" in err and "'x2'" in err and "row 5 (line 6)" in err
        assert not out_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "csv-shards"]
    assert {p.name: digest(p) for p in shards.iterdir()} == before


def test_unreadable_shard_exits_2_and_leaves_nothing(client, tmp_path, capsys):
    _, shards, _ = write_shards(tmp_path, "parquet")
    (shards / "part-04.parquet").write_bytes(b"PAR1 not really parquet")
    dask_args = ["--engine", "dask", "--scheduler", client.scheduler.address]
    code, _, err = run(
        capsys,
        "steer",
        shards,
        "--group",
        "sex",
        "--label",
        "label",
        *dask_args,
        "-o",
        tmp_path / "out",
    )
    assert code == 2 and err.count("\n") == 1 and "part-04.parquet" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet", "parquet-shards"]


def test_steer_failure_in_the_write_pass_removes_every_shard(tmp_path, capsys, monkeypatch):
    """A shard that changes between the fit and the steer pass: nothing half-written."""
    from fairsteer import shards as shards_module

    _, shards, _ = write_shards(tmp_path, "csv")
    real = shards_module.shard_steer

    def flaky(path, target, kind, plan, offset=0):
        if path.name == "part-02.csv":
            raise InputError(f"{path} changed while it was being read")
        return real(path, target, kind, plan, offset)

    monkeypatch.setattr(shards_module, "shard_steer", flaky)
    code, _, err = run(
        capsys, "steer", shards, "--group", "sex", "--label", "label", "-o", tmp_path / "out"
    )
    assert code == 2 and "part-02.csv changed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "csv-shards"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "need --engine dask"),
        (["--engine", "dask", "--workers", "0"], "at least 1"),
        (["--engine", "dask", "--workers", "1", "--scheduler", "tcp://x:1"], "not both"),
    ],
)
def test_engine_options_are_checked(tmp_path, capsys, extra, message):
    _, shards, _ = write_shards(tmp_path, "csv", cuts=(0, 10, 20), n=20)
    code, _, err = run(
        capsys, "fit", shards, "--group", "sex", "--label", "label", *extra, "-o", tmp_path / "m"
    )
    assert code == 2 and message in err


def test_output_directory_must_be_new(tmp_path, capsys):
    _, shards, _ = write_shards(tmp_path, "csv", cuts=(0, 200, 400), n=400)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for out in (taken, shards):
        code, _, err = run(capsys, "steer", shards, "--group", "sex", "--label", "label", "-o", out)
        assert code == 2 and "already exists" in err
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(shards)) == ["part-00.csv", "part-01.csv"]


def test_one_label_spelled_two_ways_across_shards_is_one_label(tmp_path, capsys):
    """CSV cells "1" and "1.0" are one class, in one file as across shards (first spelling)."""
    X, y, g = sample(n=600, seed=7, groups=("f", "m"), d=2)
    df = frame(X, y, g)
    text = df.astype({"label": str})
    spelled = text.copy()
    spelled.loc[300:, "label"] = spelled.loc[300:, "label"].map({"0": "0.0", "1": "1.0"})
    shards = tmp_path / "in"
    shards.mkdir()
    spelled.iloc[:300].to_csv(shards / "a.csv", index=False)
    spelled.iloc[300:].to_csv(shards / "b.csv", index=False)
    spelled.to_csv(tmp_path / "all.csv", index=False)
    args = ["--group", "sex", "--label", "label"]
    assert run(capsys, "fit", tmp_path / "all.csv", *args, "-o", tmp_path / "m0.json")[0] == 0
    assert run(capsys, "fit", shards, *args, "-o", tmp_path / "m1.json")[0] == 0
    from fairsteer import GaussianModel

    m0, m1 = (GaussianModel.load(tmp_path / f"m{k}.json") for k in (0, 1))
    assert m1.classes == m0.classes == ("0", "1")
    same_model(m1, m0)


def test_one_file_on_dask_equals_the_one_file_path(client, tmp_path, capsys):
    whole, _, _ = write_shards(tmp_path, "parquet", cuts=(0, 1000), n=1000)
    args = ["--group", "sex", "--label", "label"]
    assert run(capsys, "steer", whole, *args, "-o", tmp_path / "s0.csv")[0] == 0
    dask_args = ["--engine", "dask", "--scheduler", client.scheduler.address]
    code, out, err = run(capsys, "steer", whole, *args, *dask_args, "-o", tmp_path / "s1.csv")
    assert code == 0 and "-> " + str(tmp_path / "s1.csv") in out, err
    ref, got = read(tmp_path / "s0.csv"), read(tmp_path / "s1.csv")
    assert list(got.columns) == list(ref.columns)
    assert got[["sex", "label", "note", "weight"]].equals(ref[["sex", "label", "note", "weight"]])
    assert np.allclose(got[["x1", "x2"]].astype(float), ref[["x1", "x2"]].astype(float), atol=1e-9)


def test_a_dead_worker_becomes_one_line():
    from types import SimpleNamespace

    from distributed import KilledWorker

    from fairsteer.shards import _engine_errors

    with (
        pytest.raises(InputError, match=r"KilledWorker.*a worker died.*more memory"),
        _engine_errors(),
    ):
        raise KilledWorker("shard_partial-123", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
    # a bug stays a bug, with its traceback
    with pytest.raises(ZeroDivisionError), _engine_errors():
        raise ZeroDivisionError


def test_the_command_in_a_fresh_process_reaches_the_cluster(client, tmp_path):
    """The real command (no client of its own but the one it opens) against a scheduler address."""
    import subprocess
    import sys

    _, shards, _ = write_shards(tmp_path, "parquet", cuts=(0, 400, 800, 1200), n=1200)
    argv = [sys.executable, "-m", "fairsteer", "steer", str(shards), "--group", "sex"]
    argv += ["--label", "label", "--engine", "dask", "--scheduler", client.scheduler.address]
    res = subprocess.run([*argv, "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "steered 1200 rows" in res.stdout and "3 shard(s)" in res.stdout
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(shards))


def test_sharded_steer_artifacts_sit_beside_the_output_directory(tmp_path, capsys):
    _, shards, _ = write_shards(tmp_path, "csv", cuts=(0, 300, 600), n=600)
    args = ["--group", "sex", "--label", "label"]
    code, out, err = run(capsys, "steer", shards, *args, "--artifacts", "-o", tmp_path / "out")
    assert code == 0, err
    assert run(capsys, "fit", shards, *args, "-o", tmp_path / "m.json")[0] == 0
    from fairsteer import GaussianModel, Solution

    same_model(
        GaussianModel.load(tmp_path / "out.model.json"), GaussianModel.load(tmp_path / "m.json")
    )
    sol = Solution.load(tmp_path / "out.solution.json")
    assert f"KL = {sol.kl:.6g}" in out
    audit = json.loads((tmp_path / "out.audit.json").read_text())
    assert set(audit) == {"before", "after"}
