"""Label-bias injection and the refit of a steered sample (fairsteer.evaluation)."""

import numpy as np
import pytest

from fairsteer import OptimalSteering, audit
from fairsteer.data.synthetic import case_study, sample_model
from fairsteer.errors import InputError
from fairsteer.evaluation import inject_label_bias, refit_steered


@pytest.mark.parametrize("favourable", [1, 0])
def test_label_bias_flips_the_stated_share_of_protected_favourable_labels(favourable):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    g = rng.choice(["p", "q", "r"], 3000)
    flipped = inject_label_bias(y, g, "p", fraction=0.3, favourable=favourable, seed=7)
    changed = flipped != y
    target = (g == "p") & (y == favourable)
    assert np.all(target[changed]) and np.all(flipped[changed] == 1 - favourable)
    assert changed.sum() == round(0.3 * target.sum())
    assert np.array_equal(
        flipped, inject_label_bias(y, g, "p", fraction=0.3, favourable=favourable, seed=7)
    )
    assert np.array_equal(inject_label_bias(y, g, "p", fraction=0.0, seed=1), y)
    everything = inject_label_bias(y, g, "p", fraction=1.0, favourable=favourable, seed=1)
    assert np.all(everything[target] == 1 - favourable)


def test_label_bias_rejects_bad_input():
    y, g = np.array([0, 1, 1]), np.array(["p", "p", "q"])
    with pytest.raises(InputError, match=r"fraction must be in \[0, 1\]"):
        inject_label_bias(y, g, "p", fraction=1.5)
    with pytest.raises(InputError, match="labels and favourable in"):
        inject_label_bias(np.array([0, 2, 1]), g, "p", fraction=0.5)
    with pytest.raises(InputError, match="rows"):
        inject_label_bias(y, g[:2], "p", fraction=0.5)


def test_refit_of_a_steered_sample_has_the_weighted_shares_and_is_ideal():
    X, y, g = sample_model(case_study("multivariate").biased, 3000, np.random.default_rng(2))
    est = OptimalSteering(method="all-subgroups", covariance="shared")
    Xs, _ = est.fit_resample(X, y, sensitive_features=g)
    ideal = est.solution_.ideal
    refit = refit_steered(Xs, y, g, ideal, covariance="shared")
    # Independent computation of the priors: the weighted cell shares of the
    # steered sample under the estimator's weights, normalised within each
    # group and scaled by the group's share (exact up to round-off).
    w = est.sample_weight_
    groups, classes = ideal.groups, ideal.classes
    shares = np.array(
        [
            [np.mean(g == a) * w[(g == a) & (y == i)].sum() / w[g == a].sum() for i in classes]
            for a in groups
        ]
    )
    np.testing.assert_allclose(refit.priors, shares, rtol=1e-12)
    # Steering moves every cell to the ideal moments (round-off, values ~1e1).
    np.testing.assert_allclose(refit.means, ideal.means, atol=1e-9)
    assert audit(refit).is_ideal and not audit(est.model_).is_ideal
    y3 = y.copy()
    for a in groups:  # a third class in every group: a sample the ideal model cannot describe
        y3[np.flatnonzero(g == a)[:30]] = 2
    with pytest.raises(InputError, match="2 groups x 3 classes"):
        refit_steered(Xs, y3, g, ideal, covariance="shared")
