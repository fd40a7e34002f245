"""Bootstrap intervals and the parametric-bootstrap test of ideality (THEORY 10).

Every statistical check states its level: a test that fails by chance does so
with the probability written beside it, and the seeds are fixed, so a run is
reproducible.
"""

import json

import numpy as np
import pytest
from scipy import stats as sps

from fairsteer import (
    DataAudit,
    GaussianModel,
    InputError,
    OptimalSteering,
    audit,
    audit_data,
    fit_model,
)
from fairsteer.cli import main
from fairsteer.significance import _wishart, sample_cell_statistics
from fairsteer.solve import affirmative_action

# ----------------------------------------------------------------- models


def ideal_model(d=2, n_classes=2, per_class=False, seed=0, family="normal"):
    """Group b = an affine image (with a reflection) of group a, equal class priors: ideal."""
    rng = np.random.default_rng(seed)
    K = n_classes
    mu = rng.normal(size=(K, d)) * 1.5
    B = rng.normal(size=(K if per_class else 1, d, d))
    S = B @ np.swapaxes(B, -1, -2) + np.eye(d)
    S = S if per_class else np.repeat(S, K, axis=0)
    G = rng.normal(size=(d, d)) + 2 * np.eye(d)
    G[0] *= -1
    t = rng.normal(size=d)
    means = np.stack([mu, mu @ G.T + t])
    covs = np.stack([S, G @ S @ G.T])
    pi = rng.dirichlet(np.ones(K) * 5)
    return GaussianModel(np.stack([0.5 * pi, 0.5 * pi]), means, covs, ("a", "b"), family=family)


def biased_model(d=1, separation=(1.0, 2.0), priors=((0.25, 0.25), (0.3, 0.2))):
    """Binary, shared covariance I: class means 0 and s_a e_1, so Mahalanobis distances differ."""
    means = np.zeros((2, 2, d))
    means[0, 1, 0], means[1, 1, 0] = separation
    covs = np.broadcast_to(np.eye(d), (2, 2, d, d))
    return GaussianModel(np.asarray(priors), means, covs, ("a", "b"))


def draw_rows(model, counts, rng):
    """Explicit rows of every cell of ``model`` (on the data scale), with labels."""
    m, K, d = model.means.shape
    L = np.linalg.cholesky(model.covariances)
    Z, y, g = [], [], []
    for a in range(m):
        for i in range(K):
            n = int(counts[a, i])
            Z.append(model.means[a, i] + rng.standard_normal((n, d)) @ L[a, i].T)
            y += [i] * n
            g += [a] * n
    g = np.asarray(g)
    return model.from_gaussian_scale(np.concatenate(Z), g), np.asarray(y), g


def draw_data(model, n_per_group, rng):
    """A sample with fixed group sizes and multinomial class counts (the test's null design)."""
    counts = np.stack([rng.multinomial(n_per_group, p) for p in model.class_priors])
    return draw_rows(model, counts, rng)


# ------------------------------------------------ the Wishart and the sampler


def test_bartlett_wishart_matches_scipy():
    """Our Bartlett draws against scipy.stats.wishart: KS on three functionals.

    2000 draws each; each two-sample KS test at level 1e-3, so a correct
    sampler fails this test with probability < 3e-3 (the seeds are fixed).
    """
    rng = np.random.default_rng(1)
    d, df = 3, 7
    A = rng.normal(size=(d, d))
    S = A @ A.T + np.eye(d)
    L = np.linalg.cholesky(S)
    ours = np.stack([_wishart(df, L, rng) for _ in range(2000)])
    ref = sps.wishart(df=df, scale=S).rvs(size=2000, random_state=2)
    for f in (
        lambda W: W[:, 0, 1],
        lambda W: np.linalg.slogdet(W)[1],
        lambda W: np.trace(np.linalg.solve(S, W), axis1=-2, axis2=-1),
    ):
        assert sps.ks_2samp(f(ours), f(ref)).pvalue > 1e-3


def test_singular_wishart_has_the_right_mean():
    """df < d (the definition L Z^T Z L^T): E W = df S, rank df.

    Entry (j, l) of the mean of R draws has standard error
    sqrt(df (S_jl^2 + S_jj S_ll) / R); 5 standard errors leave a false-failure
    probability below 1e-5 per entry.
    """
    rng = np.random.default_rng(3)
    d, df, R = 3, 2, 4000
    A = rng.normal(size=(d, d))
    S = A @ A.T + np.eye(d)
    W = np.stack([_wishart(df, np.linalg.cholesky(S), rng) for _ in range(R)])
    assert np.linalg.matrix_rank(W[0]) == df
    se = np.sqrt(df * (S**2 + np.outer(np.diag(S), np.diag(S))) / R)
    assert np.all(np.abs(W.mean(axis=0) - df * S) < 5 * se)


@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_sampled_statistics_have_the_exact_moments(covariance):
    """Refits from drawn statistics and from drawn rows against the exact moments.

    For n rows of N(mu, S): E[mean] = mu, Cov[mean] = S / n, and the ML
    covariance has E = (n - 1)/n S per cell, or (n_a - K)/n_a S pooled over a
    group. With R replicates each average is within 5 standard errors
    (a false-failure probability < 1e-5 per entry); a wrong degree of freedom
    (n instead of n - 1) moves E[cov] by S/n, 8 standard errors here.
    """
    model = ideal_model(d=2, per_class=covariance == "per-class", seed=4)
    counts = np.array([[6, 9], [8, 7]])
    R = 3000
    rng = np.random.default_rng(5)
    for source in ("statistics", "rows"):
        means, covs = [], []
        for _ in range(R):
            if source == "statistics":
                fitted = _refit(sample_cell_statistics(model, counts, rng), covariance)
            else:
                X, y, g = draw_rows(model, counts, rng)
                fitted = fit_model(X, y, g, covariance=covariance)
            means.append(fitted.means)
            covs.append(fitted.covariances)
        means, covs = np.stack(means), np.stack(covs)
        n = counts[..., None]
        se_mean = np.sqrt(np.diagonal(model.covariances, axis1=-2, axis2=-1) / n / R)
        assert np.all(np.abs(means.mean(axis=0) - model.means) < 5 * se_mean), source
        # Cov[mean] = S / n: the variance of a coordinate of the mean, compared
        # through the ratio of sample variance to the truth (chi2_{R-1}/(R-1),
        # sd sqrt(2/R) = 0.026 at R = 3000).
        ratio = means.var(axis=0, ddof=1) / (np.diagonal(model.covariances, axis1=-2, axis2=-1) / n)
        assert np.all(np.abs(ratio - 1) < 5 * np.sqrt(2 / R)), source
        S = model.covariances
        if covariance == "per-class":
            factor = (counts - 1) / counts
            n_eff = counts
        else:
            n_a = counts.sum(axis=1, keepdims=True)
            factor = np.broadcast_to((n_a - counts.shape[1]) / n_a, counts.shape)
            n_eff = np.broadcast_to(n_a, counts.shape)
        expected = factor[..., None, None] * S
        # Var of a Wishart(k, S) entry / n^2: k (S_jl^2 + S_jj S_ll) / n^2
        dof = factor * n_eff
        var = dof[..., None, None] * (
            S**2 + np.einsum("...j,...l->...jl", *(np.diagonal(S, axis1=-2, axis2=-1),) * 2)
        )
        se = np.sqrt(var / n_eff[..., None, None] ** 2 / R)
        assert np.all(np.abs(covs.mean(axis=0) - expected) < 5 * se), source


def _refit(stats, covariance, family="normal"):
    from fairsteer import model_from_stats

    return model_from_stats(stats, covariance=covariance, family=family)


@pytest.mark.parametrize("family", ["normal", "lognormal"])
def test_kl_statistic_from_statistics_matches_rows(family):
    """The test statistic (nearest-ideal KL of the refit) has the same law either way.

    Two-sample KS test at level 1e-3 on 1500 replicates of each (a correct
    sampler fails with probability 1e-3). Log-normal: rows are drawn on the
    data scale and fitted with family="lognormal"; the statistics are drawn on
    the log scale, where the model is Gaussian.
    """
    model = ideal_model(d=2, seed=6, family=family)
    counts = np.array([[12, 18], [15, 10]])
    rng = np.random.default_rng(7)
    from_stats, from_rows = [], []
    for _ in range(1500):
        fitted = _refit(sample_cell_statistics(model, counts, rng), "shared", family)
        from_stats.append(affirmative_action(fitted).kl)
        X, y, g = draw_rows(model, counts, rng)
        fitted = fit_model(X, y, g, covariance="shared", family=family)
        from_rows.append(affirmative_action(fitted).kl)
    assert sps.ks_2samp(from_stats, from_rows).pvalue > 1e-3


def test_sampler_rejects_bad_counts():
    model = ideal_model()
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="shape"):
        sample_cell_statistics(model, [[3, 3]], rng)
    with pytest.raises(InputError, match=r"whole numbers >= 1"):
        sample_cell_statistics(model, [[3, 0], [3, 3]], rng)


# ------------------------------------------------------------ the test


@pytest.mark.slow
def test_false_positive_rate_is_near_the_level():
    """Data drawn from an ideal law: P(p <= 0.1) is about 0.1.

    200 data sets (300 rows per group, shared covariance, d = 2), B = 19 null
    replicates each, so p takes the values k/20 and P(p <= 0.1) = 2/20 exactly
    when the null distribution is right. The rejection count is then
    Binomial(200, 0.1); the acceptance region is its central 99.9% range (8 to
    35 rejections), so a
    calibrated test fails here with probability < 1e-3. A test that ignored
    the noise of the refit (e.g. p from T > 0) would reject every time.
    """
    model = ideal_model(d=2, seed=8)
    rng = np.random.default_rng(9)
    reps, level = 200, 0.1
    rejections = 0
    for k in range(reps):
        X, y, g = draw_data(model, 300, rng)
        result = audit_data(X, y, g, n_bootstrap=19, seed=k, covariance="shared", intervals=False)
        rejections += result.p_value <= level
    lo, hi = sps.binom.ppf([5e-4, 1 - 5e-4], reps, level)
    assert lo <= rejections <= hi, rejections


def test_power_on_a_biased_law():
    """A law far from ideal is rejected.

    Group a's class means are 1 standard deviation apart, group b's 3: the
    true nearest-ideal KL is checked to exceed 5 times the null's largest
    replicate, so each data set rejects unless the refit's noise is of the
    order of the effect; we ask for 19 of 20 rejections at level 0.1.
    """
    model = biased_model(d=2, separation=(1.0, 3.0), priors=((0.25, 0.25), (0.25, 0.25)))
    rng = np.random.default_rng(10)
    rejections = 0
    for k in range(20):
        X, y, g = draw_data(model, 300, rng)
        result = audit_data(X, y, g, n_bootstrap=19, seed=k, covariance="shared", intervals=False)
        if k == 0:
            true_kl = affirmative_action(model).kl
            assert true_kl > 5 * result.null_kl.max()
        rejections += result.p_value <= 0.1
    assert rejections >= 19


def test_unequal_priors_alone_are_detected():
    """Equal feature laws but class priors 0.5 vs 0.3: the prior term of the statistic.

    Keeping the observed class counts in the null would reproduce the prior
    gap in every null data set and never reject; drawing them from the ideal
    priors does. With 500 rows per group the prior KL (0.04 nats) is about 8
    times the null's 95% quantile, so p is at its minimum 1/(B + 1).
    """
    model = biased_model(d=1, separation=(1.5, 1.5), priors=((0.25, 0.25), (0.35, 0.15)))
    X, y, g = draw_data(model, 500, np.random.default_rng(11))
    result = audit_data(X, y, g, n_bootstrap=49, covariance="shared", intervals=False)
    assert result.p_value == pytest.approx(1 / 50)


# ------------------------------------------------------------ the intervals


@pytest.mark.slow
def test_interval_coverage_where_the_truth_is_known():
    """80% intervals cover the true gaps (closed form, binary shared covariance).

    True values: the closed-form audit of the true model (itself checked
    against simulation in test_audit.py). 50 data sets with cell sizes
    fixed in proportion to the true priors (the design the interval is
    conditional on), B = 59. The number covered is Binomial(50, c) with c
    near 0.8 (measured on 200 data sets of this design: 0.80 to 0.835 for the
    five gaps and the KL, docs/audit.md), so we accept a count within the
    central 99.9% binomial range for c = 0.8 (30 to 48): a broken
    interval (e.g. the resample not refitted, a width of 0, or quantiles of
    the wrong replicates) covers far less.
    """
    model = biased_model(d=1, priors=((0.25, 0.25), (0.3, 0.2)))
    truth = audit(model)
    counts = np.array([[300, 300], [360, 240]])  # 1200 * the true priors
    rng = np.random.default_rng(12)
    names = ("dp_gap", "eo_gap_half", "nearest_ideal_kl")
    covered = dict.fromkeys(names, 0)
    reps = 50
    for k in range(reps):
        X, y, g = draw_rows(model, counts, rng)
        result = audit_data(
            X, y, g, n_bootstrap=59, level=0.8, seed=k, covariance="shared", test=False
        )
        for name in names:
            lo, hi = result.intervals[name]
            covered[name] += lo <= getattr(truth, name) <= hi
    lo, hi = sps.binom.ppf([5e-4, 1 - 5e-4], reps, 0.8)
    for name in names:
        assert lo <= covered[name] <= hi, (name, covered[name])


def test_point_estimate_is_the_audit_of_the_fit_and_intervals_are_ordered():
    model = biased_model(d=2)
    X, y, g = draw_data(model, 200, np.random.default_rng(13))
    result = audit_data(X, y, g, n_bootstrap=30, covariance="shared")
    direct = audit(fit_model(X, y, g, covariance="shared"))
    assert result.audit.to_dict() == direct.to_dict()
    for name, (lo, hi) in result.intervals.items():
        assert lo < hi, name  # every quantity varies between resamples
    assert result.counts == np.bincount(g * 2 + y, minlength=4).reshape(2, 2).tolist()


def test_reproducible_and_seed_dependent():
    model = biased_model(d=2)
    X, y, g = draw_data(model, 150, np.random.default_rng(14))
    one = audit_data(X, y, g, n_bootstrap=20, seed=3, covariance="shared")
    two = audit_data(X, y, g, n_bootstrap=20, seed=3, covariance="shared")
    other = audit_data(X, y, g, n_bootstrap=20, seed=4, covariance="shared")
    a, b = one.to_dict(), two.to_dict()
    a.pop("seconds_per_replicate"), b.pop("seconds_per_replicate")
    assert a == b
    assert np.array_equal(one.null_kl, two.null_kl)
    assert one.intervals != other.intervals
    assert not np.array_equal(one.null_kl, other.null_kl)


def test_lognormal_family_is_kept():
    """Log-normal on X equals normal on log X, replicate for replicate (same seed).

    The resampled rows and the null draws are the same random numbers, and
    every refit sees the same log-scale statistics, so the results agree to
    round-off (1e-9 relative: exp then log of a float64).
    """
    model = biased_model(d=2)
    Z, y, g = draw_data(model, 150, np.random.default_rng(15))
    X = np.exp(Z)
    lognormal = audit_data(X, y, g, n_bootstrap=15, family="lognormal", covariance="shared")
    normal = audit_data(np.log(X), y, g, n_bootstrap=15, covariance="shared")
    assert lognormal.options["family"] == "lognormal"
    assert lognormal.p_value == normal.p_value
    np.testing.assert_allclose(lognormal.null_kl, normal.null_kl, rtol=1e-9)
    for name, interval in normal.intervals.items():
        np.testing.assert_allclose(lognormal.intervals[name], interval, rtol=1e-9, atol=1e-12)


def test_per_class_covariance_runs_and_reports():
    model = ideal_model(d=2, per_class=True, seed=16)
    X, y, g = draw_data(model, 120, np.random.default_rng(17))
    result = audit_data(X, y, g, n_bootstrap=8, n_samples=5000)
    assert result.audit.method == "monte-carlo"
    assert result.options["covariance"] == "per-class"
    assert 1 / 9 <= result.p_value <= 1
    assert set(result.intervals) >= {"dp_gap", "eo_gap", "nearest_ideal_kl"}


def test_result_to_dict_and_summary():
    model = biased_model(d=2)
    X, y, g = draw_data(model, 150, np.random.default_rng(18))
    result = audit_data(X, y, g, n_bootstrap=20, covariance="shared")
    assert isinstance(result, DataAudit)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["p_value"] == result.p_value
    assert data["intervals"]["eo_gap"] == list(result.intervals["eo_gap"])
    assert set(data["seconds_per_replicate"]) == {"intervals", "test"}
    text = result.summary()
    assert f"p = {result.p_value:.3g}" in text
    assert "95% confidence interval" in text and "true law is not ideal" in text
    assert "too few" in text  # 20 resamples cannot carry 2.5% tails


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_bootstrap": 0}, "n_bootstrap must be at least 1"),
        ({"n_bootstrap": -5}, "n_bootstrap must be at least 1"),
        ({"n_bootstrap": 2.5}, "n_bootstrap must be a whole number"),
        ({"n_bootstrap": True}, "n_bootstrap must be a whole number"),
        ({"level": 0.0}, "level must lie strictly between 0 and 1"),
        ({"level": 1.0}, "level must lie strictly between 0 and 1"),
        ({"level": 1.5}, "level must lie strictly between 0 and 1"),
        ({"level": "0.9"}, "level must be a number"),
        ({"seed": -1}, "seed must be a whole number"),
    ],
)
def test_bad_options_raise_input_error(kwargs, words):
    X, y, g = draw_data(biased_model(), 50, np.random.default_rng(19))
    with pytest.raises(InputError, match=words):
        audit_data(X, y, g, **kwargs)


def test_a_cell_too_small_raises_input_error():
    X, y, g = draw_rows(biased_model(d=1), np.array([[20, 20], [20, 4]]), np.random.default_rng(0))
    with pytest.raises(InputError, match=r"cell \(group 1, class 1\) has 4 rows.*at least 5"):
        audit_data(X, y, g, covariance="shared")


def test_every_replicate_failing_raises_input_error():
    """Per-class covariances with d + 1 rows in a cell: resamples repeat rows and go singular.

    6 rows in 5 dimensions: a resample keeps all 6 distinct rows (the only
    way to a nonsingular covariance) with probability 6!/6^6 = 0.015, so all
    3 replicates fail with probability 0.95 (and the seed is fixed).
    """
    counts = np.array([[30, 30], [30, 6]])
    X, y, g = draw_rows(ideal_model(d=5, per_class=True), counts, np.random.default_rng(1))
    with pytest.raises(InputError, match="every bootstrap resample failed"):
        audit_data(X, y, g, n_bootstrap=3, seed=1, n_samples=1000, test=False)


# ------------------------------------------------------------ entry points


def test_estimator_audit_uses_its_fit_options():
    model = biased_model(d=2)
    X, y, g = draw_data(model, 150, np.random.default_rng(20))
    est = OptimalSteering(covariance="shared", seed=5)
    via_estimator = est.audit(X, y, sensitive_features=g, n_bootstrap=10, level=0.9)
    direct = audit_data(X, y, g, n_bootstrap=10, level=0.9, seed=5, covariance="shared")
    assert via_estimator.p_value == direct.p_value
    assert via_estimator.intervals == direct.intervals
    assert not hasattr(est, "model_")  # auditing does not fit the estimator


def write_csv(path, model, n_per_group, seed):
    X, y, g = draw_data(model, n_per_group, np.random.default_rng(seed))
    names = np.array(["f", "m"])[g]
    lines = ["x1,x2,sex,label"] + [
        f"{float(X[k, 0])!r},{float(X[k, 1])!r},{names[k]},{y[k]}" for k in range(len(y))
    ]
    path.write_text("\n".join(lines) + "\n")
    return X, y, names


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_audits_data_end_to_end(tmp_path, capsys):
    data = tmp_path / "d.csv"
    X, y, g = write_csv(data, biased_model(d=2), 200, 21)
    args = ("audit", data, "--group", "sex", "--label", "label", "--covariance", "shared")
    code, out, err = run(capsys, *args, "--bootstrap", "30", "--seed", "2")
    assert code == 0 and err == ""
    assert "95% bootstrap intervals" in out and "p = " in out
    code, out, _ = run(
        capsys, *args, "--bootstrap", "30", "--seed", "2", "--json", "--level", "0.9"
    )
    assert code == 0
    got = json.loads(out)
    # the CSV holds repr() floats, so the library on the same arrays gives the same numbers
    direct = audit_data(
        X,
        y.astype(str),
        g,
        n_bootstrap=30,
        level=0.9,
        seed=2,
        covariance="shared",
        features=["x1", "x2"],
    )
    assert got["p_value"] == direct.p_value
    assert got["intervals"] == {k: list(v) for k, v in direct.intervals.items()}
    assert got["level"] == 0.9 and got["options"]["covariance"] == "shared"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--bootstrap", "0"], "--bootstrap must be at least 1"),
        (["--level", "1.5"], "--level must lie strictly between 0 and 1"),
        (["--level", "abc"], "argument --level"),
        (["--shrinkage", "lots"], "--shrinkage: shrinkage must be a number"),
        (["--features", "nope"], "unknown column 'nope'"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(tmp_path, capsys, extra, words):
    data = tmp_path / "d.csv"
    write_csv(data, biased_model(d=2), 30, 22)
    code, out, err = run(capsys, "audit", data, "--group", "sex", "--label", "label", *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fairsteer: error:") and words in err


def test_cli_data_mode_needs_labels_and_model_mode_refuses_bootstrap(tmp_path, capsys):
    data = tmp_path / "d.csv"
    write_csv(data, biased_model(d=2), 30, 23)
    code, _, err = run(capsys, "audit", data, "--group", "sex")
    assert code == 2 and "needs --label" in err and err.count("\n") == 1
    model_path = tmp_path / "m.json"
    biased_model(d=2).save(model_path)
    code, _, err = run(capsys, "audit", model_path, "--bootstrap", "10")
    assert code == 2 and "--bootstrap need a data file" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "audit", model_path)
    assert code == 0 and "verdict" in out


def test_cli_parquet_gives_the_csv_result(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    csv_path, parquet_path = tmp_path / "d.csv", tmp_path / "d.parquet"
    X, y, g = write_csv(csv_path, biased_model(d=2), 100, 24)
    table = pa.table({"x1": X[:, 0], "x2": X[:, 1], "sex": g, "label": y.astype(str)})
    pq.write_table(table, parquet_path)
    args = ("--group", "sex", "--label", "label", "--bootstrap", "10", "--json")
    results = []
    for path in (csv_path, parquet_path):
        code, out, _ = run(capsys, "audit", path, *args)
        assert code == 0
        results.append(json.loads(out))
    for key in ("p_value", "intervals", "counts"):
        assert results[0][key] == results[1][key], key


def test_shrinkage_is_used_in_every_refit():
    """The point fit and every replicate use the shrinkage asked for.

    Shrinkage 1 replaces each covariance by tr(S)/d I: the point audit equals
    the audit of that fit, and the replicates differ from unshrunk ones
    (same seed, so the same resamples and null draws).
    """
    X, y, g = draw_data(biased_model(d=3), 150, np.random.default_rng(25))
    shrunk = audit_data(X, y, g, n_bootstrap=10, covariance="shared", shrinkage=1.0)
    plain = audit_data(X, y, g, n_bootstrap=10, covariance="shared")
    fitted = fit_model(X, y, g, covariance="shared", shrinkage=1.0)
    assert shrunk.audit.to_dict() == audit(fitted).to_dict()
    assert shrunk.options["shrinkage"] == 1.0
    assert not np.allclose(shrunk.null_kl, plain.null_kl)
    assert shrunk.intervals["eo_gap"] != plain.intervals["eo_gap"]


def test_a_null_that_cannot_fill_every_cell_raises_input_error():
    """Group a: 195 rows of class 0 and 5 of class 1; group b: 5 and 5.

    The nearest ideal model keeps group a (the cheaper reference) and so the
    priors (0.975, 0.025); a null group b of 10 rows then has 5 rows of class
    1 with probability about 1e-6, so drawing the null is refused instead of
    looping.
    """
    counts = np.array([[195, 5], [5, 5]])
    X, y, g = draw_rows(biased_model(d=1, separation=(3.0, 3.0)), counts, np.random.default_rng(2))
    with pytest.raises(InputError, match="null cannot be drawn"):
        audit_data(X, y, g, n_bootstrap=5, covariance="shared", intervals=False)


def test_cli_family_by_column(tmp_path, capsys):
    """--family COLUMN=FAMILY as `fairsteer fit` takes it; the summary names the families."""
    data = tmp_path / "d.csv"
    X, y, g = write_csv(data, biased_model(d=2), 100, 26)
    args = ("audit", data, "--group", "sex", "--label", "label", "--bootstrap", "10")
    code, out, err = run(capsys, *args, "--family", "x1=yeo-johnson")
    assert code == 0 and err == ""
    assert "per-feature (yeo-johnson, normal) family" in out
    code, out, _ = run(capsys, *args, "--family", "x1=yeo-johnson", "--json")
    direct = audit_data(
        X, y.astype(str), g, n_bootstrap=10, family=["x1=yeo-johnson"], features=["x1", "x2"]
    )
    assert json.loads(out)["p_value"] == direct.p_value
