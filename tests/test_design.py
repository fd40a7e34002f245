"""The seams of the core: families, covariance structure, the fitter, options."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fairsteer import (
    Families,
    Fitter,
    GaussianModel,
    InputError,
    OptimalSteering,
    SolverOptions,
    fit_model,
    solve,
)
from fairsteer.data.synthetic import case_study, sample_model
from fairsteer.families import FAMILIES, Family, register_family


def _data(seed=0, n=600):
    """Rows of the synthetic case study's biased law (2 groups, 2 classes)."""
    rng = np.random.default_rng(seed)
    X, y, g = sample_model(case_study("multivariate").biased, n, rng)
    return X, y, g


# ---------------------------------------------------------------- families
def test_families_round_trip_and_json():
    rng = np.random.default_rng(0)
    X = np.exp(rng.normal(size=(50, 3)))
    fam = Families(["lognormal", "normal", "lognormal"], 3)
    Z = fam.forward(X)
    # log is the forward map of the log-normal family; identity for normal
    np.testing.assert_array_equal(Z[:, 0], np.log(X[:, 0]))
    np.testing.assert_array_equal(Z[:, 1], X[:, 1])
    # exp(log x) round-trips to a few ulps (relative 1e-15 per value)
    np.testing.assert_allclose(fam.inverse(Z), X, rtol=1e-14)
    assert Families.from_json(json.loads(json.dumps(fam.to_json())), 3) == fam
    assert Families("normal", 4).to_json() == "normal"
    assert fam.names == ("lognormal", "normal", "lognormal")
    # the log-Jacobian of log x is -log x (change of variables)
    np.testing.assert_allclose(fam.log_jacobian(X), -np.log(X[:, 0]) - np.log(X[:, 2]))


def test_families_reject_bad_specs_and_values():
    with pytest.raises(InputError, match="family must be one of"):
        Families("gamma", 2)
    with pytest.raises(InputError, match="3 families given for 2 features"):
        Families(["normal"] * 3, 2)
    with pytest.raises(InputError, match=r"holds 0.0 at row 1, a non-positive value"):
        Families("lognormal", 1).forward(np.array([[1.0], [0.0]]))


def test_a_registered_family_fits_into_the_whole_pipeline():
    """A new family plugs in through the registry: fit, JSON, steer all use it."""

    @register_family
    class Shifted(Family):  # x -> x - c with c fitted (a trivial family with a parameter)
        name = "test-shifted"

        def __init__(self, c: float | None = None) -> None:
            self.c = c

        @property
        def fitted(self) -> bool:
            return self.c is not None

        def fit(self, x, groups=None, n_groups=1):
            return Shifted(float(np.median(x)))

        def forward(self, x, groups=None):
            return x - self.c

        def inverse(self, z, groups=None):
            return z + self.c

        def log_jacobian(self, x, groups=None):
            return np.zeros_like(x)

        def params(self):
            return {} if self.c is None else {"c": self.c}

        @classmethod
        def from_params(cls, params):
            return cls(params.get("c"))

    try:
        X, y, g = _data()
        model = fit_model(X, y, g, family="test-shifted", covariance="shared")
        assert all(f.fitted for f in model.family.members)
        back = GaussianModel.from_json(model.to_json())
        assert back.family == model.family
        # a shift is affine: the KL of the nearest ideal model cannot change
        # (THEORY 4d); solvers agree to their stationarity tolerance (~1e-9 rel)
        plain = fit_model(X, y, g, covariance="shared")
        assert solve(model).kl == pytest.approx(solve(plain).kl, rel=1e-7)
    finally:
        FAMILIES.pop("test-shifted")


# ----------------------------------------------------- covariance structure
def test_covariance_structure_is_an_explicit_field():
    X, y, g = _data()
    shared = fit_model(X, y, g, covariance="shared")
    per_class = fit_model(X, y, g)
    assert shared.covariance == "shared" and shared.shared_covariance
    assert per_class.covariance == "per-class" and not per_class.shared_covariance
    for model in (shared, per_class):
        back = GaussianModel.from_json(model.to_json())
        assert back.covariance == model.covariance
    # old JSON without the key: the structure is detected from the values
    data = shared.to_dict()
    del data["covariance"]
    assert GaussianModel.from_dict(data).covariance == "shared"
    # equal covariances may still be declared per-class, never the reverse
    covs = np.array(shared.covariances)
    assert (
        GaussianModel(shared.priors, shared.means, covs, covariance="per-class").covariance
        == "per-class"
    )
    with pytest.raises(InputError, match="same covariance for every class"):
        GaussianModel(per_class.priors, per_class.means, per_class.covariances, covariance="shared")
    with pytest.raises(InputError, match="covariance must be one of"):
        GaussianModel(shared.priors, shared.means, covs, covariance="diagonal")


def test_the_structure_carries_to_the_ideal_model():
    X, y, g = _data()
    for cov in ("shared", "per-class"):
        model = fit_model(X, y, g, covariance=cov)
        assert solve(model, "all-subgroups").ideal.covariance == cov


# ------------------------------------------------------------------ fitter
@pytest.mark.parametrize("covariance", ["per-class", "shared"])
def test_fitter_over_batches_equals_one_shot(covariance):
    X, y, g = _data(n=900)
    X = np.abs(X) + 1.0
    fam = ["lognormal", "normal", "normal", "normal", "normal"][: X.shape[1]]
    one = fit_model(X, y, g, family=fam, covariance=covariance, shrinkage="oas")
    fitter = Fitter(family=fam, covariance=covariance, shrinkage="oas")
    # uneven batches, one of which lacks a whole group (aligned when merged)
    cuts = [0, 7, 300, 301, 900]
    order = np.argsort(g, kind="stable")
    for lo, hi in itertools.pairwise(cuts):
        rows = order[lo:hi]
        fitter.update(X[rows], y[rows], g[rows])
    batched = fitter.model()
    # Chan's pairwise merge vs one pass: round-off of sums of ~1e3 terms
    # (relative ~1e-13 at these magnitudes)
    np.testing.assert_allclose(batched.means, one.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batched.covariances, one.covariances, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched.priors, one.priors, rtol=1e-14)
    assert batched.covariance == covariance and batched.family == one.family
    halves = Fitter(family=fam, covariance=covariance, shrinkage="oas")
    a, b = Fitter(family=fam), Fitter(family=fam)
    a.update(X[:450], y[:450], g[:450])
    b.update(X[450:], y[450:], g[450:])
    merged = halves.merge(a).merge(b).model()
    np.testing.assert_allclose(merged.covariances, one.covariances, rtol=1e-10, atol=1e-12)


def test_fitter_errors_are_clear():
    with pytest.raises(InputError, match="covariance must be one of"):
        Fitter(covariance="full")
    with pytest.raises(InputError, match="shrinkage must lie in"):
        Fitter(shrinkage=2.0)
    with pytest.raises(InputError, match="no rows"):
        Fitter().model()


# ----------------------------------------------------------------- options
def test_solver_options_reach_the_solver():
    X, y, g = _data()
    model = fit_model(X, y, g)
    capped = solve(model, "all-subgroups", options={"max_iter": 1})
    # one sweep cannot reach the 1e-7 stationarity certificate on this law
    assert capped.diagnostics["sweeps"] == 1 and capped.diagnostics["converged"] is False
    full = solve(model, "all-subgroups", options=SolverOptions(gtol=1e-7))
    assert full.diagnostics["converged"]
    with pytest.raises(InputError, match="unknown solver option"):
        solve(model, options={"tolerance": 1e-3})
    with pytest.raises(InputError, match="gtol must lie in"):
        SolverOptions(gtol=0.0)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"family": "gamma"}, "family must be one of"),
        ({"shrinkage": "ledoit"}, "shrinkage must be"),
        ({"method": "all-subgroups", "reference": 0}, "reference applies"),
        ({"solver_options": {"starts": 3}}, "unknown solver option"),
        ({"covariance": "diag"}, "covariance must be one of"),
    ],
)
def test_estimator_checks_every_parameter_before_the_data(params, match):
    est = OptimalSteering(**params)
    # X is not even an array: the parameters are checked first
    with pytest.raises(InputError, match=match):
        est.fit(object(), None, sensitive_features=None)


def test_set_params_raises_input_error():
    with pytest.raises(InputError, match="invalid parameter 'alpha'"):
        OptimalSteering().set_params(alpha=1)


def test_estimator_saves_solver_options():
    X, y, g = _data()
    est = OptimalSteering(solver_options=SolverOptions(n_random_starts=1)).fit(
        X, y, sensitive_features=g
    )
    back = OptimalSteering.from_dict(json.loads(json.dumps(est.to_dict())))
    assert SolverOptions.coerce(back.solver_options) == SolverOptions(n_random_starts=1)
