"""Row parallelism and the process-wide BLAS thread limit (fairsteer._threads)."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from fairsteer import _threads


def test_overlapping_limits_restore_the_original_thread_count(monkeypatch):
    """A enters, B enters, A leaves, B leaves: the first one in sets the limit, the last one
    out restores it (threadpoolctl's own context, restoring what each found on entry,
    would leave BLAS on one thread for good). A fake controller records the calls, since
    OpenBLAS's view of a limit set from a non-main thread depends on its version."""
    calls = []

    class Limiter:
        def restore_original_limits(self):
            calls.append("restore")

    class Controller:
        def limit(self, limits):
            calls.append(f"limit {limits}")
            return Limiter()

    monkeypatch.setattr(_threads, "_blas", Controller)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with _threads.one_blas_thread():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with _threads.one_blas_thread():
            b_in.set()
            a_out.wait(5)
            seen.append(list(calls))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [["limit 1"]]  # A has left, B is inside: still limited
    assert calls == ["limit 1", "restore"]
    assert _threads._holders == 0


def test_one_blas_thread_limits_and_restores_numpy_blas():
    """From the calling thread, BLAS reports one thread inside and its count after."""
    before = [lib.num_threads for lib in _threads._blas().lib_controllers]
    with _threads.one_blas_thread():
        assert all(lib.num_threads == 1 for lib in _threads._blas().lib_controllers)
    assert [lib.num_threads for lib in _threads._blas().lib_controllers] == before


@pytest.mark.parametrize(
    ("n", "min_rows", "workers", "slices"),
    [(10, 4, 4, 2), (10, 1, 3, 3), (3, 4, 2, 1), (0, 1, 2, 1)],
)
def test_row_parallel_slices_cover_the_rows_in_order(monkeypatch, n, min_rows, workers, slices):
    """Contiguous slices, in order, covering range(n), never more than the rows allow."""
    monkeypatch.setattr(_threads, "cpu_workers", lambda: workers)
    parts = _threads.row_parallel(lambda lo, hi: (lo, hi), n, min_rows)
    assert len(parts) == slices
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))


def test_row_parallel_raises_what_a_worker_raised(monkeypatch):
    monkeypatch.setattr(_threads, "cpu_workers", lambda: 2)

    def work(lo, hi):
        if lo > 0:
            raise ValueError("bad slice")
        return np.ones(1)

    with pytest.raises(ValueError, match="bad slice"):
        _threads.row_parallel(work, 10, 1)
    # the limit was released on the way out
    assert _threads._holders == 0


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ordered_map_keeps_item_order_whatever_finishes_first(workers):
    """Results in item order although later items finish first; ``make`` runs in the
    calling thread, in item order; at most workers + 1 items are held at a time."""
    import time

    made, held, peak = [], [0], [0]
    lock = threading.Lock()

    def make(k):
        made.append((k, threading.get_ident()))
        with lock:
            held[0] += 1
            peak[0] = max(peak[0], held[0])

        def call():
            time.sleep(0.002 * (5 - k % 5))  # early items sleep longest
            with lock:
                held[0] -= 1
            return k * k

        return call

    out = list(_threads.ordered_map(make, range(23), workers))
    assert out == [k * k for k in range(23)]
    assert [k for k, _ in made] == list(range(23))
    assert {t for _, t in made} == {threading.get_ident()}
    assert peak[0] <= workers + 1
    assert _threads._holders == 0  # the BLAS limit was released


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_raises_the_first_bad_items_error(workers):
    """A call that fails (item 3) is raised before a later ``make`` failure (item 5),
    after the results of items 0-2, and the BLAS limit is released."""

    def make(k):
        if k == 5:
            raise KeyError("make 5")

        def call():
            if k == 3:
                raise ValueError("call 3")
            return k

        return call

    got = []
    with pytest.raises(ValueError, match="call 3"):
        for r in _threads.ordered_map(make, range(10), workers):
            got.append(r)
    assert got == [0, 1, 2]
    assert _threads._holders == 0
    # with no failing call, make's error comes after every earlier result
    got = []
    with pytest.raises(KeyError, match="make 5"):
        for r in _threads.ordered_map(lambda k: make(k + 10) if k != 5 else make(5), range(8)):
            got.append(r)
    assert got == [10, 11, 12, 13, 14]


def test_ordered_map_of_no_items_starts_nothing(monkeypatch):
    """No items: no worker count asked for (that searches the BLAS libraries), no calls."""

    def refuse():
        raise AssertionError("cpu_workers called")

    monkeypatch.setattr(_threads, "cpu_workers", refuse)
    assert list(_threads.ordered_map(refuse, [])) == []
    assert list(_threads.ordered_map(lambda k: lambda: k, iter([]))) == []
