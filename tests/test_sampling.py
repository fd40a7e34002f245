"""The family sample (fairsteer.sampling): a bottom-k sample by hashed table row index."""

import itertools

import numpy as np
import pytest

from fairsteer.errors import InputError
from fairsteer.families import Families
from fairsteer.sampling import RowSample, check_sample_rows, merge_samples, row_keys

MASK = (1 << 64) - 1


def splitmix64(x):
    """SplitMix64's finaliser in Python integers (Steele, Lea and Flood 2014)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_row_keys_are_the_documented_hash():
    salt = 0xD1B54A32D192ED03
    for seed in (0, 7, 2**40):
        rows = np.array([0, 1, 2, 12345, 2**50])
        want = [splitmix64((splitmix64(int(r) ^ splitmix64(seed)) + salt) & MASK) for r in rows]
        assert row_keys(rows, seed).tolist() == want


def table(n, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    g = rng.integers(0, 3, n)
    c = rng.integers(0, 2, n)
    return X, g, c


def sample_of_blocks(X, g, c, cuts, size, seed, order=None):
    """Samples of consecutive blocks (cut at ``cuts``), merged in ``order`` (a permutation)."""
    bounds = [0, *cuts, X.shape[0]]
    parts = [
        RowSample.of(
            X[a:b],
            g[a:b],
            c[a:b],
            ("g0", "g1", "g2"),
            ("c0", "c1"),
            first_row=a,
            size=size,
            seed=seed,
        )
        for a, b in itertools.pairwise(bounds)
    ]
    if order is not None:
        parts = [parts[k] for k in order]
    return merge_samples(*parts)


def test_bottom_k_equals_brute_force_whatever_the_blocks_and_merge_order():
    X, g, c = table(1000)
    size, seed = 137, 5
    # brute force: every row's key, the 137 smallest
    want = np.sort(np.argsort(row_keys(np.arange(1000), seed))[:size])
    rng = np.random.default_rng(1)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 1000), rng.integers(1, 12), replace=False))
        order = rng.permutation(len(cuts) + 1)
        s = sample_of_blocks(X, g, c, cuts.tolist(), size, seed, order).in_table_order()
        assert s.n_rows == 1000 and s.keys.size == size
        np.testing.assert_array_equal(s.rows, want)
        np.testing.assert_array_equal(s.X, X[want])
        labels = np.array(s.group_labels)[s.groups]
        np.testing.assert_array_equal(labels, np.array(["g0", "g1", "g2"])[g[want]])


def test_a_table_within_the_cap_is_kept_whole_in_table_order():
    X, g, c = table(300)
    s = sample_of_blocks(X, g, c, [10, 11, 200], 300, 9, order=[3, 1, 0, 2]).in_table_order()
    np.testing.assert_array_equal(s.rows, np.arange(300))
    np.testing.assert_array_equal(s.X, X)
    fam = Families("normal-scores-by-group", 3)
    got = s.fit(fam, ("g0", "g1", "g2"), ("c0", "c1"))
    assert got == fam.fit(X, g, 3)


def test_every_label_seen_is_kept_even_without_a_sampled_row():
    X, g, c = table(50)
    part = RowSample.of(X, g, c, ("a", "b", "c"), ("x", "y"), first_row=0, size=2, seed=0)
    other = RowSample.of(X[:1], g[:1] * 0, c[:1] * 0, ("z",), ("y",), first_row=50, size=2, seed=0)
    merged = part.merge(other)
    assert merged.group_labels == ("a", "b", "c", "z") and merged.class_labels == ("x", "y")
    assert merged.keys.size == 2


def test_inclusion_is_uniform_over_seeds():
    # n = 40 rows, k = 10: each row is kept with probability 1/4. Over 4000
    # seeds a row's count is Binomial(4000, 0.25): mean 1000, sd 27.4. Five
    # sd (137) bounds all 40 counts except with probability ~40 * 5.7e-7;
    # a sample that favoured some rows by 20% (200) would fail.
    n, k, seeds = 40, 10, 4000
    counts = np.zeros(n)
    for seed in range(seeds):
        keys = row_keys(np.arange(n), seed)
        counts[np.argpartition(keys, k - 1)[:k]] += 1
    assert np.abs(counts - seeds * k / n).max() < 5 * np.sqrt(seeds * 0.25 * 0.75)


def test_bad_sizes_and_mismatched_merges_are_input_errors():
    for bad in (0, 1, 2.5, True, "10"):
        with pytest.raises(InputError, match="sample size must be a whole number >= 2"):
            check_sample_rows(bad)
    X, g, c = table(5)
    a = RowSample.of(X, g, c, ("a", "b", "c"), ("x", "y"), first_row=0, size=3, seed=0)
    b = RowSample.of(X, g, c, ("a", "b", "c"), ("x", "y"), first_row=5, size=3, seed=1)
    with pytest.raises(InputError, match="different sizes or seeds"):
        a.merge(b)
    with pytest.raises(InputError, match="no rows"):
        RowSample.empty(3, 10, 0).fit(Families("auto", 3), (), ())
    with pytest.raises(InputError, match="'c' is not among"):
        a.fit(Families("yeo-johnson", 3), ("a", "b"), ("x", "y"))


def test_a_group_missing_from_a_partial_sample_says_so():
    X, _, c = table(2000)
    g = np.zeros(2000, dtype=np.intp)
    g[[5, 1500]] = 1  # two rows of group 1: a sample of 50 rows almost surely misses them
    s = RowSample.of(X, g, c, ("big", "tiny"), ("c0", "c1"), first_row=0, size=50, seed=0)
    assert not np.isin(s.rows, [5, 1500]).any()  # seed 0 misses them (checked, not assumed)
    with pytest.raises(InputError, match="fitted on a uniform sample of 50 of the 2000 rows"):
        s.fit(Families("yeo-johnson-by-group", 3), ("big", "tiny"), ("c0", "c1"))
