"""The experiments' shared protocol (fairsteer_experiments.protocol)."""

import math

import numpy as np
import pytest

from fairsteer.data.synthetic import case_study, sample_model
from fairsteer.errors import InputError
from fairsteer_experiments.protocol import (
    EF_METHODS,
    GROUP_BASELINES,
    group_baselines,
    over_seeds,
    steer_ef,
    summarise,
    summarise_rows,
)


def test_summarise_skips_missing_values_and_signs_zero():
    assert summarise([1.0, None, 3.0]) == {"mean": 2.0, "std": 1.0}  # population std
    assert summarise([None, None]) == {"mean": None, "std": None}
    zero = summarise([-0.0, -0.0])["mean"]
    assert zero == 0.0 and math.copysign(1.0, zero) == 1.0
    rows = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}]
    assert summarise_rows(rows, ["a", "b"]) == {
        "a": {"mean": 2.0, "std": 1.0},
        "b": {"mean": 2.0, "std": 0.0},
    }


def test_over_seeds_runs_each_seed_in_order_and_refuses_none():
    assert over_seeds((3, 1, 2), lambda s: s * 10) == [30, 10, 20]
    with pytest.raises(InputError, match="at least one seed"):
        over_seeds((), lambda s: s)


def test_ef_and_group_baselines_fit_the_same_sample():
    X, y, g = sample_model(case_study("multivariate").biased, 1500, np.random.default_rng(0))
    fitted = list(steer_ef(X, y, g, seed=0, covariance="shared"))
    assert [name for name, _, _ in fitted] == [name for name, _ in EF_METHODS]
    for (_, method), (_, est, Xs) in zip(EF_METHODS, fitted):
        assert est.solution_.method == method and Xs.shape == X.shape
        assert est.sample_weight_.shape == y.shape
    # All-subgroups may move every group: never a larger KL than one reference.
    kl = [est.solution_.kl for _, est, _ in fitted]
    assert kl[1] <= kl[0] + 1e-12
    maps = group_baselines(X, g)
    assert list(maps) == list(GROUP_BASELINES)
    moved = maps["Mean matching"].transform(X, g)
    for a in np.unique(g):  # mean matching: every group at the overall mean
        np.testing.assert_allclose(moved[g == a].mean(0), X.mean(0), atol=1e-12)
