"""Audit: closed form vs Monte Carlo vs an independent simulation of the Bayes rule."""

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from fairsteer.audit import _binary_monte_carlo, audit
from fairsteer.bayes import bayes_predict
from fairsteer.model import GaussianModel


def model_from(means, covs, priors, groups=("a", "b")):
    return GaussianModel(np.asarray(priors), np.asarray(means), np.asarray(covs), groups)


def biased_shared(seed=0, d=2):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(2, 2, d)) * 1.5
    A = rng.normal(size=(2, d, d))
    S = A @ np.swapaxes(A, -1, -2) + np.eye(d)
    covs = np.repeat(S[:, None], 2, axis=1)
    return model_from(means, covs, [[0.3, 0.2], [0.35, 0.15]])


def ideal_pair(reflect=True, per_class=True, K=2, d=2, seed=0):
    """Group b = affine image of group a (with a reflection), equal class priors."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(K, d)) * 2
    B = rng.normal(size=(K if per_class else 1, d, d))
    S = B @ np.swapaxes(B, -1, -2) + np.eye(d)
    S = S if per_class else np.repeat(S, K, axis=0)
    G = rng.normal(size=(d, d)) + 2 * np.eye(d)
    if reflect and np.linalg.det(G) > 0:
        G[0] *= -1
    t = rng.normal(size=d)
    means = np.stack([mu, mu @ G.T + t])
    covs = np.stack([S, G @ S @ G.T])
    pi = rng.dirichlet(np.ones(K))
    return model_from(means, covs, np.stack([0.6 * pi, 0.4 * pi]))


def simulate(model, n, rng):
    m, K = model.priors.shape
    cells = rng.choice(m * K, size=n, p=model.priors.ravel())
    a, y = np.divmod(cells, K)
    X = np.empty((n, model.n_features))
    for c in range(m * K):
        idx = cells == c
        X[idx] = rng.multivariate_normal(
            model.means[c // K, c % K], model.covariances[c // K, c % K], idx.sum()
        )
    return X, y, np.asarray(model.groups, dtype=object)[a]


def test_closed_form_matches_monte_carlo_sup():
    model = biased_shared(1)
    exact = audit(model)
    assert exact.method == "closed-form"
    mc = _binary_monte_carlo(model, 200_000, np.random.default_rng(0))
    for name in ("dp", "eo", "equalized_odds"):
        # DKW: each Monte-Carlo gap is within mc["accuracy"] w.p. >= 1 - 4e-3.
        assert abs(getattr(exact, name + "_gap") - mc[name]) <= mc["accuracy"]
        assert abs(getattr(exact, name + "_gap_half") - mc[name + "_half"]) <= mc["accuracy"]


@pytest.mark.parametrize("shared", [True, False])
def test_gaps_at_half_match_independent_simulation(shared):
    model = (
        biased_shared(2)
        if shared
        else ideal_pair(seed=3).with_params(
            [[0.3, 0.2], [0.35, 0.15]],
            ideal_pair(seed=3).means + 0.4,
            ideal_pair(seed=3).covariances,
        )
    )
    rep = audit(model, n_samples=100_000)
    X, y, g = simulate(model, 400_000, np.random.default_rng(5))
    pred = bayes_predict(model, X, g, 0.5)
    dp = demographic_parity_difference(y, pred, sensitive_features=g)
    eodds = equalized_odds_difference(y, pred, sensitive_features=g)
    # Independent sample of 400k: rates carry ~2e-3 binomial noise (3 sigma), plus
    # the audit's own stated accuracy.
    tol = rep.accuracy + 4e-3
    assert rep.dp_gap_half == pytest.approx(dp, abs=tol)
    assert rep.equalized_odds_gap_half == pytest.approx(eodds, abs=tol)
    assert rep.dp_gap >= rep.dp_gap_half - 1e-12


@pytest.mark.parametrize(("per_class", "K"), [(True, 2), (False, 2), (True, 3), (False, 3)])
def test_affine_images_audit_as_ideal(per_class, K):
    rep = audit(ideal_pair(per_class=per_class, K=K, seed=K), n_samples=50_000)
    assert rep.is_ideal
    for name in ("dp_gap", "eo_gap", "equalized_odds_gap"):
        # An ideal model has zero gaps; the estimate is within its stated accuracy.
        assert getattr(rep, name) <= rep.accuracy + 1e-9
    assert rep.prior_residual < 1e-12
    if not per_class:
        assert rep.gram_residual < 1e-10


def test_biased_model_is_not_ideal():
    model = biased_shared(4)
    rep = audit(model)
    assert not rep.is_ideal and rep.nearest_ideal_kl > 1e-3
    X, y, g = simulate(model, 300_000, np.random.default_rng(8))
    err = np.mean(bayes_predict(model, X, g, 0.5) != y)
    # Closed-form Bayes error vs an independent simulation: ~3 sigma of 3e5 draws.
    assert rep.bayes_error == pytest.approx(err, abs=3e-3)
    assert rep.dp_gap > 0.05 and rep.gram_residual > 1e-3
    assert "NOT ideal" in rep.summary()


def univariate(s_ratio_b=2.0, effect_b=1.5, pi_b=0.4):
    # group a: N(0,1) vs N(1.5*1, 2^2); group b: same ratios around other scale/location,
    # reflected (mu1 < mu0 is allowed: x -> -x is affine).
    sa, sb = 1.0, 3.0
    means = [[[0.0], [1.5 * sa]], [[5.0], [5.0 - effect_b * sb]]]
    covs = [[[[sa**2]], [[(2.0 * sa) ** 2]]], [[[sb**2]], [[(s_ratio_b * sb) ** 2]]]]
    return model_from(means, covs, [[0.3, 0.2], [0.5 * (1 - pi_b), 0.5 * pi_b]])


def test_univariate_necessary_and_sufficient_conditions():
    # THEORY 3: equal sigma1/sigma0, equal |mu1 - mu0|/sigma0 and equal pi <=> ideal.
    assert audit(univariate()).is_ideal
    assert not audit(univariate(s_ratio_b=1.5)).is_ideal
    assert not audit(univariate(effect_b=1.0)).is_ideal
    assert not audit(univariate(pi_b=0.3)).is_ideal


def test_multiclass_uniform_weights_match_simulation():
    base = ideal_pair(per_class=True, K=3, seed=6)
    model = base.with_params(
        base.priors, base.means * np.array([1.0, 1.3])[:, None, None], base.covariances
    )
    rep = audit(model, n_samples=60_000)
    assert "lower bound" in rep.notes[0]
    X, _y, g = simulate(model, 300_000, np.random.default_rng(1))
    pred = bayes_predict(model, X, g, 1.0 - np.eye(3))
    sel = [[np.mean(pred[g == a] == j) for j in range(3)] for a in model.groups]
    dp = np.max(np.ptp(np.array(sel), axis=0))
    # The uniform weights are the 0-1 loss: audit's *_half. Tolerance: its
    # stated accuracy plus ~3 sigma of the independent simulation.
    assert rep.dp_gap_half == pytest.approx(dp, abs=rep.accuracy + 5e-3)


def test_single_group_and_lognormal():
    one = GaussianModel([[0.4, 0.6]], [[[0.0], [1.0]]], [[[[1.0]], [[2.0]]]])
    rep = audit(one)
    assert rep.is_ideal and rep.dp_gap == 0.0 and np.isfinite(rep.bayes_error)
    m = biased_shared(7)
    logn = GaussianModel(m.priors, m.means, m.covariances, m.groups, family="lognormal")
    assert audit(logn).to_dict() == audit(m).to_dict()
