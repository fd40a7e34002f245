"""Families with parameters on shards and on Dask (issue 14): an extra pass fits them.

The sharded command line (local engine and a real LocalCluster of processes)
and the Dask library fit the families on a seeded bottom-k sample of the rows
(fairsteer.sampling), then accumulate the statistics on the Gaussian scale.
With no more rows than the sample size they must equal the one-file command
and the in-memory fit_model; with more rows the fitted families must not
depend on how the rows are split into shards or partitions.
"""

import itertools
import json
import logging

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from fairsteer import GaussianModel, fit_model  # noqa: E402
from fairsteer.cli import main  # noqa: E402
from fairsteer.dask import fit_model_dask  # noqa: E402
from fairsteer.errors import InputError  # noqa: E402
from fairsteer.families import Families  # noqa: E402
from fairsteer.solve import Solution  # noqa: E402

# Model moments: the same rows on the same (bitwise equal) transforms, summed
# in another order (chunk and shard merges, Chan's update): each merge adds a
# few eps (2.2e-16) relative, at most ~n eps ~ 1e-12 over 2400 rows; 1e-10
# leaves a 100-fold margin while one lost row would move a mean by ~1/n ~ 4e-4.
RTOL = 1e-10
# Steered values with --covariance shared and the affirmative method: the maps
# are closed-form functions of the model (no iterative solve), so model
# round-off of ~1e-12 relative reaches the steered values (of size <= ~100
# here, through the inverse transforms whose slopes are <= ~1e2 on the data)
# as <= ~1e-8; measured ~1e-13. A wrong sample or transform moves values by
# O(0.1).
STEER_ATOL = 1e-8


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


def table(n=2400, seed=0):
    """Two skewed positive features, one count column, groups f/m, classes 0/1, a text column."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n, p=[0.35, 0.65])
    y = rng.integers(0, 2, n)
    male = (g == "m").astype(float)
    x1 = np.exp(rng.normal(0.4 * y + 0.3 * male, 0.6, n))
    x2 = rng.gamma(2.0 + y + male, 1.5, n)
    k = rng.poisson(2.0 + y + 2 * male, n)
    df = pd.DataFrame({"x1": x1, "x2": x2, "k": k, "sex": g, "label": y})
    df["note"] = [f"row {r}" for r in range(n)]
    return df


def write(df, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)


def shards_of(df, folder, cuts, kind):
    folder.mkdir()
    for k, (lo, hi) in enumerate(itertools.pairwise([0, *cuts, len(df)])):
        write(df.iloc[lo:hi].reset_index(drop=True), folder / f"part-{k:02d}.{kind}")
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def read(path):
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def read_shards(folder):
    return pd.concat([read(p) for p in sorted(folder.iterdir())], ignore_index=True)


def close(a, b):
    """Equal to RTOL of each entry, or of the largest entry (near-zero covariances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.abs(b).max())


def same_model_json(a, b, classes=True):
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["family"] == jb["family"]  # the fitted transforms: bitwise the same parameters
    for key in ("covariance", "features", "groups", "classes")[: 4 if classes else 3]:
        assert ja[key] == jb[key]
    for key in ("priors", "means", "covariances"):
        close(ja[key], jb[key])


BASE = ["--group", "sex", "--label", "label", "--features", "x1", "x2", "k"]

CASES = [
    # family, file kind, engine, extra options
    (["auto"], "csv", "dask", ["--dequantize", "k"]),
    (["normal-scores-by-group"], "parquet", "local", ["--dequantize", "k"]),
    (["yeo-johnson-by-group"], "csv", "local", ["--dequantize", "k", "--round-dequantized"]),
    (["x1=yeo-johnson", "x2=normal-scores", "k=log1p"], "parquet", "dask", []),
    # no family to fit, but --dequantize needs every row's index in the table
    (["normal"], "csv", "local", ["--dequantize", "k"]),
    (["x1=log", "x2=log1p"], "csv", "dask", ["--dequantize", "k"]),
]


@pytest.mark.parametrize(("family", "kind", "engine", "extra"), CASES)
def test_sharded_fit_and_steer_with_families_equal_the_one_file_path(
    client, tmp_path, capsys, family, kind, engine, extra
):
    df = table()
    whole = tmp_path / f"all.{kind}"
    write(df, whole)
    shards = shards_of(df, tmp_path / "shards", [500, 501, 1300, 2000], kind)
    eng = ["--engine", "dask", "--scheduler", client.scheduler.address] if engine == "dask" else []
    opts = [*BASE, "--family", *family, "--seed", "3", "--covariance", "shared", *extra]
    assert run(capsys, "steer", whole, *opts, "--artifacts", "-o", tmp_path / f"s0.{kind}")[0] == 0
    code, out, err = run(
        capsys, "steer", shards, *opts, *eng, "--artifacts", "-o", tmp_path / "out"
    )
    assert code == 0, err
    assert "2400 rows" in out and "5 shard(s)" in out
    same_model_json(tmp_path / "s0.model.json", tmp_path / "out.model.json")
    ref, got = read(tmp_path / f"s0.{kind}"), read_shards(tmp_path / "out")
    assert list(got.columns) == list(ref.columns)
    assert got[["sex", "label", "note"]].equals(ref[["sex", "label", "note"]])
    num = ["x1", "x2", "k"]
    np.testing.assert_allclose(got[num], ref[num], rtol=0, atol=STEER_ATOL)
    np.testing.assert_allclose(got.weight, ref.weight, rtol=1e-14)  # a ratio of counts
    if "--round-dequantized" in extra:
        assert (got.k == np.floor(got.k)).all()
    # The fit command (no --seed: seed 0) agrees too.
    fit_opts = [*BASE, "--family", *family, *(e for e in extra if e != "--round-dequantized")]
    assert run(capsys, "fit", whole, *fit_opts, "-o", tmp_path / "m0.json")[0] == 0
    code, _, err = run(capsys, "fit", shards, *fit_opts, *eng, "-o", tmp_path / "m1.json")
    assert code == 0, err
    same_model_json(tmp_path / "m0.json", tmp_path / "m1.json")


def test_more_rows_than_the_sample_the_split_does_not_matter(client, tmp_path, capsys):
    df = table(n=3000, seed=1)
    write(df, tmp_path / "all.csv")
    a = shards_of(df, tmp_path / "a", [1000, 2000], "csv")
    b = shards_of(df, tmp_path / "b", [7, 1500, 1501, 2999], "parquet")
    opts = [*BASE, "--family", "auto-by-group", "--dequantize", "k", "--family-sample", "400"]
    eng = ["--engine", "dask", "--scheduler", client.scheduler.address]
    assert run(capsys, "fit", tmp_path / "all.csv", *opts, "-o", tmp_path / "m0.json")[0] == 0
    assert run(capsys, "fit", a, *opts, "-o", tmp_path / "m1.json")[0] == 0
    assert run(capsys, "fit", b, *opts, *eng, "-o", tmp_path / "m2.json")[0] == 0
    same_model_json(tmp_path / "m0.json", tmp_path / "m1.json")
    # (Parquet keeps the labels' integer type, CSV gives their text: same order.)
    same_model_json(tmp_path / "m0.json", tmp_path / "m2.json", classes=False)
    # The cap took effect: the whole table gives other transforms.
    opts_all = [*opts[:-2], "--family-sample", "3000"]
    assert run(capsys, "fit", a, *opts_all, "-o", tmp_path / "m3.json")[0] == 0
    capped = GaussianModel.load(tmp_path / "m1.json")
    assert capped.family != GaussianModel.load(tmp_path / "m3.json").family
    # The statistics still come from every row: those of fit_model with the
    # sampled transforms, on the dequantised table.
    from fairsteer.families import dequantize

    X = dequantize(df[["x1", "x2", "k"]].to_numpy(float), [2], seed=0)
    lib = fit_model(X, df.label, df.sex, family=capped.family, group_labels=("f", "m"))
    close(capped.means, lib.means)
    close(capped.covariances, lib.covariances)


def test_steered_shards_refit_with_the_fitted_transforms_are_ideal(client, tmp_path, capsys):
    """THEORY 9: the steered sample on the fitted transforms' scale is the ideal model."""
    df = table(seed=2)
    shards = shards_of(df, tmp_path / "in", [800, 1600], "parquet")
    eng = ["--engine", "dask", "--scheduler", client.scheduler.address]
    opts = [*BASE, "--family", "normal-scores-by-group", "--dequantize", "k", "--family-sample"]
    code, _, err = run(
        capsys, "steer", shards, *opts, "900", *eng, "--artifacts", "-o", tmp_path / "o"
    )
    assert code == 0, err
    model = GaussianModel.load(tmp_path / "o.model.json")
    sol = Solution.load(tmp_path / "o.solution.json")
    got = read_shards(tmp_path / "o")
    refit = fit_model(
        got[["x1", "x2", "k"]].to_numpy(float),
        got.label,
        got.sex,
        family=model.family,
        group_labels=model.groups,
    )
    # The ideal model is reached to the solver's precision (gtol 1e-7 on a
    # well-conditioned problem gives ~1e-9 in the moments) plus round-off.
    np.testing.assert_allclose(refit.means, sol.ideal.means, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(refit.covariances, sol.ideal.covariances, rtol=1e-7, atol=1e-7)


# ----------------------------------------------------------------- library


@pytest.mark.parametrize(
    "family", ["auto", "yeo-johnson-by-group", ["log", "normal-scores", "log1p"]]
)
def test_dask_fit_with_families_equals_fit_model(client, family):
    df = table(n=2000, seed=3)
    X, y, g = df[["x1", "x2", "k"]].to_numpy(float), df.label.to_numpy(), df.sex.to_numpy()
    names = ["x1", "x2", "k"]
    ref = fit_model(X, y, g, family=family, features=names)
    ddf = dd.from_pandas(df, npartitions=5)
    got = fit_model_dask(ddf, group="sex", label="label", features=names, family=family)
    arr = fit_model_dask(
        da.from_array(X, chunks=(300, 3)), y, g, features=names, family=family, split_every=2
    )
    for m in (got, arr):
        assert m.family == ref.family and m.groups == ref.groups
        close(m.means, ref.means)
        close(m.covariances, ref.covariances)


def test_dask_steer_with_families_equals_the_in_memory_steer(client):
    from fairsteer import SteeringMaps, solve
    from fairsteer.dask import steer_dask

    df = table(n=2000, seed=8)
    names = ["x1", "x2", "k"]
    X, y, g = df[names].to_numpy(float), df.label.to_numpy(), df.sex.to_numpy()
    kw = dict(family="auto-by-group", covariance="shared", features=names)
    ref = fit_model(X, y, g, **kw)
    ref_steered = SteeringMaps.from_solution(ref, solve(ref)).steer(X, y, g)
    ddf = dd.from_pandas(df, npartitions=4)
    model = fit_model_dask(ddf, group="sex", label="label", **kw)
    assert model.family == ref.family
    maps = SteeringMaps.from_solution(model, solve(model))
    got = steer_dask(maps, ddf, group="sex", label="label").compute()
    assert list(got.columns) == list(df.columns)
    np.testing.assert_allclose(got[names].to_numpy(), ref_steered, rtol=0, atol=STEER_ATOL)


def test_dask_sample_does_not_depend_on_the_partitions(client):
    df = table(n=2000, seed=4)
    X, y, g = df[["x1", "x2", "k"]].to_numpy(float), df.label.to_numpy(), df.sex.to_numpy()
    kw = dict(family="normal-scores-by-group", family_sample=300, seed=11)
    models = [
        fit_model_dask(dd.from_pandas(df, npartitions=p), group="sex", label="label", **kw)
        for p in (1, 3, 8)
    ]
    models.append(fit_model_dask(da.from_array(X, chunks=(170, 3)), y, g, **kw))
    for m in models[1:]:
        assert m.family == models[0].family
        close(m.means, models[0].means)
    # The cap took effect: all 2000 rows (the default cap) give other transforms.
    whole = fit_model_dask(
        dd.from_pandas(df, npartitions=3), group="sex", label="label", family=kw["family"]
    )
    assert models[0].family != whole.family
    # Unknown chunk sizes: the rows are counted in a first pass.
    Xu = da.from_array(X, chunks=(170, 3))[da.from_array(np.ones(len(X), bool), chunks=170)]
    yu = da.from_array(y, chunks=170)[da.from_array(np.ones(len(X), bool), chunks=170)]
    gu = da.from_array(g, chunks=170)[da.from_array(np.ones(len(X), bool), chunks=170)]
    assert np.isnan(Xu.shape[0])
    unknown = fit_model_dask(Xu, yu, gu, **kw)
    assert unknown.family == models[0].family


def test_dask_family_errors(client):
    df = table(n=600, seed=5)
    df.loc[437, "x2"] = np.nan
    ddf = dd.from_pandas(df, npartitions=3)
    with pytest.raises(InputError, match=r"partition 2: X column 'x2' holds nan at row 37"):
        fit_model_dask(ddf, group="sex", label="label", family="auto", features=["x1", "x2"])
    with pytest.raises(InputError, match="sample size must be a whole number >= 2"):
        fit_model_dask(ddf, group="sex", label="label", family="auto", family_sample=1)
    X = table(n=400)[["x1", "x2"]].to_numpy()
    g = np.repeat(["f", "m"], 200)
    fitted = Families("yeo-johnson-by-group", 2).fit(X, (g == "m").astype(np.intp), 2)
    with pytest.raises(InputError, match="needs group_labels"):
        fit_model_dask(da.from_array(X, chunks=100), np.arange(400) % 2, g, family=fitted)
    m = fit_model_dask(
        da.from_array(X, chunks=100), np.arange(400) % 2, g, family=fitted, group_labels=("f", "m")
    )
    ref = fit_model(X, np.arange(400) % 2, g, family=fitted, group_labels=("f", "m"))
    close(m.means, ref.means)


# ----------------------------------------------------------------- errors


def test_command_line_family_errors_exit_2_and_leave_nothing(tmp_path, capsys):
    df = table(n=900, seed=6)
    shards = shards_of(df, tmp_path / "in", [300, 600], "csv")
    # a non-integer count in the last shard: the sample pass finds it, nothing written
    text = (shards / "part-02.csv").read_text().splitlines()
    head = text[0].split(",")
    cells = text[5].split(",")
    cells[head.index("k")] = "2.5"
    text[5] = ",".join(cells)
    (shards / "part-02.csv").write_text("\n".join(text) + "\n")
    opts = [*BASE, "--family", "auto"]
    for extra, message in (
        (["--dequantize", "k"], "shard part-02.csv: --dequantize column 'k' holds a non-integer"),
        (["--family-sample", "1"], "sample size must be a whole number >= 2"),
        (["--round-dequantized"], "--round-dequantized floors the --dequantize columns"),
    ):
        code, _, err = run(capsys, "steer", shards, *opts, *extra, "-o", tmp_path / "out")
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    code, _, err = run(capsys, "fit", shards / "part-00.csv", *opts, "--family-sample", "0",
                       "-o", tmp_path / "m.json")  # fmt: skip
    assert code == 2 and "sample size must be a whole number >= 2" in err


def test_context_on_shards_is_refused_in_one_line(tmp_path, capsys):
    df = table(n=300, seed=7)
    df["level"] = np.where(df.k % 2 == 0, "even", "odd")
    shards = shards_of(df, tmp_path / "in", [150], "csv")
    for cmd in ("fit", "steer"):
        code, _, err = run(capsys, cmd, shards, *BASE, "--context", "level", "-o", tmp_path / "o")
        assert code == 2 and err.count("\n") == 1
        assert "--context reads one table into memory; it does not take shards" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
