"""Adult / COMPAS: loader schema, steering on the real training split, baseline wiring."""

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("skfair")
pd = pytest.importorskip("pandas")

from fairsteer.audit import audit  # noqa: E402
from fairsteer.cli import main  # noqa: E402
from fairsteer.errors import InputError  # noqa: E402
from fairsteer.estimator import OptimalSteering  # noqa: E402
from fairsteer.fit import fit_model  # noqa: E402
from fairsteer_experiments.data.tabular import load_tabular  # noqa: E402
from fairsteer_experiments.tabular import CLEAN_ROW, ROWS, inject_bias, run_tabular  # noqa: E402


@pytest.mark.parametrize(
    ("name", "n", "groups"),
    [("adult", 32561, {"Female", "Male"}), ("compas", 6150, {"African-American", "Caucasian"})],
)
def test_loader_schema(name, n, groups):
    data = load_tabular(name)
    assert len(data.frame) == n
    assert set(np.unique(data.groups)) == groups and data.protected in groups
    assert set(np.unique(data.y)) == {0, 1}
    X = data.X_continuous
    assert X.shape == (n, len(data.continuous)) and np.all(np.isfinite(X))
    assert len(data.families) == len(data.continuous)
    for col, fam in zip(data.continuous, data.families):
        if fam == "lognormal":
            assert data.frame[col].min() > 0
    inter = load_tabular(name, "sex-race")
    assert len(np.unique(inter.groups)) == 4 and inter.protected in set(inter.groups)


@pytest.mark.parametrize("name", ["adult", "compas"])
def test_dequantised_keeps_the_integer_part_and_breaks_the_lattice(name):
    data = load_tabular(name)
    rows = np.arange(0, len(data.y), 7)
    raw = data.frame[list(data.continuous)].to_numpy(dtype=float)[rows]
    D = data.dequantised(rows, np.random.default_rng(0))
    for j, col in enumerate(data.continuous):
        orig = np.expm1(raw[:, j]) if col in data.log1p else raw[:, j]
        new = np.expm1(D[:, j]) if col in data.log1p else D[:, j]
        # expm1(log1p(c + u)) recovers c + u to ~1e-9 relative (c <= 1e5).
        np.testing.assert_array_equal(np.floor(new + 1e-9 * (1 + np.abs(new))), np.round(orig))
        assert np.all(new >= np.round(orig)) and np.all(new < np.round(orig) + 1)
        assert len(np.unique(D[:, j])) == len(rows)  # no value repeats: no lattice left


@pytest.mark.parametrize("name", ["adult", "compas"])
def test_steering_the_real_training_split_gives_an_ideal_refit(name):
    data = load_tabular(name)
    rows = np.random.default_rng(0).choice(len(data.y), 3000, replace=False)
    X, y, g = data.X_continuous[rows], data.y[rows], data.groups[rows]
    est = OptimalSteering(method="all-subgroups", family=data.families, covariance="shared")
    Xs, _ = est.fit_resample(X, y, sensitive_features=g)
    refit = fit_model(Xs, y, g, family=data.families, covariance="shared")
    # Steering reproduces the ideal moments to round-off (values up to ~1e1).
    np.testing.assert_allclose(refit.means, est.solution_.ideal.means, atol=1e-9)
    weighted = refit.with_params(est.solution_.ideal.priors, refit.means, refit.covariances)
    assert audit(weighted).is_ideal and not audit(est.model_).is_ideal


def test_threshold_optimizer_is_fair_on_its_own_training_data():
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.linear_model import LogisticRegression

    from fairsteer.metrics import dp_gap

    data = load_tabular("compas")
    X, y, g = data.X_continuous, data.y, data.groups
    to = ThresholdOptimizer(
        estimator=LogisticRegression(max_iter=1000),
        constraints="demographic_parity",
        predict_method="predict_proba",
    )
    to.fit(X, y, sensitive_features=g)
    pred = to.predict(X, sensitive_features=g, random_state=0)
    # Randomised thresholds equalise selection rates in expectation; with ~3000
    # rows per group the realised gap is within a few binomial sigmas (~0.01).
    assert dp_gap(pred, sensitive_features=g) < 0.03


@pytest.mark.parametrize("favourable", [1, 0])
def test_label_flip_touches_only_protected_favourable_labels(favourable):
    y = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0] * 50)
    g = np.array(["p", "p", "p", "p", "p", "p", "q", "q", "q"] * 50)
    flipped = inject_bias(y, g, "p", seed=0, favourable=favourable)
    changed = flipped != y
    assert np.all(g[changed] == "p") and np.all(y[changed] == favourable)
    assert changed.sum() == round(0.3 * np.sum((g == "p") & (y == favourable)))
    assert np.array_equal(flipped, inject_bias(y, g, "p", seed=0, favourable=favourable))


@pytest.mark.slow
def test_quick_cli_run_is_reproducible_and_complete(tmp_path, capsys):
    # The CLI path CI runs (`fairsteer experiment compas --quick`), one seed,
    # then the library call with the same seed: identical summaries.
    report = tmp_path / "compas.html"
    code = main(
        ["experiment", "compas", "--quick", "--seeds", "0", "--json", "--report", str(report)]
    )
    assert code == 0
    a = json.loads(capsys.readouterr().out)
    assert a["quick"] and a["seeds"] == [0] and list(a["summary"]) == list(ROWS)
    assert a["steering"]["EF-All-subgroups"]["ideal_after"] == [True]
    b = run_tabular("compas", seeds=(0,), quick=True)
    assert json.dumps(b["summary"]) == json.dumps(a["summary"])
    # A label-flip run adds the clean-label reference: the clean run's own
    # unmitigated models (same split, same seed), while its unmitigated row
    # trained on the flipped labels differs.
    c = run_tabular("compas", seeds=(0,), quick=True, bias="label-flip")
    assert list(c["summary"]) == [*ROWS, CLEAN_ROW]
    assert c["summary"][CLEAN_ROW] == a["summary"]["No mitigation"]
    assert c["summary"]["No mitigation"] != a["summary"]["No mitigation"]
    # Group-aware models (THEORY 5): a group-wide shift (mean matching) moves
    # each group's logit by a constant that the LR's group coefficient absorbs,
    # so its DP gap stays that of the unmitigated group-aware LR (up to the L2
    # penalty's O(1/n) pull on the coefficients: 0.02 allows for it), whereas
    # the group-blind LR's gap collapses (0.2 -> ~0.01 on COMPAS).
    # CorrelationRemover drops the group by construction: unchanged.
    d = run_tabular("compas", seeds=(0,), quick=True, group_aware=True)
    dp = {k: d["summary"][k]["LR"]["dp"]["mean"] for k in ("No mitigation", "Mean matching")}
    blind = {k: a["summary"][k]["LR"]["dp"]["mean"] for k in ("No mitigation", "Mean matching")}
    assert abs(dp["Mean matching"] - dp["No mitigation"]) < 0.02
    assert blind["No mitigation"] - blind["Mean matching"] > 0.1
    assert d["summary"]["CorrelationRemover"] == a["summary"]["CorrelationRemover"]
    if importlib.util.find_spec("matplotlib") is not None:
        html = report.read_text()
        assert "ExpGradient (TPR)" in html and "<img" in html


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seeds": ()}, "at least one seed"), ({"bias": "flip"}, "bias must be")],
)
def test_run_tabular_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        run_tabular("compas", **kwargs)


@pytest.mark.parametrize("name", ["adult", "compas"])
def test_quantile_bins_reproduce_the_unweighted_booster(name):
    # QuantileBins in front of the booster must give exactly the booster's own
    # (unweighted) binning: identical probabilities on held-out rows, for
    # lattice-valued and dequantised features alike. Weights then change only
    # the fit, as in the unweighted-binning booster.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline

    from fairsteer_experiments._binning import QuantileBins

    data = load_tabular(name)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(data.y))[:6000]
    for X in (data.X_continuous[rows], data.dequantised(rows, rng)):
        y = data.y[rows]
        raw = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X[:4000], y[:4000])
        binned = make_pipeline(
            QuantileBins(), HistGradientBoostingClassifier(max_iter=20, random_state=0)
        ).fit(X[:4000], y[:4000])
        np.testing.assert_array_equal(raw.predict_proba(X[4000:]), binned.predict_proba(X[4000:]))


# ---------------------------------------------------------------------------
# The new options as rows: the auto family and categorical context (issue 13).


def _soft_map_by_hand(model, ideal, X, g_codes):
    """sum_y P(y | x, a) T_ay(x) on the Gaussian scale, computed without fairsteer's kernels.

    Posterior from scipy's Gaussian densities and the cell priors; T_ay the
    Gaussian OT map x -> mu~ + A (x - mu), A = S^-1/2 (S^1/2 S~ S^1/2)^1/2 S^-1/2
    (Peyre and Cuturi 2019, Remark 2.31), matrix roots by scipy.linalg.sqrtm.
    """
    from scipy.linalg import sqrtm
    from scipy.stats import multivariate_normal

    Z = model.to_gaussian_scale(X, g_codes)
    out = np.empty_like(Z)
    K = model.priors.shape[1]
    for a in np.unique(g_codes):
        rows = g_codes == a
        dens = np.column_stack(
            [
                model.priors[a, i]
                * multivariate_normal(model.means[a, i], model.covariances[a, i]).pdf(Z[rows])
                for i in range(K)
            ]
        )
        post = dens / dens.sum(axis=1, keepdims=True)
        mapped = np.zeros_like(Z[rows])
        for i in range(K):
            S, St = model.covariances[a, i], ideal.covariances[a, i]
            r = np.real(sqrtm(S))
            ri = np.linalg.inv(r)
            A = ri @ np.real(sqrtm(r @ St @ r)) @ ri
            T = ideal.means[a, i] + (Z[rows] - model.means[a, i]) @ A.T
            mapped += post[:, [i]] * T
        out[rows] = mapped
    return model.from_gaussian_scale(out, g_codes)


@pytest.mark.parametrize("name", ["adult", "compas"])
def test_context_rows_steer_training_rows_and_map_test_rows_within_their_level(name):
    from fairsteer.context import fit_context_model, solve_context
    from fairsteer_experiments.tabular import (
        AUTO_ROW,
        CONTEXT_MIN_COUNT,
        CONTEXT_ROWS,
        COVARIANCE,
        _option_rows,
        _split,
    )

    data = load_tabular(name)
    sp = _split(data, 0, True, "none", True, False)
    pre, steering = _option_rows(sp, seed=0)
    assert list(pre) == [AUTO_ROW, *(n for n, _ in CONTEXT_ROWS)]
    # auto's choice is a real family per feature, never the placeholder.
    assert len(steering[AUTO_ROW]["families"]) == sp.X_tr.shape[1]
    assert "auto" not in steering[AUTO_ROW]["families"]
    # The same fit the rows use (deterministic given the seed), to recompute by hand.
    est_family = fit_model(sp.X_tr, sp.y_tr, sp.g_tr, family="auto", covariance=COVARIANCE).family
    cm = fit_context_model(
        sp.X_tr, sp.y_tr, sp.g_tr, sp.K_tr, family=est_family, covariance=COVARIANCE,
        min_count=CONTEXT_MIN_COUNT, merge_rare=True,
    )  # fmt: skip
    L = cm.n_levels
    # Raw value -> level by the level names (merged members joined by " | ").
    level_of = {v: c for c, lev in enumerate(cm.levels) for v in lev.split(" | ")}
    if name == "adult":  # the merge rule joins the sex-coded pair first (docs/context.md)
        assert level_of["Husband"] == level_of["Wife"]
    raw_te = np.array([level_of[v] for v in sp.K_te])
    n_other = sp.O_tr.shape[1]
    groups = np.unique(sp.g_tr)
    for row, method in CONTEXT_ROWS:
        _, w, X_te, C_tr, C_te = pre[row]
        assert C_tr.shape == (sp.y_tr.size, n_other + L) and C_te.shape[1] == n_other + L
        # The other categorical columns pass through unchanged ...
        np.testing.assert_array_equal(C_tr[:, :n_other], sp.O_tr)
        np.testing.assert_array_equal(C_te[:, :n_other], sp.O_te)
        # ... test rows keep their own (merged) level ...
        np.testing.assert_array_equal(np.argmax(C_te[:, n_other:], axis=1), raw_te)
        assert np.all(C_te[:, n_other:].sum(axis=1) == 1)
        # ... and training rows were re-drawn so the level law given the class no
        # longer depends on the group: each (group, class) count is the
        # rounding of n_ay Q(c|y), so two groups differ by < 1/n_a1y + 1/n_a2y.
        lv_tr = np.argmax(C_tr[:, n_other:], axis=1)
        for y in (0, 1):
            laws, ns = [], []
            for a in groups:
                rows = (sp.g_tr == a) & (sp.y_tr == y)
                laws.append(np.bincount(lv_tr[rows], minlength=L) / rows.sum())
                ns.append(rows.sum())
            assert np.max(np.abs(laws[0] - laws[1])) < 1 / ns[0] + 1 / ns[1]
        # Weights pi~_y / pi[a, y]: every group gets the same weighted class law.
        shares = [np.sum(w[(sp.g_tr == a) & (sp.y_tr == 1)]) / np.sum(w[sp.g_tr == a])
                  for a in groups]  # fmt: skip
        assert abs(shares[0] - shares[1]) < 1e-9  # exact ratios, round-off only
        # Test features: the soft map of the row's own level, recomputed by hand.
        sol = solve_context(cm, method, seed=0)
        g_codes = np.searchsorted(np.asarray(cm.groups, dtype=object), sp.g_te)
        for c in range(L):
            at = raw_te == c
            if at.any():
                want = _soft_map_by_hand(cm.cells[c], sol.ideal.cells[c], sp.X_te[at], g_codes[at])
                # Same formula, scipy's densities and sqrtm instead of Cholesky
                # kernels: agreement to ~1e-8 on values of order 1e1.
                np.testing.assert_allclose(X_te[at], want, rtol=1e-7, atol=1e-7)
        assert steering[row]["levels"] == list(cm.levels) and steering[row]["moved"] > 0


@pytest.mark.slow
def test_quick_run_has_the_option_rows_and_states_the_test_time_rule():
    from fairsteer_experiments.tabular import AUTO_ROW, CONTEXT_ROWS, TEST_TIME_NOTE, format_table

    res = run_tabular("compas", seeds=(0,), quick=True, group_aware=True, bias="label-flip")
    new = [AUTO_ROW, *(n for n, _ in CONTEXT_ROWS)]
    assert list(res["summary"]) == [*ROWS, CLEAN_ROW] and set(new) <= set(ROWS)
    for row in new:
        for model in ("LR", "GBT"):
            s = res["summary"][row][model]
            assert 0.5 < s["accuracy"]["mean"] <= 1 and 0 <= s["eo"]["mean"] <= 1
    assert set(res["options"]) == set(new)
    text = format_table(res)
    assert TEST_TIME_NOTE in text and "context 'c_charge_degree'" in text
