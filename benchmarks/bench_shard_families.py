"""Sharded fit with families that need a fitting pass: time and peak memory against n.

Run on demand (not collected by pytest), under the shared lock:

    flock /tmp/fairsteer-heavy.lock env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        python benchmarks/bench_shard_families.py [--sizes 1e6 4e6] [--kind parquet]

Data (numpy default_rng(k) for shard k): d skewed positive features
(log-normal with a group and class shift), groups f/m, classes 0/1, in shards
of --shard-rows rows, written once into a temporary directory (removed at the
end). For every size and family, ``python -m fairsteer fit SHARDS --family F``
runs in a fresh process under ``/usr/bin/time``: the wall time and the peak
resident memory of the largest process (with ``--engine dask``, the workers
are child processes and count too).

``normal`` needs one pass (the statistics); a family with parameters needs
the row count of every shard (free for Parquet: the footer; a read for CSV),
the sample pass (at most --family-sample rows kept, a bottom-k sample) and
the statistics pass. The families' memory is the sample, --family-sample x d
values, not the data: the peak should not grow with n.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_shards(folder: Path, n: int, rows: int, d: int, kind: str) -> int:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    k = 0
    for start in range(0, n, rows):
        size = min(rows, n - start)
        rng = np.random.default_rng(k)
        g = rng.integers(0, 2, size)
        y = rng.integers(0, 2, size)
        X = np.exp(rng.normal(size=(size, d)) * 0.7 + 0.3 * g[:, None] + 0.4 * y[:, None])
        cols = {f"x{j}": X[:, j] for j in range(d)}
        cols["g"] = np.where(g == 1, "m", "f")
        cols["y"] = y
        table = pa.table(cols)
        if kind == "parquet":
            pq.write_table(table, folder / f"part-{k:04d}.parquet")
        else:
            pcsv.write_csv(table, folder / f"part-{k:04d}.csv")
        k += 1
    return k


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak MiB of ``cmd`` (``/usr/bin/time``), and its last output line."""
    timed = ["/usr/bin/time", "-f", "TIME %e %M", *cmd]
    proc = subprocess.run(timed, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    m = re.search(r"TIME ([\d.]+) (\d+)", proc.stderr)
    assert m is not None
    return float(m.group(1)), int(m.group(2)) / 1024, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 4e6])
    p.add_argument("--shard-rows", type=int, default=250_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--kind", choices=["parquet", "csv"], default="parquet")
    p.add_argument("--families", nargs="+", default=["normal", "yeo-johnson", "auto"])
    p.add_argument("--engine", default="local", help="local, or 'dask' (--workers 2)")
    args = p.parse_args()
    d = args.features
    root = Path(tempfile.mkdtemp(prefix="bench-shard-families-"))
    print(
        f"bench_shard_families: d={d}, shards of {args.shard_rows:,} rows ({args.kind}), "
        f"engine {args.engine}, default --family-sample, python {sys.version.split()[0]}"
    )
    try:
        print("        rows  shards  data MiB  family        fit s  peak MiB")
        for n in (int(s) for s in args.sizes):
            folder = root / f"n{n}"
            t0 = time.perf_counter()
            n_shards = write_shards(folder, n, args.shard_rows, d, args.kind)
            mib = n * (d + 2) * 8 / 2**20
            print(f"  (wrote {n:,} rows in {n_shards} shards in {time.perf_counter() - t0:.1f} s)")
            for fam in args.families:
                cmd = [sys.executable, "-m", "fairsteer", "fit", str(folder), "--group", "g"]
                cmd += ["--label", "y", "--family", fam, "-o", str(root / "m.json")]
                if args.engine == "dask":
                    cmd += ["--engine", "dask", "--workers", "2"]
                secs, peak, _ = run(cmd)
                print(
                    f"  {n:>10,}  {n_shards:>6}  {mib:>8.0f}  {fam:<12}  {secs:>5.2f}  {peak:>8.0f}"
                )
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"environment: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


if __name__ == "__main__":
    main()
