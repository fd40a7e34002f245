"""Dask benchmark: an out-of-core fit with memory-limited workers, against the in-memory fit.

Run on demand (not collected by pytest), under the shared lock:

    flock /tmp/fairsteer-heavy.lock env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        python benchmarks/bench_dask.py [--sizes 1e6 4e6 16e6 32e6] [--memory-limit 512MiB]

Data (numpy default_rng(0) per shard): d features, m groups, K classes, one
Parquet shard of --partition-rows rows per partition, written once into a
temporary directory (removed at the end). For every size n:

* ``fairsteer.dask.fit_model_dask(dask.dataframe.read_parquet(shards))`` on a
  LocalCluster of --workers single-threaded processes, each with
  ``memory_limit=--memory-limit``; the workers are restarted before each size,
  and the resident memory of each worker is sampled every 5 ms during the fit.
  A worker holds one partition and the statistics, O(m K d^2): its peak
  should not grow with n, although the data grow well past a worker's limit.
* the in-memory reference: ``pandas.read_parquet`` + ``fairsteer.fit_model``
  in a fresh process (X made C-contiguous: ``to_numpy`` of a frame is
  column-major, whose row gathers make ``fit_model`` ~30x slower), on the
  largest size whose table (n x (d + 2) float64) is at most half of
  --memory-limit (the working copies of a one-shot fit need the other half):
  "the largest size that fits" in one worker's memory.

Printed: per size, the data size, the fit time and throughput, the ratio of
the Dask throughput to the in-memory throughput, and every worker's peak
memory; then the in-memory run's time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20


def parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes as parse

    return int(parse(text))


def write_shards(folder: Path, n: int, rows: int, d: int, m: int, K: int) -> int:
    """Parquet shards of ``rows`` rows (the last one shorter) with n rows in all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    mix = np.random.default_rng(12345).normal(size=(m, d, d)) / np.sqrt(d) + np.eye(d)
    count = 0
    for k, start in enumerate(range(0, n, rows)):
        size = min(rows, n - start)
        rng = np.random.default_rng([0, k])
        g = rng.integers(0, m, size)
        y = rng.integers(0, K, size)
        X = rng.standard_normal((size, d))
        for a in range(m):
            sel = g == a
            X[sel] = X[sel] @ mix[a]
        X += y[:, None]
        cols = {f"x{j}": X[:, j] for j in range(d)}
        cols["group"] = g
        cols["label"] = y
        pq.write_table(pa.table(cols), folder / f"part-{k:05d}.parquet")
        count += 1
    return count


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up() -> None:
    """Import what a fit task imports, so that the idle memory includes the libraries."""
    import dask.dataframe  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import fairsteer.dask  # noqa: F401


def start_sampler(dask_worker: object, every: float = 0.005) -> float:
    """Sample this worker's resident memory every ``every`` s in a thread; returns it now.

    ``ru_maxrss`` cannot serve for the workers: a spawned process keeps the
    high-water mark of the process it was started from.
    """
    import threading

    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "run": True}

    def loop() -> None:
        while state["run"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(every)

    threading.Thread(target=loop, daemon=True).start()
    dask_worker._fairsteer_sampler = state  # type: ignore[attr-defined]
    return state["peak"] / MIB


def stop_sampler(dask_worker: object) -> float:
    """Stop the sampler; the peak resident memory it saw, in MiB."""
    state = dask_worker._fairsteer_sampler  # type: ignore[attr-defined]
    state["run"] = False
    return state["peak"] / MIB


def in_memory(folder: Path) -> dict[str, float]:
    """Read + fit in a fresh process: its wall time and its peak memory."""
    code = (
        "import json, time, resource\n"
        "import numpy as np\n"
        "import pandas as pd\n"
        "import pyarrow.parquet\n"
        "from fairsteer import fit_model\n"
        "t0 = time.perf_counter()\n"
        f"df = pd.read_parquet({str(folder)!r})\n"
        "feats = [c for c in df.columns if c.startswith('x')]\n"
        "t1 = time.perf_counter()\n"
        "X = np.ascontiguousarray(df[feats].to_numpy())\n"
        "model = fit_model(X, df['label'].to_numpy(), df['group'].to_numpy(), features=feats)\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'read': t1 - t0, 'fit': t2 - t1, 'total': t2 - t0,\n"
        "  'peak': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
        "  'n': len(df)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 4e6, 16e6, 32e6])
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--partition-rows", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="512MiB")
    args = p.parse_args()

    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from fairsteer import fit_model
    from fairsteer.dask import fit_model_dask

    # The limit is a hard one (a worker above 95% of it is restarted), but a
    # worker must not pause at 80% (it would wait forever for memory that only
    # its own next task frees) nor spill (there is nothing to spill: partitions
    # are consumed at once).
    dask.config.set(
        {
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.target": False,
        }
    )
    limit = parse_bytes(args.memory_limit)
    sizes = sorted(int(s) for s in args.sizes)
    d, m, K = args.d, args.groups, args.classes
    row_bytes = (d + 2) * 8
    print(
        f"bench_dask: d={d}, m={m} groups, K={K} classes, partitions of {args.partition_rows:,} "
        f"rows ({args.partition_rows * row_bytes / MIB:.0f} MiB), {args.workers} workers x 1 "
        f"thread, memory_limit {limit / MIB:.0f} MiB each"
    )
    # a terminated run still removes its shards (several GB) in the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    tmp = Path(tempfile.mkdtemp(prefix="fairsteer-bench-dask-"))
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=limit,
        dashboard_address=":0",  # a free port: never a clash with a running cluster
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    rows_out = []
    try:
        header = (
            f"{'rows':>12} {'data MiB':>9} {'x limit':>8} {'parts':>6} {'fit s':>7} "
            f"{'Mrows/s':>8} {'vs mem':>7}  worker MiB (idle, imports done -> peak)"
        )
        folders = {}
        for n in sizes:
            folder = tmp / f"n{n}"
            t0 = time.perf_counter()
            parts = write_shards(folder, n, args.partition_rows, d, m, K)
            folders[n] = folder
            print(f"  wrote {n:,} rows in {parts} shards in {time.perf_counter() - t0:.1f} s")
        fits = [n for n in sizes if n * row_bytes <= limit / 2]
        ref = in_memory(folders[fits[-1]]) if fits else None
        ref_rate = ref["n"] / ref["total"] if ref else float("nan")
        print(header)
        for n in sizes:
            client.restart()
            client.run(warm_up)
            idle = client.run(start_sampler)
            ddf = dd.read_parquet(str(folders[n]))
            t0 = time.perf_counter()
            model = fit_model_dask(ddf, group="group", label="label")
            t = time.perf_counter() - t0
            peaks = client.run(stop_sampler)
            data = n * row_bytes / MIB
            rate = n / t
            worker = ", ".join(f"{idle[w]:.0f} -> {peaks[w]:.0f}" for w in sorted(peaks))
            print(
                f"{n:>12,} {data:>9.0f} {data * MIB / limit:>7.1f}x {ddf.npartitions:>6} "
                f"{t:>7.2f} {rate / 1e6:>8.2f} {rate / ref_rate:>6.2f}x  {worker}"
            )
            rows_out.append((n, model))
        if ref is not None:
            print(
                f"in-memory reference (fresh process: pandas.read_parquet + fit_model) on "
                f"{ref['n']:,} rows, the largest size whose table is <= half the limit: "
                f"read {ref['read']:.2f} s + fit {ref['fit']:.2f} s = {ref['total']:.2f} s, "
                f"{ref_rate / 1e6:.2f} Mrows/s, peak memory {ref['peak']:.0f} MiB"
            )
        # the fits agree: the same model from the Dask fit and the in-memory fit
        import pandas as pd

        small = pd.read_parquet(folders[sizes[0]])
        feats = [c for c in small.columns if c.startswith("x")]
        direct = fit_model(
            small[feats].to_numpy(),
            small.label.to_numpy(),
            small.group.to_numpy(),
            features=feats,
        )
        diff = np.abs(rows_out[0][1].covariances - direct.covariances).max()
        print(
            f"check: max |covariance difference| Dask vs in-memory on {sizes[0]:,} rows "
            f"= {diff:.1e}"
        )
        print(f"client peak memory: {peak_rss_mib():.0f} MiB")
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
