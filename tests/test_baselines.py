"""Baselines against their formulas and POT."""

import numpy as np
import ot
import pytest

from fairsteer.baselines import gaussian_ot_between_groups, mean_matching, reweighing_weights
from fairsteer.errors import InputError
from fairsteer.fit import fit_model


def sample(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b"], n, p=[0.3, 0.7])
    y = (rng.random(n) < np.where(g == "a", 0.2, 0.5)).astype(int)
    X = rng.normal(size=(n, 3)) @ np.array([[1, 0.3, 0], [0, 1, 0.2], [0, 0, 1.0]])
    X *= np.where(g == "a", 2.0, 1.0)[:, None]
    return X + y[:, None], y, g


def test_reweighing_against_formula():
    _X, y, g = sample()
    w = reweighing_weights(y, g)
    for a in ("a", "b"):
        for i in (0, 1):
            rows = (g == a) & (y == i)
            expected = np.mean(g == a) * np.mean(y == i) / np.mean(rows)
            assert np.allclose(w[rows], expected)
    # After reweighing, Y is independent of A in the weighted sample.
    for a in ("a", "b"):
        rate = w[(g == a) & (y == 1)].sum() / w[g == a].sum()
        assert rate == pytest.approx(np.mean(y == 1), rel=1e-12)


def test_mean_matching_equalises_group_means():
    X, _y, g = sample(1)
    Xm = mean_matching(X, g).transform(X, g)
    for a in ("a", "b"):
        np.testing.assert_allclose(Xm[g == a].mean(0), X.mean(0), atol=1e-12)


def test_gaussian_ot_matches_pot_linear_transport():
    X, _y, g = sample(2)
    mp = gaussian_ot_between_groups(X, g, reference="b")
    Xt = mp.transform(X, g)
    np.testing.assert_allclose(Xt[g == "b"], X[g == "b"], atol=1e-10)
    lt = ot.da.LinearTransport(reg=0.0, bias=True)
    lt.fit(Xs=X[g == "a"], Xt=X[g == "b"])
    # POT estimates covariances with the ML (1/n) normaliser as we do; both
    # evaluate the same closed form: agreement to ~1e-9.
    np.testing.assert_allclose(Xt[g == "a"], lt.transform(Xs=X[g == "a"]), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(
        np.cov(Xt[g == "a"].T, bias=True), np.cov(X[g == "b"].T, bias=True), atol=1e-9
    )


def test_gaussian_ot_with_shrinkage_matches_pot_on_shrunk_covariances():
    X, _y, g = sample(3)
    s = 0.3
    mp = gaussian_ot_between_groups(X, g, reference="b", shrinkage=s)

    def shrunk(Z):
        S = np.cov(Z.T, bias=True)
        return (1 - s) * S + s * np.trace(S) / len(S) * np.eye(len(S))

    A, b = ot.gaussian.bures_wasserstein_mapping(
        X[g == "a"].mean(0), X[g == "b"].mean(0), shrunk(X[g == "a"]), shrunk(X[g == "b"])
    )
    # Same closed form through scipy's sqrtm in POT: agreement ~1e-9.
    np.testing.assert_allclose(mp.transform(X, g)[g == "a"], X[g == "a"] @ A + b, atol=1e-7)


def test_model_image_equals_model_of_image_and_bayes_rule_unchanged():
    X, y, g = sample(3)
    model = fit_model(X, y, g)
    mp = gaussian_ot_between_groups(X, g)
    image = mp.transform_model(model)
    refit = fit_model(mp.transform(X, g), y, g)
    # Affine maps commute with ML moment estimation exactly (round-off only).
    np.testing.assert_allclose(image.means, refit.means, atol=1e-10)
    np.testing.assert_allclose(image.covariances, refit.covariances, atol=1e-10)
    from fairsteer.bayes import posterior

    np.testing.assert_allclose(
        posterior(image, mp.transform(X, g), g), posterior(model, X, g), atol=1e-9
    )


def test_bad_input():
    with pytest.raises(InputError, match="unknown reference"):
        gaussian_ot_between_groups(
            np.zeros((4, 1)) + np.arange(4)[:, None], ["a", "a", "b", "b"], reference="c"
        )


def test_reweighing_law_is_the_law_of_the_reweighed_sample():
    from fairsteer.baselines import reweighing_law

    X, y, g = sample(4)
    model = fit_model(X, y, g)
    law = reweighing_law(model)
    # Independent computation: the weighted share of every (group, class) cell
    # of the sample itself (exact up to round-off of sums of 2000 terms).
    w = reweighing_weights(y, g)
    shares = np.array(
        [[w[(g == a) & (y == i)].sum() / w.sum() for i in (0, 1)] for a in ("a", "b")]
    )
    np.testing.assert_allclose(law.priors, shares, rtol=1e-12)
    np.testing.assert_allclose(law.means, model.means, rtol=0, atol=0)
    np.testing.assert_allclose(law.covariances, model.covariances, rtol=0, atol=0)
    # the class no longer depends on the group
    np.testing.assert_allclose(law.class_priors[0], law.class_priors[1], rtol=1e-12)


def test_leace_erases_linear_group_information_and_is_idempotent():
    pytest.importorskip("torch")
    pytest.importorskip("concept_erasure")
    from fairsteer.baselines import leace

    rng = np.random.default_rng(5)
    g = rng.choice(["a", "b", "c"], 900)
    shift = {"a": [2.0, -1, 0, 0], "b": [0, 0.5, 1, 0], "c": [0, 0, 0, 0]}
    X = rng.normal(size=(900, 4)) + np.array([shift[v] for v in g])
    eraser = leace(X, g)
    E = eraser.transform(X)
    Z = (g[:, None] == np.array(["a", "b", "c"])[None, :]).astype(float)
    # LEACE's guarantee (Belrose et al. 2023, Thm 4.3): zero cross-covariance
    # with every group indicator after the map (float64 round-off only).
    cross = (E - E.mean(0)).T @ (Z - Z.mean(0)) / len(Z)
    np.testing.assert_allclose(cross, 0.0, atol=1e-10)
    # A projection in whitened coordinates: erasing twice changes nothing, and
    # the map is affine (the image of a mean is the mean of the images).
    np.testing.assert_allclose(eraser.transform(E), E, atol=1e-10)
    np.testing.assert_allclose(eraser.transform(X[:7].mean(0)[None]), E[:7].mean(0)[None])
    with pytest.raises(InputError, match="one group label per row"):
        leace(X, g[:-1])
