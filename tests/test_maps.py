"""Steering maps: exact ideal moments, POT agreement, soft/hard vs direct loops."""

import numpy as np
import ot
import pytest
from scipy.stats import multivariate_normal as mvn

from fairsteer.audit import audit
from fairsteer.errors import InputError
from fairsteer.fit import fit_model
from fairsteer.maps import SteeringMaps
from fairsteer.solve import solve


def biased_sample(n=3000, d=3, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    g = rng.choice(["f", "m"], n, p=[0.4, 0.6])
    y = (rng.random(n) < np.where(g == "f", 0.3, 0.5)).astype(int)
    scale = np.where(g == "f", 0.6, 1.0)[:, None]
    X = rng.normal(size=(n, d)) * (1 + y[:, None] * 0.5) * scale + y[:, None] * scale * 1.5
    if positive:
        X = np.exp(X / 2)
    return X, y, g


@pytest.mark.parametrize("covariance", ["shared", "per-class"])
@pytest.mark.parametrize("method", ["affirmative", "all-subgroups"])
def test_steered_sample_has_exactly_the_ideal_moments(covariance, method):
    X, y, g = biased_sample()
    model = fit_model(X, y, g, covariance=covariance)
    sol = solve(model, method)
    maps = SteeringMaps.from_solution(model, sol)
    Xs = maps.steer(X, y, g)
    refit = fit_model(Xs, y, g, covariance=covariance)
    # The OT map sends the ML moments to the target moments exactly; what is
    # left is float64 round-off of d x d products: <= 1e-12 relative.
    np.testing.assert_allclose(refit.means, sol.ideal.means, atol=1e-11)
    np.testing.assert_allclose(refit.covariances, sol.ideal.covariances, atol=1e-11)
    # With the prior weights the weighted cell proportions are w[a] pi~[i].
    w = maps.weights(y, g)
    for a, ga in enumerate(model.groups):
        for i in range(2):
            share = w[(g == ga) & (y == i)].sum() / w.sum()
            assert share == pytest.approx(sol.ideal.priors[a, i], rel=1e-12)
    weighted = refit.with_params(sol.ideal.priors, refit.means, refit.covariances)
    assert audit(weighted, n_samples=20_000).is_ideal


def test_ot_matrices_match_pot_and_push_covariances():
    X, y, g = biased_sample(seed=1)
    model = fit_model(X, y, g)
    maps = SteeringMaps.from_solution(model, solve(model))
    for a in range(2):
        for i in range(2):
            A_pot, b_pot = ot.gaussian.bures_wasserstein_mapping(
                model.means[a, i],
                maps.ideal.means[a, i],
                model.covariances[a, i],
                maps.ideal.covariances[a, i],
            )
            # Same closed form computed through scipy.linalg.sqrtm: ~1e-10.
            np.testing.assert_allclose(maps.A[a, i], A_pot, rtol=1e-8, atol=1e-9)
            x = model.means[a, i] + 1.0
            np.testing.assert_allclose(
                maps.ideal.means[a, i] + maps.A[a, i] @ (x - model.means[a, i]),
                A_pot @ x + b_pot,
                atol=1e-8,
            )


def test_soft_and_hard_match_direct_per_row_computation():
    X, y, g = biased_sample(n=1500, seed=2)
    model = fit_model(X, y, g)
    maps = SteeringMaps.from_solution(model, solve(model))
    Xt = X[:40]
    gt = g[:40]
    soft = maps.transform(Xt, gt, "soft")
    hard = maps.transform(Xt, gt, "hard")
    for k in range(40):
        a = model.groups.index(gt[k])
        dens = np.array(
            [
                model.priors[a, i] * mvn(model.means[a, i], model.covariances[a, i]).pdf(Xt[k])
                for i in range(2)
            ]
        )
        post = dens / dens.sum()
        images = [
            maps.ideal.means[a, i] + maps.A[a, i] @ (Xt[k] - model.means[a, i]) for i in range(2)
        ]
        # Posterior via scipy densities vs fairsteer's log-space posterior: 1e-10.
        np.testing.assert_allclose(soft[k], post @ np.array(images), atol=1e-9)
        np.testing.assert_allclose(hard[k], images[int(np.argmax(post))], atol=1e-12)
    np.testing.assert_array_equal(maps.transform(Xt, gt, "none"), Xt)
    given = maps.transform(Xt, gt, "hard", y_pred=y[:40])
    np.testing.assert_allclose(given, maps.steer(Xt, y[:40], gt))


def test_inverse_round_trip_and_lognormal_columns():
    X, y, g = biased_sample(seed=3, positive=True)
    model = fit_model(X, y, g, family=("lognormal", "normal", "lognormal"))
    maps = SteeringMaps.from_solution(model, solve(model))
    Xs = maps.steer(X, y, g)
    assert np.all(Xs[:, [0, 2]] > 0)
    # Inverse of an affine map with condition number ~10: round-off ~1e-13.
    np.testing.assert_allclose(maps.inverse(Xs, y, g), X, rtol=1e-10)
    refit = fit_model(Xs, y, g, family=("lognormal", "normal", "lognormal"))
    np.testing.assert_allclose(refit.means, maps.ideal.means, atol=1e-11)


def test_resample_matches_ideal_priors():
    X, y, g = biased_sample(seed=4)
    model = fit_model(X, y, g)
    maps = SteeringMaps.from_solution(model, solve(model))
    rows = maps.resample(y, g, rng=0)
    for a, ga in enumerate(model.groups):
        n_a = np.sum(g == ga)
        assert np.sum(g[rows] == ga) == n_a
        for i in range(2):
            # Largest-remainder rounding: within one row of n_a * pi~[i].
            assert (
                abs(np.sum((g[rows] == ga) & (y[rows] == i)) - n_a * maps.ideal.class_priors[a, i])
                <= 1
            )


def test_json_round_trip_and_bad_input():
    X, y, g = biased_sample(seed=5)
    model = fit_model(X, y, g)
    maps = SteeringMaps.from_solution(model, solve(model))
    back = SteeringMaps.from_dict(maps.to_dict())
    np.testing.assert_allclose(back.steer(X, y, g), maps.steer(X, y, g), atol=1e-12)
    with pytest.raises(InputError, match="unknown group 'x'"):
        maps.transform(X[:2], ["x", "f"])
    with pytest.raises(InputError, match="mode must be one of"):
        maps.transform(X[:2], ["f", "f"], "magic")
    with pytest.raises(InputError, match="shape"):
        maps.steer(X[:, :2], y, g)


@pytest.mark.parametrize(("chunk_rows", "workers"), [(2048, 1), (2048, 3), (100_000, 2)])
def test_row_parallel_shared_steer_equals_the_per_row_formula(monkeypatch, chunk_rows, workers):
    """The numpy shared-covariance steer (row slices per worker, chunks per group,
    gathered and scattered) gives mu~[a,i] + A[a,i] (x - mu[a,i]) row by row, with
    several chunks per group (2048 rows) or one, on one or several workers."""
    import fairsteer._threads as threads
    import fairsteer.kernels as kernels

    monkeypatch.setattr(threads, "cpu_workers", lambda: workers)
    monkeypatch.setattr(kernels, "STEER_PARALLEL_ROWS", 1)
    monkeypatch.setattr(kernels, "STEER_PARALLEL_BYTES", 0)

    X, y, g = biased_sample(n=5000, seed=5)
    model = fit_model(X, y, g, covariance="shared")
    maps = SteeringMaps.from_solution(model, solve(model, "all-subgroups"))
    monkeypatch.setattr(kernels, "STEER_CHUNK_BYTES", 8 * 3 * chunk_rows)  # d = 3
    Xs = maps.steer(X, y, g)
    a = np.array([model.groups.index(v) for v in g])
    expected = np.stack(
        [
            maps.ideal.means[a[k], y[k]] + maps.A[a[k], y[k]] @ (X[k] - model.means[a[k], y[k]])
            for k in range(len(X))
        ]
    )
    # affine maps of O(1) values with O(1) matrices, two summation orders: ~1e-15
    np.testing.assert_allclose(Xs, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(maps.inverse(Xs, y, g), X, rtol=1e-10, atol=1e-12)
