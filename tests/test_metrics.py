"""Metrics against Fairlearn and naive loops."""

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    true_positive_rate,
)

from fairsteer.errors import InputError
from fairsteer.metrics import (
    dp_gap,
    eo_gap,
    equalized_odds_gap,
    gap_curves,
    rms_tpr_gap,
    tpr_gaps_per_class,
)


def data(seed=0, n=3000, K=2, m=3):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m, n)
    y = rng.integers(0, K, n)
    score = rng.random(n) + 0.3 * y + 0.1 * g
    return y, score, g


@pytest.mark.parametrize("m", [2, 3])
def test_binary_gaps_match_fairlearn(m):
    y, score, g = data(m=m)
    pred = (score > 0.7).astype(int)
    assert dp_gap(pred, sensitive_features=g) == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=g), abs=1e-12
    )
    assert equalized_odds_gap(y, pred, sensitive_features=g) == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=g), abs=1e-12
    )
    tpr = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=pred, sensitive_features=g)
    assert eo_gap(y, pred, sensitive_features=g) == pytest.approx(tpr.difference(), abs=1e-12)


def test_multiclass_against_loops():
    rng = np.random.default_rng(1)
    y, g = rng.integers(0, 4, 2000), rng.integers(0, 2, 2000)
    pred = np.where(rng.random(2000) < 0.6, y, rng.integers(0, 4, 2000))
    gaps = [
        abs(np.mean(pred[(y == i) & (g == 0)] == i) - np.mean(pred[(y == i) & (g == 1)] == i))
        for i in range(4)
    ]
    np.testing.assert_allclose(tpr_gaps_per_class(y, pred, sensitive_features=g), gaps)
    assert rms_tpr_gap(y, pred, sensitive_features=g) == pytest.approx(
        np.sqrt(np.mean(np.square(gaps)))
    )
    sel = [[np.mean(pred[g == a] == j) for j in range(4)] for a in range(2)]
    assert dp_gap(pred, sensitive_features=g) == pytest.approx(np.max(np.abs(np.subtract(*sel))))


def test_gap_curves_are_exact_over_all_thresholds():
    y, score, g = data(2, n=500)
    curves = gap_curves(y, score, sensitive_features=g)
    for k in range(0, curves["thresholds"].size, 37):
        c = curves["thresholds"][k]
        pred = (score >= c).astype(int)
        assert curves["dp"][k] == pytest.approx(
            demographic_parity_difference(y, pred, sensitive_features=g), abs=1e-12
        )
        assert curves["accuracy"][k] == pytest.approx(np.mean(pred == y))
        assert curves["equalized_odds"][k] == pytest.approx(
            equalized_odds_difference(y, pred, sensitive_features=g), abs=1e-12
        )
    brute = max(
        demographic_parity_difference(y, (score >= c).astype(int), sensitive_features=g)
        for c in np.unique(score)
    )
    assert curves["sup"]["dp"] == pytest.approx(brute, abs=1e-12)


def test_bad_input():
    with pytest.raises(InputError, match="rows"):
        dp_gap([0, 1, 1], sensitive_features=[0, 1])
    with pytest.raises(InputError, match="two groups"):
        dp_gap([0, 1], sensitive_features=[0, 0])
    with pytest.raises(InputError, match="NaN"):
        gap_curves([0, 1], [np.nan, 1.0], sensitive_features=[0, 1])


def test_noise_floor_is_the_gap_of_group_independent_predictions():
    from fairsteer.metrics import rms_tpr_gap_noise_floor

    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 4, n)
    g = rng.choice(["f", "m"], n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n))  # independent of g
    # For predictions already independent of the group the shuffled gap is the
    # same random variable as a gap under fresh random groups: 20 shuffles
    # average to within a few standard errors (~0.01 at n=4000, 4 classes).
    observed = np.mean(
        [rms_tpr_gap(y, pred, sensitive_features=rng.permutation(g)) for _ in range(50)]
    )
    floor = rms_tpr_gap_noise_floor(y, pred, sensitive_features=g, seed=0)
    assert abs(floor - observed) < 0.01
    assert floor == rms_tpr_gap_noise_floor(y, pred, sensitive_features=g, seed=0)  # seeded
    biased = np.where(g == "f", y, (y + 1) % 4)  # perfect for f, always wrong for m
    assert rms_tpr_gap(y, biased, sensitive_features=g) == pytest.approx(1.0)
    assert rms_tpr_gap_noise_floor(y, biased, sensitive_features=g, seed=0) < 0.1
    with pytest.raises(InputError, match="n_permutations"):
        rms_tpr_gap_noise_floor(y, pred, sensitive_features=g, n_permutations=0)
    with pytest.raises(InputError, match="rows"):
        rms_tpr_gap_noise_floor(y, pred, sensitive_features=g[:-1])
