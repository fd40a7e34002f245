"""GaussianModel: estimation against numpy/sklearn, JSON round trip, validation."""

import json

import numpy as np
import pytest
from sklearn.covariance import oas

from fairsteer.errors import InputError
from fairsteer.fit import fit_model, shrink_covariance
from fairsteer.model import GaussianModel


def data(seed=0, n=500, d=3, positive=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if positive:
        X = np.exp(X)
    return X, rng.integers(0, 2, n), rng.choice(["f", "m"], n)


def test_per_class_fit_matches_numpy():
    X, y, g = data()
    model = fit_model(X, y, g)
    for a, gl in enumerate(model.groups):
        for i, cl in enumerate(model.classes):
            rows = X[(g == gl) & (y == cl)]
            # ML estimate (bias=True); sums of 125 numbers: ~1e-14 relative.
            np.testing.assert_allclose(model.means[a, i], rows.mean(0), rtol=1e-12)
            np.testing.assert_allclose(
                model.covariances[a, i], np.cov(rows.T, bias=True), rtol=1e-10
            )
            assert model.priors[a, i] == pytest.approx(len(rows) / len(X))
    assert not model.shared_covariance


def test_shared_fit_is_pooled_within_class_covariance():
    X, y, g = data(1)
    model = fit_model(X, y, g, covariance="shared")
    assert model.shared_covariance
    assert GaussianModel.from_json(model.to_json()).shared_covariance
    for a, gl in enumerate(model.groups):
        resid = np.concatenate(
            [X[(g == gl) & (y == c)] - X[(g == gl) & (y == c)].mean(0) for c in (0, 1)]
        )
        np.testing.assert_allclose(
            model.covariances[a, 0], resid.T @ resid / len(resid), rtol=1e-10
        )


def test_oas_matches_sklearn():
    rng = np.random.default_rng(3)
    Xc = rng.normal(size=(20, 6)) @ rng.normal(size=(6, 6))
    S = np.cov(Xc.T, bias=True)
    want, _ = oas(Xc)
    # Same formula, same inputs: agreement to round-off.
    np.testing.assert_allclose(shrink_covariance(S, 20, "oas"), want, rtol=1e-10)
    np.testing.assert_allclose(shrink_covariance(S, 20, 0.0), S)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        shrink_covariance(S, 20, 1.5)


def test_shrinkage_makes_small_cells_usable():
    X, y, g = data(4, n=12, d=8)
    with pytest.raises(InputError, match="shrinkage"):
        fit_model(X, y, g)
    model = fit_model(X, y, g, shrinkage="oas")
    assert np.all(np.linalg.eigvalsh(model.covariances) > 0)


def test_lognormal_is_normal_on_log_x():
    X, y, g = data(5, positive=True)
    logn = fit_model(X, y, g, family="lognormal")
    norm = fit_model(np.log(X), y, g)
    np.testing.assert_allclose(logn.covariances, norm.covariances, rtol=1e-12)
    mixed = fit_model(
        np.c_[X[:, :1], np.log(X[:, 1:])], y, g, family=("lognormal", "normal", "normal")
    )
    np.testing.assert_allclose(mixed.means, norm.means, rtol=1e-12)
    assert mixed.families == ("lognormal", "normal", "normal")
    with pytest.raises(InputError, match="non-positive"):
        fit_model(np.log(X), y, g, family="lognormal")


def test_json_round_trip(tmp_path):
    X, y, g = data(6, positive=True)
    model = fit_model(X, y, g, family=("lognormal", "normal", "normal"), features=["a", "b", "c"])
    path = tmp_path / "m.json"
    model.save(path)
    back = GaussianModel.load(path)
    assert back.groups == model.groups and back.classes == model.classes
    assert back.family == model.family and back.features == model.features
    np.testing.assert_array_equal(back.covariances, model.covariances)
    np.testing.assert_array_equal(back.priors, model.priors)


def good_dict():
    return {
        "family": "normal",
        "groups": ["a", "b"],
        "classes": [0, 1],
        "priors": [[0.25, 0.25], [0.25, 0.25]],
        "means": [[[0.0], [1.0]], [[0.0], [2.0]]],
        "covariances": [[[[1.0]], [[1.0]]], [[[1.0]], [[2.0]]]],
    }


@pytest.mark.parametrize(
    ("key", "value", "msg"),
    [
        ("priors", [[0.5, 0.25], [0.25, 0.25]], "sum to 1"),
        ("priors", [[0.5, 0.0], [0.25, 0.25]], "not positive"),
        ("means", [[[0.0], [1.0]]], "means must have shape"),
        ("covariances", [[[[1.0]], [[-1.0]]], [[[1.0]], [[2.0]]]], "not positive definite"),
        ("covariances", [[[[1.0]], [[1.0]]]], "covariances must have shape"),
        ("family", "gamma", "family must be one of"),
        ("means", [[[0.0], [float("nan")]], [[0.0], [2.0]]], "NaN or inf"),
        ("means", [[[0.0], [1.0, 2.0]], [[0.0], [2.0]]], "consistent shape"),
        ("groups", ["a", "a"], "unique"),
    ],
)
def test_bad_model_json(key, value, msg):
    bad = good_dict()
    bad[key] = value
    with pytest.raises(InputError, match=msg):
        GaussianModel.from_json(json.dumps(bad))


def test_malformed_json_and_missing_keys():
    with pytest.raises(InputError, match="malformed JSON"):
        GaussianModel.from_json("{not json")
    with pytest.raises(InputError, match="missing"):
        GaussianModel.from_json('{"priors": []}')


def test_model_is_immutable():
    model = GaussianModel.from_json(json.dumps(good_dict()))
    with pytest.raises(ValueError, match="read-only"):
        model.means[0, 0, 0] = 3.0
