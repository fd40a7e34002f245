"""OptimalSteering: sklearn conventions, frames, JSON, pipelines."""

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.base import clone

from fairsteer.errors import InputError, NotFittedError
from fairsteer.estimator import OptimalSteering
from fairsteer.fit import fit_model


def data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b"], n)
    y = (rng.random(n) < np.where(g == "a", 0.3, 0.6)).astype(int)
    X = rng.normal(size=(n, 2)) * np.where(g == "a", 1.0, 2.0)[:, None] + y[:, None] * [1.0, 2.0]
    return X, y, g


def test_params_clone_and_not_fitted():
    est = OptimalSteering(method="all-subgroups", covariance="shared", seed=3)
    assert clone(est).get_params() == est.get_params()
    assert "method='all-subgroups'" in repr(est)
    with pytest.raises(NotFittedError, match="not fitted"):
        est.transform(np.zeros((2, 2)), sensitive_features=["a", "b"])
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(bogus=1)
    with pytest.raises(InputError, match="prior_mode"):
        OptimalSteering(prior_mode="x").fit(*data()[:2], sensitive_features=data()[2])


def test_fit_resample_weights_and_resample():
    X, y, g = data()
    est = OptimalSteering()
    Xs, ys = est.fit_resample(X, y, sensitive_features=g)
    assert Xs.shape == X.shape and ys is y
    np.testing.assert_allclose(est.sample_weight_, est.maps_.weights(y, g))
    est2 = OptimalSteering(prior_mode="resample")
    Xr, yr = est2.fit_resample(X, y, sensitive_features=g)
    np.testing.assert_allclose(Xr, Xs[est2.sample_indices_])
    np.testing.assert_array_equal(yr, y[est2.sample_indices_])


def test_pandas_and_polars_keep_columns_and_index():
    X, y, g = data(seed=1)
    df = pd.DataFrame(X, columns=["u", "v"], index=np.arange(len(X)) + 100)
    est = OptimalSteering()
    Xs, _ = est.fit_resample(df, pd.Series(y), sensitive_features=pd.Series(g))
    assert list(Xs.columns) == ["u", "v"] and (Xs.index == df.index).all()
    assert list(est.feature_names_in_) == ["u", "v"]
    out = est.transform(df.iloc[:5], sensitive_features=g[:5])
    assert (out.index == df.index[:5]).all()
    with pytest.raises(InputError, match="columns"):
        est.transform(df[["v", "u"]], sensitive_features=g)
    with pytest.raises(InputError, match="3 features"):
        est.transform(np.zeros((2, 3)), sensitive_features=["a", "b"])
    pdf = pl.DataFrame({"u": X[:, 0], "v": X[:, 1]})
    out_pl = (
        OptimalSteering().fit(pdf, y, sensitive_features=g).transform(pdf, sensitive_features=g)
    )
    assert isinstance(out_pl, pl.DataFrame) and out_pl.columns == ["u", "v"]


def test_json_round_trip(tmp_path):
    X, y, g = data(seed=2)
    est = OptimalSteering(method="all-subgroups", family="normal").fit(X, y, sensitive_features=g)
    est.save(tmp_path / "steer.json")
    back = OptimalSteering.load(tmp_path / "steer.json")
    assert back.get_params() == est.get_params()
    # JSON keeps 17 significant digits; maps rebuilt from it agree to ~1e-12.
    np.testing.assert_allclose(
        back.transform(X, sensitive_features=g), est.transform(X, sensitive_features=g), atol=1e-10
    )


def test_steered_training_data_refits_to_ideal():
    X, y, g = data(seed=3)
    est = OptimalSteering(covariance="shared")
    Xs, _ = est.fit_resample(X, y, sensitive_features=g)
    refit = fit_model(Xs, y, g, covariance="shared")
    np.testing.assert_allclose(refit.covariances, est.solution_.ideal.covariances, atol=1e-11)


def test_bad_input_at_fit_and_transform():
    X, y, g = data(seed=4)
    keep = ~((g == "a") & (y == 1))
    with pytest.raises(InputError, match="no samples in group 'a'"):
        OptimalSteering().fit(X[keep], y[keep], sensitive_features=g[keep])
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        OptimalSteering().fit(X_nan, y, sensitive_features=g)
    est = OptimalSteering().fit(X, y, sensitive_features=g)
    with pytest.raises(InputError, match="unknown group 'c'"):
        est.transform(X[:2], sensitive_features=["c", "a"])
    with pytest.raises(InputError, match="non-positive"):
        OptimalSteering(family="lognormal").fit(X, y, sensitive_features=g)
