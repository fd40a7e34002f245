"""Categorical context (THEORY 9, second part): KL, solver, coupling, steering, errors."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from fairsteer import GaussianModel, InputError, audit
from fairsteer.context import (
    ContextModel,
    ContextSolution,
    _category_update,
    _objective,
    context_kl,
    fit_context_model,
    largest_remainder,
    solve_context,
    steer_context,
)


def _data(seed=0, n=2400, d=2, levels=("u", "v", "w")):
    """Biased synthetic data: the category law and the features depend on group and class."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    y = (rng.random(n) < 0.3 + 0.2 * g).astype(int)
    p_first = 0.2 + 0.3 * g * y + 0.1 * y
    first = rng.random(n) < p_first
    rest = rng.integers(1, len(levels), n)
    c = np.where(first, 0, rest)
    scale = 1.0 + 0.5 * g[:, None] * (c[:, None] == 1)
    X = scale * rng.standard_normal((n, d)) + y[:, None] * (1 + g[:, None]) + c[:, None]
    return X, y, g, np.array(levels)[c]


def _ideal_context_model(seed=1, m=2, L=3, K=2, d=2):
    """An ideal context model built from its definition (THEORY 9)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(m) * 3)
    pi = rng.dirichlet(np.ones(K) * 3)
    Q = rng.dirichlet(np.ones(L) * 3, size=K).T  # (L, K), columns sum to 1
    cells = []
    for _c in range(L):
        nu = rng.standard_normal((K, d))
        Om = []
        for _i in range(K):
            B = rng.standard_normal((d, d))
            Om.append(B @ B.T + d * np.eye(d))
        Om = np.array(Om)
        G = rng.standard_normal((m, d, d)) + 2 * np.eye(d)
        t = rng.standard_normal((m, d))
        means = np.einsum("ade,ke->akd", G, nu) + t[:, None]
        covs = G[:, None] @ Om[None] @ np.swapaxes(G, -1, -2)[:, None]
        joint_c = w[:, None] * (pi * Q[_c])[None]
        cells.append(GaussianModel(joint_c / joint_c.sum(), means, covs))
    joint = w[:, None, None] * (Q * pi)[None]
    return ContextModel(joint, tuple(cells), ("u", "v", "w"), ((("u",),), (("v",),), (("w",),)))


@pytest.fixture(scope="module")
def fitted():
    X, y, g, c = _data()
    model = fit_context_model(X, y, g, c, covariance="shared")
    return X, y, g, c, model


@pytest.fixture(scope="module")
def solved(fitted):
    *_, model = fitted
    return solve_context(model, "all-subgroups")


# ------------------------------------------------------------------- KL


def test_kl_decomposition_matches_monte_carlo(fitted):
    """context_kl equals E_candidate[ln p~ - ln p] over (A, C, Y, X), drawn by Monte Carlo."""
    *_, model = fitted
    X2, y2, g2, c2 = _data(seed=5)  # another biased law of the same layout: the candidate
    cand = fit_context_model(X2 * 1.3 + 0.2, y2, g2, c2)  # per-class covariances
    exact = context_kl(model, cand)
    rng = np.random.default_rng(0)
    N = 200_000
    flat = cand.joint.ravel()
    idx = rng.choice(flat.size, size=N, p=flat)
    a, lv, i = np.unravel_index(idx, cand.joint.shape)
    log_ratio = np.log(cand.joint[a, lv, i]) - np.log(model.joint[a, lv, i])
    for cell in np.unique(idx):
        rows = np.flatnonzero(idx == cell)
        ca, cc, ci = np.unravel_index(cell, cand.joint.shape)
        mt, St = cand.cells[cc].means[ca, ci], cand.cells[cc].covariances[ca, ci]
        mo, So = model.cells[cc].means[ca, ci], model.cells[cc].covariances[ca, ci]
        x = rng.multivariate_normal(mt, St, size=rows.size)
        log_ratio[rows] += multivariate_normal(mt, St).logpdf(x) - multivariate_normal(
            mo, So
        ).logpdf(x)
    se = log_ratio.std() / np.sqrt(N)
    # 5 standard errors: a correct formula fails with probability ~6e-7
    assert abs(log_ratio.mean() - exact["total"]) < 5 * se
    assert exact["total"] > 20 * se  # the comparison is not vacuous


def test_solution_kl_is_the_chain_rule(solved, fitted):
    """The solver's KL equals context_kl of its ideal model and the sum of its parts."""
    *_, model = fitted
    direct = context_kl(model, solved.ideal)
    w = model.group_weights
    pi_t, Q = solved.class_priors, solved.level_priors
    parts = w @ (
        solved.prior_kl
        + solved.category_kl @ pi_t
        + np.einsum("acy,cy->a", solved.cell_kl, Q * pi_t)
    )
    # one formula, three summation orders: round-off only (values ~0.1 nats)
    assert solved.kl == pytest.approx(direct["total"], rel=1e-10, abs=1e-14)
    assert solved.kl == pytest.approx(parts, rel=1e-10, abs=1e-14)
    assert direct["group_kl"] == pytest.approx(0.0, abs=1e-15)  # P~(A) = P(A)
    # the ideal law: category law given the class independent of the group
    assert np.allclose(solved.ideal.level_law, solved.ideal.level_law[:1], atol=1e-14)


# ------------------------------------------------------------- updates


def _random_problem(seed):
    rng = np.random.default_rng(seed)
    m, L, K = 3, 4, 2
    w = rng.dirichlet(np.ones(m))
    joint = rng.dirichlet(np.ones(L * K), size=m).reshape(m, L, K)  # P(c, y | a)
    cell_kl = rng.exponential(0.5, size=(m, L, K))
    return w, np.log(joint), cell_kl


@pytest.mark.parametrize("seed", range(3))
def test_category_update_matches_brute_force(seed):
    """Closed-form joint update = scipy's minimum over the simplex of (C, Y)."""
    w, log_joint, cell_kl = _random_problem(seed)
    L, K = log_joint.shape[1:]
    R = _category_update(w, log_joint, cell_kl)

    def f(z):
        return _objective(w, log_joint, np.exp(z - logsumexp(z)).reshape(L, K), cell_kl)

    res = minimize(f, np.zeros(L * K), method="BFGS", options={"gtol": 1e-10})
    brute = np.exp(res.x - logsumexp(res.x)).reshape(L, K)
    # BFGS stops at gradient 1e-10; the minimum is strictly convex in R, so R
    # agrees to ~1e-6 and the value to ~1e-10
    assert _objective(w, log_joint, R, cell_kl) <= res.fun + 1e-10
    assert np.allclose(R, brute, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_q_update_for_fixed_priors_matches_brute_force(seed):
    """THEORY 9's Q(c|y) ~ exp(sum_a w_a (ln P(c|a,y) - K_acy)) for fixed pi~ (scipy check)."""
    w, log_joint, cell_kl = _random_problem(seed)
    L, K = log_joint.shape[1:]
    pi_t = np.random.default_rng(seed + 10).dirichlet(np.ones(K))
    log_cond = log_joint - logsumexp(log_joint, axis=1, keepdims=True)  # ln P(c | a, y)
    s = np.einsum("a,acy->cy", w, log_cond - cell_kl)
    Q = np.exp(s - logsumexp(s, axis=0))

    def f(z):
        Zs = z.reshape(L, K)
        Qz = np.exp(Zs - logsumexp(Zs, axis=0))
        return _objective(w, log_joint, Qz * pi_t, cell_kl)

    res = minimize(f, np.zeros(L * K), method="BFGS", options={"gtol": 1e-10})
    Zs = res.x.reshape(L, K)
    brute = np.exp(Zs - logsumexp(Zs, axis=0))
    assert _objective(w, log_joint, Q * pi_t, cell_kl) <= res.fun + 1e-10
    assert np.allclose(Q, brute, atol=1e-6)  # strictly convex in Q: see above
    # and the joint update's conditional is this Q
    R = _category_update(w, log_joint, cell_kl)
    assert np.allclose(R / R.sum(axis=0), Q, atol=1e-12)


# --------------------------------------------------------------- solver


def test_descent_never_increases_and_beats_pooled_and_affirmative(solved, fitted):
    from fairsteer import all_subgroups

    *_, model = fitted
    diag = solved.diagnostics
    # the "keep Q = pooled law" value, computed here from its definition: R = P(c, y)
    # pooled over groups, each level solved with those class weights, KL by the chain rule
    w = model.group_weights
    R = model.joint.sum(axis=0)
    pooled = 0.0
    for k, cell in enumerate(model.cells):
        rho = R[k] / R[k].sum()
        level = cell.with_params(w[:, None] * rho[None], cell.means, cell.covariances)
        K = all_subgroups(level, hold_priors=True).cell_kl
        P = model.joint[:, k] / w[:, None]  # P(c=k, y | a)
        pooled += float(w @ np.sum(R[k] * (np.log(R[k]) - np.log(P) + K), axis=1))
    assert diag["pooled_kl"] == pytest.approx(pooled, rel=1e-9)  # same optimum, round-off
    for run in diag["runs"]:
        h = np.array(run["history"])
        # every block is a minimiser (or keeps the previous parts): only round-off may rise
        assert np.all(np.diff(h) <= 1e-12 * h[:-1])
    assert solved.kl <= diag["pooled_kl"] + 1e-14
    assert solved.kl <= diag["best_affirmative_kl"] + 1e-14
    assert solved.kl < diag["pooled_kl"] - 1e-4  # the category block does real work here
    assert diag["converged"]


@pytest.mark.parametrize("method", ["affirmative", "all-subgroups"])
@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_ideal_input_has_zero_kl(method, covariance):
    model = _ideal_context_model()
    if covariance == "shared":
        cells = tuple(
            cell.with_params(
                cell.priors,
                cell.means,
                np.broadcast_to(cell.covariances[:, :1], cell.covariances.shape),
            )
            for cell in model.cells
        )
        model = ContextModel(model.joint, cells, model.levels, model.members)
    sol = solve_context(model, method)
    # the solvers reach ~1e-12 on ideal models (gradient tolerance 1e-7 squared)
    assert sol.kl < 1e-9
    assert np.allclose(sol.level_priors, model.level_law[0], atol=1e-6)


def test_affirmative_keeps_reference_group(fitted):
    *_, model = fitted
    sol = solve_context(model, "affirmative", reference=1)
    assert sol.reference_group == 1
    assert np.allclose(sol.level_priors, model.level_law[1], atol=1e-14)
    for cell, orig in zip(sol.ideal.cells, model.cells):
        assert np.array_equal(cell.means[1], orig.means[1])
    assert sol.kl == pytest.approx(sol.diagnostics["kl_by_reference"]["1"], rel=1e-10)


def test_invariance_under_per_group_level_affine_maps():
    """THEORY 4d per (a, c): x -> M_ac x + b_ac leaves KL unchanged; ideal cells move with it."""
    X, y, g, c = _data(seed=3)
    rng = np.random.default_rng(7)
    levels = np.unique(c)
    Xt = X.copy()
    maps = {}
    for a in (0, 1):
        for lv in levels:
            M = rng.standard_normal((2, 2)) * 3 + np.diag([10.0, 0.1])
            b = rng.standard_normal(2) * 100
            rows = (g == a) & (c == lv)
            Xt[rows] = X[rows] @ M.T + b
            maps[a, lv] = (M, b)
    for cov, method in [("shared", "all-subgroups"), ("per-class", "affirmative")]:
        s0 = solve_context(fit_context_model(X, y, g, c, covariance=cov), method)
        s1 = solve_context(fit_context_model(Xt, y, g, c, covariance=cov), method)
        # solvers work on standardised models: equivalent inputs agree to ~1e-8
        assert s1.kl == pytest.approx(s0.kl, rel=1e-6)
        assert np.allclose(s1.level_priors, s0.level_priors, atol=1e-7)
        for k, lv in enumerate(s0.ideal.levels):
            for a in (0, 1):
                M, b = maps[a, lv]
                mean0 = s0.ideal.cells[k].means[a] @ M.T + b
                cov0 = M @ s0.ideal.cells[k].covariances[a] @ M.T
                scale = np.abs(mean0).max()
                assert np.allclose(s1.ideal.cells[k].means[a], mean0, atol=1e-5 * scale)
                tol = 1e-5 * np.abs(cov0).max()
                assert np.allclose(s1.ideal.cells[k].covariances[a], cov0, rtol=1e-5, atol=tol)


# ------------------------------------------------------------- steering


def test_largest_remainder_rounding():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 200))
        q = rng.dirichlet(np.ones(5))
        counts = largest_remainder(n, q)
        assert counts.sum() == n
        assert np.all((counts == np.floor(n * q)) | (counts == np.ceil(n * q)))


def test_coupling_keeps_maximum_mass_and_reaches_q(fitted, solved):
    X, y, g, c, model = fitted
    steered = steer_context(model, solved, X, y, g, c, seed=3)
    before = model.level_codes(c)
    for a in (0, 1):
        for i in (0, 1):
            rows = (g == a) & (y == i)
            n = rows.sum()
            have = np.bincount(before[rows], minlength=3)
            want = largest_remainder(n, solved.level_priors[:, i])
            after = np.bincount(steered.levels[rows], minlength=3)
            assert np.array_equal(after, want)  # exactly the rounded target counts
            assert np.all(np.abs(after / n - solved.level_priors[:, i]) < 1 / n)
            kept = (rows & ~steered.moved).sum()
            # any coupling keeps at most sum_c min(have, want) rows in place
            assert kept == np.minimum(have, want).sum()
    assert steered.moved.any()


def test_coupling_is_seeded(fitted, solved):
    X, y, g, c, model = fitted
    s1 = steer_context(model, solved, X, y, g, c, seed=1)
    s2 = steer_context(model, solved, X, y, g, c, seed=1)
    s3 = steer_context(model, solved, X, y, g, c, seed=2)
    assert np.array_equal(s1.X, s2.X) and np.array_equal(s1.levels, s2.levels)
    assert not np.array_equal(s1.moved, s3.moved)


@pytest.mark.parametrize(
    ("covariance", "family"),
    [("per-class", "normal"), ("shared", "normal"), ("shared", "lognormal")],
)
def test_refit_of_steered_sample_is_ideal(covariance, family):
    X, y, g, c = _data(seed=2)
    if family == "lognormal":
        X = np.exp(X / 3)  # positive; the model describes log X
    model = fit_context_model(X, y, g, c, covariance=covariance, family=family)
    sol = solve_context(model, "all-subgroups")
    steered = steer_context(model, sol, X, y, g, c)
    assert steered.uncorrected == []
    names = np.array(model.levels)[steered.levels]
    # per-class refit: no structure assumed
    refit = fit_context_model(steered.X, y, g, names, family=family)
    assert refit.levels == model.levels
    for k in range(model.n_levels):
        ideal, got = sol.ideal.cells[k], refit.cells[k]
        # moments of the steered sample are the ideal ones up to round-off (~1e-13)
        assert np.allclose(got.means, ideal.means, atol=1e-9)
        assert np.allclose(got.covariances, ideal.covariances, atol=1e-9)
        # with the ideal class priors (the weights' effect) the level audits ideal
        level = got.with_params(sol.level_solutions[k].ideal.priors, got.means, got.covariances)
        assert audit(level).is_ideal
    # weights give every group the ideal class priors exactly
    for a in (0, 1):
        wa = steered.weights[g == a]
        share = np.bincount(y[g == a], weights=wa) / wa.sum()
        assert np.allclose(share, sol.class_priors, atol=1e-12)
    # category law given (a, y) is Q up to the rounding of the counts (< 1 / n_ay)
    n_ay = refit.joint.sum(axis=1) * len(y)
    assert np.all(np.abs(refit.level_law - sol.level_priors[None]) < 1 / n_ay[:, None, :])


def test_without_correction_moments_match_only_where_nothing_moved(fitted):
    X, y, g, c, model = fitted
    sol = solve_context(model, "affirmative", reference=0)
    steered = steer_context(model, sol, X, y, g, c, exact=False)
    assert not steered.moved[g == 0].any()  # the reference group keeps its categories
    assert np.allclose(steered.X[g == 0], X[g == 0], atol=1e-9)  # and its features


# ------------------------------------------------------------ JSON, API


def test_json_round_trip(fitted, solved, tmp_path):
    *_, model = fitted
    model.save(tmp_path / "m.json")
    back = ContextModel.load(tmp_path / "m.json")
    assert np.allclose(back.joint, model.joint, rtol=1e-15)
    assert back.members == model.members and back.levels == model.levels
    solved.save(tmp_path / "s.json")
    sol = ContextSolution.load(tmp_path / "s.json")
    assert sol.kl == solved.kl
    assert np.allclose(sol.level_priors, solved.level_priors, rtol=1e-15)
    assert context_kl(back, sol.ideal)["total"] == pytest.approx(solved.kl, rel=1e-10)


def test_several_context_columns_are_combined():
    X, y, g, c = _data(seed=4, n=3000)
    second = np.where(np.arange(len(y)) % 2 == 0, "p", "q")
    model = fit_context_model(
        X, y, g, np.column_stack([c, second]), context_names=["c1", "c2"], covariance="shared"
    )
    assert model.n_levels == 6 and model.context == ("c1", "c2")
    assert "u & p" in model.levels
    sol = solve_context(model, "affirmative")
    assert sol.ideal.n_levels == 6


def test_public_api():
    import fairsteer

    for name in ("ContextModel", "fit_context_model", "solve_context", "steer_context"):
        assert hasattr(fairsteer, name)


# ------------------------------------------------------------ bad input


def test_rare_level_error_names_cell_and_fix():
    X, y, g, c = _data(seed=0)
    c = c.copy()
    rare = np.flatnonzero((g == 0) & (y == 1) & (c == "w"))
    c[rare[2:]] = "v"
    with pytest.raises(InputError, match=r"level 'w' has 2 row\(s\).*--merge-rare"):
        fit_context_model(X, y, g, c)
    merged = fit_context_model(X, y, g, c, merge_rare=True)
    assert merged.n_levels == 2
    assert any("w" in name and " | " in name for name in merged.levels)
    with pytest.raises(InputError, match="even with every level merged"):
        fit_context_model(X, y, g, c, merge_rare=True, min_count=10**6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_count": 0}, "min_count"),
        ({"context_names": ["a", "b"]}, "context names"),
    ],
)
def test_bad_fit_arguments(kwargs, message):
    X, y, g, c = _data(seed=0, n=600)
    with pytest.raises(InputError, match=message):
        fit_context_model(X, y, g, c, **kwargs)


def test_bad_context_values(fitted, solved):
    X, y, g, c, model = fitted
    with pytest.raises(InputError, match="shape"):
        fit_context_model(X, y, g, c[:-1])
    bad = c.astype(object)
    bad[5] = None
    with pytest.raises(InputError, match="row 6 has no value"):
        fit_context_model(X, y, g, bad)
    other = c.copy().astype(object)
    other[0] = "zz"
    with pytest.raises(InputError, match=r"'zz'.*not a level"):
        steer_context(model, solved, X, y, g, other)
    two = fit_context_model(X, y, g, np.where(c == "w", "v", c), covariance="shared")
    with pytest.raises(InputError, match="solve the model you steer with"):
        steer_context(model, solve_context(two), X, y, g, c)
    with pytest.raises(InputError, match="affirmative"):
        solve_context(model, "all-subgroups", reference=0)
    with pytest.raises(InputError, match="unknown reference"):
        solve_context(model, "affirmative", reference="nobody")
    with pytest.raises(InputError, match="method"):
        solve_context(model, "bogus")
    with pytest.raises(InputError, match="context model"):
        ContextModel.from_dict({"priors": []})


# ------------------------------------------------------------------ CLI


def _write_csv(path, seed=0, n=1500):
    X, y, g, c = _data(seed=seed, n=n)
    lines = ["x1,x2,sex,label,rel,note"] + [
        f"{float(X[k, 0])!r},{float(X[k, 1])!r},{'fm'[g[k]]},{y[k]},{c[k]},row {k}"
        for k in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return X, y, g, c


def test_cli_fit_solve_steer_with_context(tmp_path, capsys):
    from fairsteer.cli import main

    data = tmp_path / "d.csv"
    _, y, g, _ = _write_csv(data)
    base = ["--group", "sex", "--label", "label", "--context", "rel", "--covariance", "shared"]
    assert main(["fit", str(data), *base, "-o", str(tmp_path / "m.json")]) == 0
    model = ContextModel.load(tmp_path / "m.json")
    assert model.context == ("rel",) and model.levels == ("u", "v", "w")
    solve_args = [
        "solve",
        tmp_path / "m.json",
        "--method",
        "all-subgroups",
        "-o",
        tmp_path / "s.json",
    ]
    assert main([str(a) for a in solve_args]) == 0
    sol = ContextSolution.load(tmp_path / "s.json")
    assert sol.kl == pytest.approx(solve_context(model, "all-subgroups").kl, rel=1e-12)
    out = tmp_path / "out.csv"
    assert main(["steer", str(data), *base, "--method", "all-subgroups", "-o", str(out)]) == 0
    assert "moved to another context level" in capsys.readouterr().out
    import csv

    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["note"] for r in rows] == [f"row {k}" for k in range(len(y))]  # carried over
    Xs = np.array([[float(r["x1"]), float(r["x2"])] for r in rows])
    lv = np.array([r["rel"] for r in rows])
    refit = fit_context_model(Xs, y, g, lv, covariance="shared")
    for k in range(refit.n_levels):
        # the CSV writes repr(float): exact round trip, so round-off only
        assert np.allclose(refit.cells[k].means, sol.ideal.cells[k].means, atol=1e-9)
    n_ay = refit.joint.sum(axis=1) * len(y)
    assert np.all(np.abs(refit.level_law - sol.level_priors[None]) < 1 / n_ay[:, None, :])


def test_cli_context_bad_input(tmp_path, capsys):
    from fairsteer.cli import main

    data = tmp_path / "d.csv"
    _write_csv(data, n=300)
    base = ["fit", str(data), "--group", "sex", "--label", "label", "-o", str(tmp_path / "m.json")]
    assert main([*base, "--context", "nope"]) == 2
    assert "unknown column 'nope'" in capsys.readouterr().err
    assert main([*base, "--context", "rel", "--min-count", "200"]) == 2
    err = capsys.readouterr().err
    assert "--merge-rare" in err and err.count("\n") == 1
    assert main([*base, "--context", "rel", "--features", "rel"]) == 2
    assert "cannot be both" in capsys.readouterr().err


# ------------------------------------------------- solver keyword (solve/)


@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_all_subgroups_hold_priors(covariance):
    """hold_priors keeps pi~ at the common class priors and still beats every affirmative map."""
    from fairsteer import affirmative_action, all_subgroups, fit_model

    X, y, g, _ = _data(seed=6, n=1200)
    model = fit_model(X, y, g, covariance=covariance)
    rho = np.array([0.3, 0.7])
    level = model.with_params(
        model.group_weights[:, None] * rho[None], model.means, model.covariances
    )
    sol = all_subgroups(level, hold_priors=True)
    assert np.allclose(sol.reference_priors, rho, atol=1e-15)
    free = all_subgroups(level)
    assert not np.allclose(free.reference_priors, rho, atol=1e-3)  # the keyword matters here
    for r in level.groups:
        # an affirmative solution keeps the (common) priors: it is feasible for hold_priors
        assert sol.kl <= affirmative_action(level, reference=r).kl + 1e-12
    with pytest.raises(InputError, match="same class priors"):
        all_subgroups(model, hold_priors=True)
