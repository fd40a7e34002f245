"""Mergeable cell statistics against naive per-cell numpy computations."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairsteer.errors import InputError
from fairsteer.stats import cell_statistics


def naive(X, y, g, glabels, clabels):
    out = {}
    for a, gl in enumerate(glabels):
        for i, cl in enumerate(clabels):
            rows = X[(g == gl) & (y == cl)]
            if len(rows):
                mean = rows.mean(axis=0)
                out[a, i] = (len(rows), mean, (rows - mean).T @ (rows - mean))
    return out


def sample(seed, n=300, d=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 3 + 100.0  # offset: the centred scatter must not cancel
    y = rng.choice(["neg", "pos"], size=n)
    g = rng.choice(["a", "b", "c"], size=n)
    return X, y, g


def test_matches_naive_per_cell():
    X, y, g = sample(0)
    s = cell_statistics(X, y, g)
    assert s.groups == ("a", "b", "c") and s.classes == ("neg", "pos")
    for (a, i), (n, mean, scatter) in naive(X, y, g, s.groups, s.classes).items():
        assert s.counts[a, i] == n
        # float64 sums of ~100 numbers of size 100: ~1e-12 relative.
        np.testing.assert_allclose(s.means[a, i], mean, rtol=1e-12)
        np.testing.assert_allclose(s.scatters[a, i], scatter, rtol=1e-10, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 300), min_size=1, max_size=4))
def test_merge_of_batches_equals_fit_on_union(seed, cuts):
    X, y, g = sample(seed)
    bounds = [0, *sorted(cuts), len(X)]
    parts = [
        cell_statistics(
            X[lo:hi], y[lo:hi], g[lo:hi], group_labels="abc", class_labels=("neg", "pos")
        )
        for lo, hi in itertools.pairwise(bounds)
    ]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    full = cell_statistics(X, y, g)
    np.testing.assert_array_equal(merged.counts, full.counts)
    # Chan's update is exact in exact arithmetic; float64 round-off on values
    # of size 100 with scatters of size ~1e3 stays below 1e-9.
    np.testing.assert_allclose(merged.means, full.means, rtol=1e-12)
    np.testing.assert_allclose(merged.scatters, full.scatters, rtol=1e-10, atol=1e-8)


def test_merge_aligns_labels_by_name_and_keeps_empty_cells():
    X, y, g = sample(1)
    first = cell_statistics(X[g == "a"], y[g == "a"], g[g == "a"])
    rest = cell_statistics(X[g != "a"], y[g != "a"], g[g != "a"])
    merged = rest.merge(first)
    assert merged.groups == ("b", "c", "a")
    full = cell_statistics(X, y, g)
    order = [full.groups.index(x) for x in merged.groups]
    np.testing.assert_allclose(merged.scatters, full.scatters[order], rtol=1e-10, atol=1e-8)


def test_empty_cell_is_reported_by_name():
    X, y, g = sample(2)
    keep = ~((g == "b") & (y == "pos"))
    s = cell_statistics(X[keep], y[keep], g[keep])
    assert s.counts[1, 1] == 0
    with pytest.raises(InputError, match="'pos' has no samples in group 'b'"):
        s.covariances()


@pytest.mark.parametrize(
    ("X", "y", "g", "msg"),
    [
        (np.ones(3), [0, 1, 0], [0, 0, 1], "2-D"),
        (np.ones((3, 2)), [0, 1], [0, 0, 1], "3 rows"),
        (np.array([[1.0], [np.nan], [0.0]]), [0, 1, 0], [0, 0, 1], "NaN"),
    ],
)
def test_bad_input(X, y, g, msg):
    with pytest.raises(InputError, match=msg):
        cell_statistics(X, y, g)


def test_unknown_label_names_known_ones():
    with pytest.raises(InputError, match="unknown group 'z'"):
        cell_statistics(np.ones((2, 1)), [0, 1], ["a", "z"], group_labels=["a", "b"])


@pytest.mark.parametrize("separation", [1.0, 1e6])
def test_pooled_statistics_equal_summed_cells(separation):
    """One product per group equals the sum of per-cell scatters, also for far-apart classes.

    separation 1e6 sends trace(S)/trace(W) past POOL_GUARD: the per-cell
    fallback must keep the accuracy the one-product formula would lose.
    """
    from fairsteer.stats import CHUNK_ROWS, cell_statistics

    rng = np.random.default_rng(3)
    n, d, K = 2 * CHUNK_ROWS + 77, 4, 5  # chunks cross class boundaries
    g = rng.integers(0, 2, n)
    y = rng.integers(0, K, n)
    y[g == 1] = np.where(y[g == 1] == 2, 3, y[g == 1])  # class 2 empty in group 1
    X = rng.normal(size=(n, d)) + separation * rng.normal(size=(K, d))[y] + 1e3
    cells = cell_statistics(X, y, g)
    pooled = cell_statistics(X, y, g, pooled=True)
    assert pooled.pooled and pooled.scatters.shape == (2, 1, d, d)
    np.testing.assert_array_equal(pooled.counts, cells.counts)
    # means: shifted sums of ~1e3 rows, round-off ~1e-13 relative to the values
    np.testing.assert_allclose(pooled.means, cells.means, rtol=1e-12, atol=1e-9)
    # scatters ~n: summed cell scatters vs one product, round-off ~1e-12 relative
    np.testing.assert_allclose(
        pooled.scatters[:, 0], cells.scatters.sum(axis=1), rtol=1e-9, atol=1e-9 * n
    )
    # merging pooled halves, or a pooled with a per-cell half, gives the same
    half = n // 2
    a = cell_statistics(X[:half], y[:half], g[:half], pooled=True)
    b = cell_statistics(X[half:], y[half:], g[half:])
    merged = a.merge(b).aligned(cells.groups, cells.classes)
    assert merged.pooled
    np.testing.assert_allclose(
        merged.scatters[:, 0], cells.scatters.sum(axis=1), rtol=1e-9, atol=1e-9 * n
    )
    full = g == 0  # group 0 has every class
    with pytest.raises(InputError, match="per-class covariances need per-cell"):
        cell_statistics(X[full], y[full], g[full], pooled=True).covariances("per-class")


@pytest.mark.parametrize(
    ("chunk", "sub_rows", "workers"), [(7, 3, 1), (7, 2, 3), (64, 5, 2), (10_000, 64, 2)]
)
def test_chunked_gather_any_chunk_size_and_thread_count(monkeypatch, chunk, sub_rows, workers):
    """Chunk, sub-block and worker-slice boundaries anywhere (inside classes, at empty
    classes) give the naive per-cell moments, per cell and pooled."""
    import fairsteer._threads as threads
    import fairsteer.stats as stats

    d = 3  # sample()'s features
    monkeypatch.setattr(stats, "CHUNK_ROWS", chunk)
    monkeypatch.setattr(stats, "CHUNK_BYTES", 0)
    monkeypatch.setattr(stats, "SUB_BLOCK_BYTES", 8 * d * sub_rows)
    monkeypatch.setattr(stats, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(stats, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(threads, "cpu_workers", lambda: workers)
    X, y, g = sample(4, n=500)
    y = np.where((g == "b") & (y == "pos"), "neg", y)  # cell (b, pos) empty
    cells = cell_statistics(X, y, g)
    pooled = cell_statistics(X, y, g, pooled=True)
    for (a, i), (n, mean, scatter) in naive(X, y, g, cells.groups, cells.classes).items():
        assert cells.counts[a, i] == n
        # sums of ~100 values of size 100 in another order: ~1e-13 relative
        np.testing.assert_allclose(cells.means[a, i], mean, rtol=1e-12)
        np.testing.assert_allclose(pooled.means[a, i], mean, rtol=1e-12)
        np.testing.assert_allclose(cells.scatters[a, i], scatter, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(
        pooled.scatters[:, 0], cells.scatters.sum(axis=1), rtol=1e-10, atol=1e-9
    )


@pytest.mark.parametrize(
    "values",
    [
        np.array([3, 1, 3, 7, 1]),
        np.array([-100, 100, 5, -100], dtype=np.int8),  # offsets beyond int8
        np.array([9, 0, 255], dtype=np.uint8),
        np.array([0, 2**40, 5]),  # range too wide to count: the sorting path
        np.array([2**63 + 5, 2**63 + 1], dtype=np.uint64),  # beyond intp
    ],
)
def test_integer_labels_counted_equal_the_sorted_unique(values):
    """Small-range integer labels are encoded by counting; labels and codes are those of
    np.unique (the reference), for signed, unsigned and out-of-range values."""
    from fairsteer.stats import encode_labels

    labels, codes = encode_labels(values, None, "group")
    uniq, inverse = np.unique(values, return_inverse=True)
    assert labels == tuple(int(u) for u in uniq)
    assert all(type(label) is int for label in labels)
    np.testing.assert_array_equal(codes, inverse)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 20),
    scale=st.sampled_from([1e-8, 1.0, 1e8]),
    offset=st.sampled_from([0.0, 1e4, -1e9]),
    pooled=st.booleans(),
)
def test_column_major_features_give_the_row_major_moments(seed, d, scale, offset, pooled):
    """A column-major X (a table's columns; gathered column by column up to
    COLUMN_GATHER_MAX columns) gives the moments of the same X row-major, also badly
    scaled (tiny or huge spreads, means far from zero)."""
    from fairsteer.stats import cell_statistics_from_codes

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    X = offset + scale * rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
    g, c = rng.integers(0, 2, n), rng.integers(0, 3, n)
    args = (g, c, ("a", "b"), (0, 1, 2))
    want = cell_statistics_from_codes(np.ascontiguousarray(X), *args, pooled=pooled)
    got = cell_statistics_from_codes(np.asfortranarray(X), *args, pooled=pooled)
    np.testing.assert_array_equal(got.counts, want.counts)
    # the same sums in the same row order: only the products' blocking may differ,
    # ~1e-15 relative to the largest term of each sum
    np.testing.assert_allclose(
        got.means, want.means, rtol=1e-13, atol=1e-13 * (abs(offset) + scale)
    )
    tol = 1e-12 * scale**2 * n * 100  # scatters ~ n scale^2 (spreads up to 10 scale)
    np.testing.assert_allclose(got.scatters, want.scatters, rtol=1e-12, atol=tol)


def test_merge_of_equal_labels_equals_the_aligning_merge():
    """The shortcut for statistics with the same labels in the same order gives what
    the general path (aligning by name) gives, per cell and pooled."""
    X, y, g = sample(7)
    for pooled in (False, True):
        a = cell_statistics(X[:120], y[:120], g[:120], group_labels="abc", pooled=pooled)
        b = cell_statistics(X[120:], y[120:], g[120:], group_labels="abc", pooled=pooled)
        fast = a.merge(b)
        # b with its labels in another order takes the aligning path
        slow = a.merge(b.aligned(("c", "b", "a"), ("pos", "neg"))).aligned(a.groups, a.classes)
        for name in ("counts", "means", "scatters"):
            np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-14)


def test_feature_range_merge_equals_one_update():
    from fairsteer.stats import FeatureRange

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(50, 3)) * [1, 1e5, 1e-5]
    one, parts = FeatureRange(3), FeatureRange(3)
    one.update(Z)
    for lo, hi in [(0, 10), (10, 10), (10, 50)]:
        part = FeatureRange(3)
        part.update(Z[lo:hi])
        parts.merge(part)
    assert parts.n == one.n == 50
    np.testing.assert_array_equal(parts.hi, one.hi)
    np.testing.assert_array_equal(parts.lo, one.lo)


@pytest.mark.parametrize("d", [1, 5, 32, 33, 60])
@pytest.mark.parametrize("order", ["C", "F"])
def test_feature_range_update_is_the_columns_max_and_min_in_any_layout(d, order):
    # update copies narrow row-major batches to column-major first: the extremes
    # are exact either way (max and min do not round)
    from fairsteer.stats import FeatureRange

    scales = 10.0 ** np.arange(d)  # up to 1e59: the extremes of every column differ in size
    Z = np.asarray(np.random.default_rng(d).normal(size=(300, d)) * scales, order=order)
    span = FeatureRange(d)
    span.update(Z[::2])  # a strided view: neither layout
    span.update(Z[1::2])
    assert span.n == 300
    np.testing.assert_array_equal(span.hi, Z.max(axis=0))
    np.testing.assert_array_equal(span.lo, Z.min(axis=0))
