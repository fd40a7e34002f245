"""Transform families (THEORY 9): bijections, fits against scipy, JSON, exactness, auto, errors."""

import json

import numpy as np
import pytest
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_h
from scipy.special import ndtr, ndtri

from fairsteer.audit import audit
from fairsteer.cli import main
from fairsteer.errors import InputError
from fairsteer.families import (
    MAX_KNOTS,
    Families,
    NormalScores,
    YeoJohnson,
    choose_family,
    dequantize,
    integer_columns,
)
from fairsteer.fit import Fitter, fit_model
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.solve import solve

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # seeded: the same columns on every run
    suppress_health_check=[HealthCheck.too_slow],
)

FITTED = ("yeo-johnson", "normal-scores")
EVERY = ("normal", "lognormal", "log1p", *FITTED, *(f"{f}-by-group" for f in FITTED))


def column(kind, magnitude, n, rng):
    """A column of n values: shape ``kind`` times 10**magnitude (positive for log families)."""
    if kind == "normal":
        x = rng.normal(size=n)
    elif kind == "lognormal":
        x = rng.lognormal(sigma=1.5, size=n)
    elif kind == "cauchy":  # heavy tails: values ~1e3 times the scale
        x = rng.standard_cauchy(size=n)
    elif kind == "ties":  # few distinct values, each many times
        x = rng.integers(-3, 4, size=n).astype(float)
    else:  # "stretch": half the values equal, the rest spread
        x = np.where(rng.random(n) < 0.5, 1.0, rng.normal(size=n))
    return x * 10.0**magnitude


def domain_shift(name, x):
    """Move a column into a family's domain (positive values for lognormal, > -1 for log1p)."""
    if name == "lognormal":
        return np.abs(x) + np.abs(x).max() * 1e-3 + 1e-300
    if name == "log1p":
        return np.abs(x)
    return x


columns = st_h.tuples(
    st_h.sampled_from(EVERY),
    st_h.sampled_from(("normal", "lognormal", "cauchy", "ties", "stretch")),
    st_h.sampled_from((-8, 0, 8)),
    st_h.integers(0, 2**31 - 1),
)


@SETTINGS
@given(columns)
def test_round_trip_and_strict_monotonicity(case):
    name, kind, magnitude, seed = case
    rng = np.random.default_rng(seed)
    n = 400
    x = domain_shift(name, column(kind, magnitude, n, rng))
    g = rng.integers(0, 2, n)
    fam = Families(name, 1).fit(x[:, None], g, 2)
    scale = float(np.max(np.abs(x)))
    # Points inside and far beyond the fitted range (the tails), kept in the domain.
    grid = np.concatenate(
        [
            x,
            np.linspace(x.min(), x.max(), 200),
            x.min() - scale * np.arange(1, 4),
            x.max() + scale * np.arange(1, 4),
        ]
    )
    grid = domain_shift(name, grid) if name in ("lognormal", "log1p") else grid
    for a in (0, 1):
        codes = np.full(grid.size, a)
        z = fam.forward(grid[:, None], codes)[:, 0]
        assert np.all(np.isfinite(z))
        back = fam.inverse(z[:, None], codes)[:, 0]
        # Each transform is a few elementary functions (log, exp, powers, one
        # interpolation), each within a few ulps; composed and inverted, the
        # relative error is ~1e-15 times the condition number, which is at most
        # ~1e3 for these columns (log of 1e-8-sized values, tails 3 ranges out).
        # 1e-9 of the column's scale leaves a wide margin and still fails any
        # wrong inverse, which errs by the column's own size.
        np.testing.assert_allclose(back, grid, rtol=1e-9, atol=1e-9 * scale)
        # Strictly increasing: on distinct points at least 1e-6 of the scale
        # apart, z must strictly increase (the transforms' slopes are bounded
        # below on the grid, so such gaps cannot round to equality).
        order = np.argsort(grid)
        gs, zs = grid[order], z[order]
        apart = np.diff(gs) > 1e-6 * scale
        assert np.all(np.diff(zs)[apart] > 0)
        assert np.all(np.diff(zs) >= 0)
        # and the inverse of sorted Gaussian-scale values is sorted
        zz = np.sort(np.concatenate([z, np.linspace(-12, 12, 50)]))
        zz = zz[(zz > -700) & (zz < 700)] if name == "lognormal" else zz
        xx = fam.inverse(zz[:, None], np.full(zz.size, a))[:, 0]
        assert np.all(np.diff(xx) >= 0)


def test_log_jacobian_matches_numerical_derivative():
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=500)
    g = rng.integers(0, 2, 500)
    points = np.linspace(0.2, 30.0, 97)  # inside and beyond the sample's range
    for name in EVERY:
        fam = Families(name, 1).fit(x[:, None], g, 2)
        for a in (0, 1):
            codes = np.full(points.size, a)
            h = 1e-6
            num = (
                fam.forward((points + h)[:, None], codes)
                - fam.forward((points - h)[:, None], codes)
            )[:, 0] / (2 * h)
            lj = fam.log_jacobian(points[:, None], codes)
            # Central difference: error ~h^2 f''' (1e-12) plus round-off
            # eps |f| / h (~1e-9 relative); normal-scores is piecewise linear, so
            # points within h of a knot see a mix of two slopes: compare away
            # from knots only.
            keep = np.ones(points.size, bool)
            if "normal-scores" in name:
                knots = np.asarray(
                    fam.members[0].params()["groups"][a]["x"]
                    if "by-group" in name
                    else fam.members[0].params()["x"]
                )
                keep = np.min(np.abs(points[:, None] - knots[None, :]), axis=1) > 2 * h
            np.testing.assert_allclose(lj[keep], np.log(num[keep]), rtol=0, atol=1e-6)


def test_yeo_johnson_against_scipy():
    rng = np.random.default_rng(0)
    samples = (rng.normal(2, 1, 800), rng.normal(0, 1, 800) ** 3, 5 - rng.gamma(3, size=800))
    for sample in samples:
        fam = YeoJohnson().fit(sample)
        p = fam.params()
        u = sample / p["scale"]
        assert p["scale"] == pytest.approx(np.sqrt(np.mean(sample**2)), rel=1e-15)
        ref = st.yeojohnson_normmax(u)
        assert 0.05 < ref < 1.95  # inside the range, so the MLEs must agree
        # Both maximise the same smooth profile log-likelihood with Brent's
        # method to ~1e-8 in lambda; 1e-6 leaves room for the flat top.
        assert p["lambda"] == pytest.approx(ref, abs=1e-6)
        np.testing.assert_allclose(
            fam.forward(sample), st.yeojohnson(u, p["lambda"]), rtol=1e-12, atol=1e-14
        )
    # A sample whose unconstrained MLE is negative: lambda is the constrained
    # maximum on [0, 2], checked by brute force with scipy's log-likelihood.
    skewed = rng.lognormal(0, 1.2, 800)
    fam = YeoJohnson().fit(skewed)
    u = skewed / fam.params()["scale"]
    assert st.yeojohnson_normmax(u) < 0
    grid = np.linspace(0, 2, 2001)
    best = grid[np.argmax([st.yeojohnson_llf(lam, u) for lam in grid])]
    assert fam.params()["lambda"] == pytest.approx(best, abs=1e-3)  # the grid step


def test_normal_scores_tails_are_linear_and_sample_is_standard_normal():
    rng = np.random.default_rng(1)
    n = 2000
    x = rng.gamma(2.0, size=n)
    fam = NormalScores().fit(x)
    p = fam.params()
    xk, zk = np.asarray(p["x"]), np.asarray(p["z"])
    assert xk.size == int(np.ceil(np.sqrt(n)))  # knot_count: ~sqrt(n) knots
    # Knots are sample values with their exact mid-rank normal scores.
    ranks = np.searchsorted(np.sort(x), xk) + 1
    np.testing.assert_allclose(zk, ndtri((ranks - 0.5) / n), rtol=1e-12)
    np.testing.assert_allclose(fam.forward(xk), zk, rtol=0, atol=1e-12)
    # The transformed sample is N(0, 1) up to the knots' level spacing: the
    # empirical CDF of forward(x) is exact at every knot (to 1/2n) and monotone
    # between, so its Kolmogorov distance to Phi is at most the largest level
    # gap between adjacent knots plus 1/(2n).
    zs = np.sort(fam.forward(x))
    ecdf_hi = np.arange(1, n + 1) / n
    ks = max(np.max(ecdf_hi - ndtr(zs)), np.max(ndtr(zs) - (ecdf_hi - 1 / n)))
    assert ks <= np.max(np.diff(ndtr(zk))) + 1 / (2 * n)
    # Linear tails: equally spaced points beyond the range map to equally
    # spaced values (second differences vanish to round-off of values ~10).
    for ends in (xk[0] - np.arange(0, 50) * 0.7, xk[-1] + np.arange(0, 50) * 0.7):
        np.testing.assert_allclose(np.diff(fam.forward(ends), 2), 0, atol=1e-12)
    # A bounded number of knots however large the sample.
    big = NormalScores().fit(rng.normal(size=1_100_000))
    assert len(big.params()["x"]) == MAX_KNOTS


def test_normal_scores_ties_share_a_knot():
    x = np.repeat([0.0, 1.0, 5.0], [50, 30, 20])
    p = NormalScores().fit(x).params()
    assert p["x"] == [0.0, 1.0, 5.0]
    np.testing.assert_allclose(p["z"], ndtri([25 / 100, 65 / 100, 90 / 100]), rtol=1e-12)


def test_json_round_trip_of_every_family():
    rng = np.random.default_rng(2)
    n = 600
    X = rng.lognormal(size=(n, len(EVERY) + 1))
    y, g = rng.integers(0, 2, n), rng.integers(0, 3, n)
    names = [f"f{j}" for j in range(X.shape[1])]
    model = fit_model(X, y, g, family=[*EVERY, "auto"], features=names)
    assert "auto" not in model.family.names  # the fitted choice is recorded
    text = model.to_json()
    back = GaussianModel.from_json(text)
    assert back.family == model.family
    codes = g
    np.testing.assert_array_equal(
        back.to_gaussian_scale(X, codes), model.to_gaussian_scale(X, codes)
    )
    assert json.loads(text)["family"] == json.loads(back.to_json())["family"]
    for member in model.family.members:
        again = Families.from_json(json.loads(json.dumps([member.to_json()])), 1)
        assert again.members[0] == member


def biased(n, seed, positive=True):
    """Two groups, two classes, d = 2, group and class shift the law (log-normal if positive)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    y = (rng.random(n) < np.where(g == 1, 0.6, 0.35)).astype(int)
    Z = rng.normal(size=(n, 2)) * np.where(g == 1, 0.6, 1.0)[:, None]
    Z += y[:, None] * np.array([0.8, -0.5]) + g[:, None] * np.array([0.4, 0.3])
    Z[:, 1] += 0.3 * Z[:, 0]
    return (np.exp(Z) if positive else Z), y, g


@pytest.mark.parametrize(
    "family", [*EVERY, "auto", "auto-by-group", ["x0=log1p", "x1=normal-scores"]]
)
@pytest.mark.parametrize("method", ["affirmative", "all-subgroups"])
def test_steered_sample_refitted_with_the_same_transforms_is_ideal(family, method):
    X, y, g = biased(1500, 4)
    names = ["x0", "x1"]
    model = fit_model(X, y, g, family=family, features=names)
    sol = solve(model, method)
    maps = SteeringMaps.from_solution(model, sol)
    steered = maps.steer(X, y, g)
    refit = fit_model(steered, y, g, family=model.family, features=names)
    # On the Gaussian scale the steered rows are the OT images of the fitted
    # cells, so the refit has the ideal moments up to the round trip
    # forward(inverse(z)) (~1e-13 relative, see the round-trip test) and d x d
    # products: 1e-9 absolute on moments of order 1.
    np.testing.assert_allclose(refit.means, sol.ideal.means, atol=1e-9)
    np.testing.assert_allclose(refit.covariances, sol.ideal.covariances, atol=1e-9)
    weighted = refit.with_params(sol.ideal.priors, refit.means, refit.covariances)
    assert audit(weighted, n_samples=20_000).is_ideal
    np.testing.assert_allclose(maps.inverse(steered, y, g), X, rtol=1e-9)


def test_kl_is_invariant_to_group_dependent_transforms():
    Z, y, g = biased(1200, 5, positive=False)
    plain = fit_model(Z, y, g, family="normal")
    rng = np.random.default_rng(6)
    # Group-dependent affine maps x = alpha_a z + beta_a as two-knot normal
    # scores per group (a two-knot transform is affine, tails included) ...
    knots = [{"x": [b, b + a], "z": [0.0, 1.0]} for a, b in rng.uniform([0.1, -5], [10, 5], (2, 2))]
    affine = NormalScores(True, knots)
    X = affine.inverse(Z.ravel(order="F"), np.tile(g, 2)).reshape(Z.shape, order="F")
    mapped = fit_model(X, y, g, family=[affine, affine])
    # ... and non-linear ones: Yeo-Johnson per group with lambda away from 1.
    yj = YeoJohnson(True, [{"lambda": 0.3, "scale": 2.0}, {"lambda": 1.7, "scale": 0.5}])
    W = yj.inverse(Z.ravel(order="F"), np.tile(g, 2)).reshape(Z.shape, order="F")
    curved = fit_model(W, y, g, family=[yj, yj])
    for model in (mapped, curved):
        # Same Gaussian-scale data up to the round trip (1e-13 relative).
        np.testing.assert_allclose(model.means, plain.means, atol=1e-10)
        for method in ("affirmative", "all-subgroups"):
            assert solve(model, method).kl == pytest.approx(solve(plain, method).kl, rel=1e-7)


def test_auto_picks_log_for_lognormal_and_normal_for_normal_data():
    Z, y, g = biased(4000, 7, positive=False)
    for data, expected in ((np.exp(Z[:, 0]), "lognormal"), (Z[:, 0] + 10.0, "normal")):
        fam, scores = choose_family(data, y, g, 2, seed=0)
        assert fam.name == expected, scores
    model = fit_model(np.exp(Z), y, g, family="auto")
    assert model.family.names == ("lognormal", "lognormal")
    assert json.loads(model.to_json())["family"] == "lognormal"


def test_per_group_families_need_group_codes():
    X, y, g = biased(400, 8)
    model = fit_model(X, y, g, family="yeo-johnson-by-group")
    with pytest.raises(InputError, match="fitted per group"):
        model.family.forward(X)
    with pytest.raises(InputError, match="group_labels"):
        Fitter(family=model.family).update(X, y, g)
    stats_fit = Fitter(family=model.family, group_labels=[0, 1]).update(X, y, g).model()
    np.testing.assert_allclose(stats_fit.means, model.means, rtol=1e-13)
    with pytest.raises(InputError, match="fitted on 2 groups but the model has 3"):
        GaussianModel(
            np.full((3, 2), 1 / 6),
            np.zeros((3, 2, 2)),
            np.tile(np.eye(2), (3, 2, 1, 1)),
            family=model.family,
        )


def test_unknown_and_malformed_families():
    with pytest.raises(InputError, match=r"family must be one of .*, got 'gauss'"):
        Families("gauss", 2)
    with pytest.raises(InputError, match="no parameters, so it cannot be fitted per group"):
        Families("lognormal-by-group", 2)
    with pytest.raises(InputError, match="not a feature"):
        Families(["age=log"], 2, ["x", "y"])
    with pytest.raises(InputError, match="not a mix"):
        Families(["age=log", "normal"], 2, ["age", "y"])
    with pytest.raises(InputError, match="lambda must lie in"):
        Families({"name": "yeo-johnson", "lambda": -1.0, "scale": 1.0}, 1)
    with pytest.raises(InputError, match="strictly increasing"):
        Families({"name": "normal-scores", "x": [0, 0], "z": [0, 1]}, 1)
    with pytest.raises(InputError, match="distinct values"):
        fit_model(
            np.c_[np.ones(20), np.arange(20.0)],
            np.arange(20) % 2,
            np.zeros(20),
            family="normal-scores",
        )
    fam = Families(["age=log", "income=yeo-johnson"], 3, ["age", "x", "income"])
    assert fam.names == ("lognormal", "normal", "yeo-johnson")


def test_dequantize_is_seeded_and_floor_recovers_integers():
    rng = np.random.default_rng(9)
    X = np.c_[rng.integers(0, 5, 100), rng.normal(size=100), rng.integers(-3, 3, 100)].astype(float)
    assert integer_columns(X) == [0, 2]
    D = dequantize(X, seed=1)
    np.testing.assert_array_equal(D, dequantize(X, seed=1))
    assert np.any(dequantize(X, seed=2) != D)
    # Chunked (first_row = the chunk's first row) equals all at once.
    parts = [dequantize(X[s : s + 30], seed=1, first_row=s) for s in range(0, 100, 30)]
    np.testing.assert_array_equal(np.concatenate(parts), D)
    # The noise is uniform on [0, 1): Kolmogorov-Smirnov on 20,000 values
    # (p > 0.001 fails a correct generator one time in a thousand; fixed seed).
    U = dequantize(np.zeros((10_000, 2)), seed=3)
    assert st.kstest(U.ravel(), "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(U[:-1, 0], U[1:, 0])[0, 1]) < 4 / np.sqrt(10_000)  # 4 sd
    np.testing.assert_array_equal(np.floor(D[:, [0, 2]]), X[:, [0, 2]])
    np.testing.assert_array_equal(D[:, 1], X[:, 1])
    assert np.all(D[:, [0, 2]] != X[:, [0, 2]])  # U = 0 has probability 2^-53 per value


def write_csv(path, X, y, g, bad=None):
    rows = ["x0,x1,grp,lab"] + [
        f"{float(X[k, 0])!r},{float(X[k, 1])!r},{g[k]},{y[k]}" for k in range(len(y))
    ]
    if bad is not None:
        rows[bad + 1] = f"-3.0,{float(X[bad, 1])!r},{g[bad]},{y[bad]}"
    path.write_text("\n".join(rows) + "\n")


def test_cli_streamed_fit_matches_the_library_fit(tmp_path, capsys, monkeypatch):
    import fairsteer.io

    monkeypatch.setattr(fairsteer.io, "CHUNK_ROWS", 150)  # several chunks
    X, y, g = biased(900, 10)
    write_csv(tmp_path / "d.csv", X, y, g)
    args = [
        "fit",
        str(tmp_path / "d.csv"),
        "--group",
        "grp",
        "--label",
        "lab",
        "-o",
        str(tmp_path / "m.json"),
        "--family",
    ]
    assert main([*args, "auto"]) == 0
    cli = GaussianModel.load(tmp_path / "m.json")
    lib = fit_model(X, y, g, family="auto", features=["x0", "x1"])
    assert cli.family == lib.family
    # The CSV holds repr() of every float: the same rows, so the same moments
    # up to the order of summation (chunked merges): 1e-12 relative.
    np.testing.assert_allclose(cli.means, lib.means, rtol=1e-12)
    assert main([*args, "x0=log", "x1=normal-scores-by-group"]) == 0
    cli = GaussianModel.load(tmp_path / "m.json")
    assert cli.family.names == ("lognormal", "normal-scores")
    # A table larger than the reservoir: the transforms come from a sample, the
    # statistics from every row (those of a one-shot fit with that family).
    monkeypatch.setattr("fairsteer.table_args.RESERVOIR_ROWS", 200)
    assert main([*args, "yeo-johnson-by-group"]) == 0
    cli = GaussianModel.load(tmp_path / "m.json")
    again = fit_model(X, y, g, family=cli.family, features=["x0", "x1"])
    np.testing.assert_allclose(cli.means, again.means, rtol=1e-12)
    assert cli.family != fit_model(X, y, g, family="yeo-johnson-by-group").family
    capsys.readouterr()


def test_cli_bad_family_and_value_outside_the_domain_in_a_later_chunk(
    tmp_path, capsys, monkeypatch
):
    import fairsteer.io

    monkeypatch.setattr(fairsteer.io, "CHUNK_ROWS", 100)
    X, y, g = biased(400, 11)
    write_csv(tmp_path / "d.csv", X, y, g, bad=350)
    base = [
        "fit",
        str(tmp_path / "d.csv"),
        "--group",
        "grp",
        "--label",
        "lab",
        "-o",
        str(tmp_path / "m.json"),
        "--family",
    ]
    for family, message in (
        (["log1p"], "holds -3.0 at row"),
        (["x0=lognormal"], "holds -3.0 at row"),
        (["gauss"], "got 'gauss' (unknown)"),
        (["x9=log"], "'x9', which is not a feature"),
    ):
        assert main([*base, *family]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fairsteer: error:") and message in err


def test_estimator_accepts_column_pairs():
    pd = pytest.importorskip("pandas")
    from fairsteer.estimator import OptimalSteering

    X, y, g = biased(600, 12)
    frame = pd.DataFrame(X, columns=["age", "income"])
    est = OptimalSteering(family=["income=yeo-johnson"]).fit(frame, y, sensitive_features=g)
    assert est.model_.family.names == ("normal", "yeo-johnson")
    back = OptimalSteering.from_dict(json.loads(json.dumps(est.to_dict())))
    assert back.model_.family == est.model_.family
    with pytest.raises(InputError, match="got 'gauss'"):
        OptimalSteering(family="gauss").fit(frame, y, sensitive_features=g)


def test_cli_dequantize_is_reproducible_and_rounds_back(tmp_path, capsys, monkeypatch):
    import fairsteer.io

    monkeypatch.setattr(fairsteer.io, "CHUNK_ROWS", 120)
    X, y, g = biased(500, 13)
    X = np.round(X * 10)  # integer-valued columns
    write_csv(tmp_path / "d.csv", X, y, g)
    base = [
        str(tmp_path / "d.csv"),
        "--group",
        "grp",
        "--label",
        "lab",
        "--family",
        "auto",
        "--dequantize",
        "x0",
        "x1",
    ]
    assert main(["fit", *base, "-o", str(tmp_path / "a.json")]) == 0
    assert main(["fit", *base, "-o", str(tmp_path / "b.json")]) == 0
    a, b = (GaussianModel.load(tmp_path / f) for f in ("a.json", "b.json"))
    np.testing.assert_array_equal(a.means, b.means)  # seeded noise: the same model
    # The model is the library fit of the dequantised table (the noise of a
    # value is keyed by seed, row and column): equal up to summation order.
    D = dequantize(X, seed=0)
    lib = fit_model(D, y, g, family=a.family, features=["x0", "x1"])
    np.testing.assert_allclose(a.means, lib.means, rtol=1e-12)
    for extra, integral in (([], False), (["--round-dequantized"], True)):
        out = tmp_path / "s.csv"
        assert main(["steer", *base, *extra, "--reference", "0", "-o", str(out)]) == 0
        rows = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(0, 1))
        kept = g == 0  # the reference group stays: floor gives back its integers
        np.testing.assert_array_equal(np.floor(rows[kept]), X[kept])
        assert np.all(rows == np.round(rows)) == integral
    assert main(["fit", *base[:-2], "grp", "-o", str(tmp_path / "c.json")]) == 2
    assert "not feature columns" in capsys.readouterr().err
    assert main(["steer", *base[:-3], "--round-dequantized", "-o", str(tmp_path / "r.csv")]) == 2
    assert "--round-dequantized floors the --dequantize columns" in capsys.readouterr().err
    assert str(a.family) in ("lognormal", "yeo-johnson", "normal-scores", "log1p", "normal")
    assert str(Families(["yeo-johnson-by-group", "normal"], 2)) == "yeo-johnson-by-group, normal"
