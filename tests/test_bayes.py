"""Posterior and Bayes decisions against scipy densities."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal as mvn

from fairsteer.bayes import bayes_predict, posterior
from fairsteer.errors import InputError
from fairsteer.fit import fit_model


def test_posterior_matches_scipy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 2)) + rng.integers(0, 3, 600)[:, None]
    y = rng.integers(0, 3, 600)
    g = rng.integers(0, 2, 600)
    model = fit_model(X, y, g)
    got = posterior(model, X[:50], g[:50])
    for k in range(50):
        a = g[k]
        joint = np.array(
            [
                model.priors[a, i] * mvn(model.means[a, i], model.covariances[a, i]).pdf(X[k])
                for i in range(3)
            ]
        )
        # Densities of size ~1e-2 computed two ways: ~1e-12 relative.
        np.testing.assert_allclose(got[k], joint / joint.sum(), rtol=1e-9)


def test_bayes_predict_cost_threshold_and_matrix():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 1)) + rng.integers(0, 2, 400)[:, None]
    y = (X[:, 0] + rng.normal(size=400) > 0.5).astype(int)
    g = rng.integers(0, 2, 400)
    model = fit_model(X, y, g)
    post = posterior(model, X, g)
    np.testing.assert_array_equal(bayes_predict(model, X, g, 0.3), post[:, 1] >= 0.3)
    # Cost c for a false positive and 1 - c for a false negative as a matrix.
    C = np.array([[0.0, 0.3], [0.7, 0.0]])
    np.testing.assert_array_equal(bayes_predict(model, X, g, C), post[:, 1] >= 0.3)
    with pytest.raises(InputError, match=r"\(0, 1\)"):
        bayes_predict(model, X, g, 1.5)
    with pytest.raises(InputError, match="unknown group"):
        bayes_predict(model, X, np.full(400, 7), 0.5)
