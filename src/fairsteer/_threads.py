"""Data parallelism over rows with one BLAS thread per worker.

BLAS parallelises one large product across the cores, but the memory-bound
work around it (gathering a group's rows, shifting them, scattering results
back) then either runs between the products or competes with BLAS's threads
for the same cores. Splitting the *rows* instead, one worker per core, each
doing its own gathers and single-threaded products on its slice, keeps every
core busy with whole pieces of work: on the two-core machine of the
benchmarks a grouped ``X^T X`` runs at 0.9x one multi-threaded ``X^T X``, where
the pipelined single-product version ran at 1.35x (benchmarks/bench_engine.py).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

R = TypeVar("R")


_found: Any = None
_finding = threading.Lock()


def _blas() -> Any:
    """NumPy's and SciPy's BLAS libraries (a ``threadpoolctl`` controller), found once.

    ``threadpoolctl`` inspects every loaded shared library: 1 ms with numpy
    and scipy alone, 13-16 ms once pyarrow's are loaded too (174 of them);
    :func:`find_blas_soon` starts the search early, in a thread of its own.
    """
    global _found
    with _finding:
        if _found is None:
            import numpy  # noqa: F401  (load the BLAS libraries the products use)
            import scipy.linalg  # noqa: F401
            from threadpoolctl import ThreadpoolController

            _found = ThreadpoolController().select(user_api="blas")
    return _found


def find_blas_soon() -> None:
    """Find the BLAS libraries (:func:`_blas`) in a background thread, for work starting soon."""
    if _found is None:
        threading.Thread(target=_blas, name="fairsteer-find-blas", daemon=True).start()


_lock = threading.Lock()
_holders = 0  # threads inside one_blas_thread()
_saved: Any = None  # the BLAS settings the first of them found


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy's BLAS on one thread while the block runs, safe for overlapping callers.

    The thread count is process-wide. ``threadpoolctl``'s own context restores
    what it found on entry, so two overlapping blocks (two threads of a Dask
    worker, say) can leave BLAS on one thread for good: A enters (2 -> 1),
    B enters (finds 1), A leaves (-> 2), B leaves (-> 1). Here the first
    caller in saves the settings and the last one out restores them.

    A limit set from the main thread holds for BLAS calls from every thread.
    OpenBLAS 0.3.31 may ignore one set from another thread once the main
    thread has set one (measured: a 2500 x 2500 product kept both threads);
    the workers of such a caller (a Dask worker thread, say) then share the
    cores with BLAS's threads: the same results, somewhat slower.
    """
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = _blas().limit(limits=1)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _saved.restore_original_limits()
                _saved = None


def cpu_workers() -> int:
    """Workers for row-parallel work: the BLAS thread count, at most the usable cores.

    A user who limited BLAS (``OMP_NUM_THREADS=1``, ``threadpoolctl``) gets
    that many workers, so the limit holds for our threads too.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    blas = [lib.num_threads for lib in _blas().lib_controllers]
    return max(1, min([cores, *blas]))


def row_parallel(fn: Callable[[int, int], R], n: int, min_rows: int) -> list[R]:
    """``[fn(lo, hi), ...]`` over contiguous slices of ``range(n)``, one per worker.

    Each slice has at least ``min_rows`` rows; with one slice ``fn(0, n)`` runs
    in the calling thread with BLAS as configured. With several, the slices
    run in threads (NumPy's gathers and BLAS release the GIL) while BLAS is
    limited to one thread, and the results come back in slice order, so a
    caller that sums them in that order gets the same answer on every run.
    """
    workers = n // max(1, min_rows)
    if workers > 1:  # only then is the BLAS thread count worth asking for
        workers = min(workers, cpu_workers())
    if workers <= 1:
        return [fn(0, n)]
    from concurrent.futures import ThreadPoolExecutor

    cuts = [n * k // workers for k in range(workers + 1)]
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, lo, hi) for lo, hi in itertools.pairwise(cuts)]
        return [f.result() for f in futures]


T = TypeVar("T")


def ordered_map(
    make: Callable[[T], Callable[[], R]], items: Iterable[T], workers: int | None = None
) -> Iterator[R]:
    """The results of ``make(item)()`` for every item, in item order, computed by worker threads.

    ``make`` runs in the calling thread, one item after the other (state that
    depends on the order, such as label codes, is built there); the calls it
    returns run in up to ``workers`` threads (default :func:`cpu_workers`),
    with BLAS on one thread, and at most ``workers + 1`` items are held at a
    time (one queued while ``workers`` run), so memory is bounded by them.
    An exception of ``make`` or of a call is raised here after the results of
    every earlier item, so the error raised is that of the first bad item.
    With one worker everything runs in the calling thread. The threads and
    the BLAS limit last until the iterator is exhausted or closed (a ``for``
    loop left by an exception closes it).
    """
    iterator = iter(items)
    try:  # no items: no threads, and no search for the BLAS libraries
        first = next(iterator)
    except StopIteration:
        return
    items = itertools.chain([first], iterator)
    workers = cpu_workers() if workers is None else workers
    if workers <= 1:
        for item in items:
            yield make(item)()
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque[Any] = deque()
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        try:
            for item in items:
                try:
                    call = make(item)
                except BaseException:
                    while pending:  # the earlier items' results (and errors) first
                        yield pending.popleft().result()
                    raise
                pending.append(pool.submit(call))
                while len(pending) >= workers + 1 or (pending and pending[0].done()):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
