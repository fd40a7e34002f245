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
