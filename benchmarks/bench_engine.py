"""Engine benchmark: fit and solve times as ratios to one X^T X product.

Run on demand (not collected by pytest):

    python benchmarks/bench_engine.py [--n 200000] [--d 768] [--classes 28] [--repeat 3]

Data: m=2 groups, K classes, shared covariance, seeded (numpy default_rng(0)).
Every time is the best of --repeat runs, measured in the same process as the
reference product, so the ratios are comparable across machines.
Goals (issue 2): fit within 1.5x of X^T X; affirmative solve under 1 s.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_of  # benchmarks/ is on sys.path when run as a script

from fairsteer import fit_model, solve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--classes", type=int, default=28)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-all-subgroups", action="store_true")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    n, d, K = args.n, args.d, args.classes
    groups = rng.integers(0, 2, n)
    y = rng.integers(0, K, n)
    class_means = rng.normal(size=(2, K, d))
    mix = rng.normal(size=(2, d, d)) / np.sqrt(d)
    X = rng.standard_normal((n, d))
    for a in range(2):
        rows = groups == a
        X[rows] = X[rows] @ (np.eye(d) + 0.5 * mix[a]) + class_means[a, y[rows]]

    t_xtx, _ = best_of(args.repeat, lambda: X.T @ X)
    t_fit, model = best_of(args.repeat, lambda: fit_model(X, y, groups, covariance="shared"))
    t_aff, aff = best_of(args.repeat, lambda: solve(model, "affirmative"))
    print(f"data: n={n}, d={d}, K={K}, m=2, shared covariance (seed 0)")
    print(f"X^T X product         {t_xtx:8.3f} s   1.00x")
    print(f"fit statistics+model  {t_fit:8.3f} s   {t_fit / t_xtx:.2f}x   (goal <= 1.5x)")
    print(
        f"solve affirmative     {t_aff:8.3f} s   {t_aff / t_xtx:.2f}x   (goal < 1 s)"
        f"   KL = {aff.kl:.4f}, reference = {aff.reference_group}"
    )
    if not args.skip_all_subgroups:
        t_all, sol = best_of(1, lambda: solve(model, "all-subgroups"))
        print(
            f"solve all-subgroups   {t_all:8.3f} s   {t_all / t_xtx:.2f}x"
            f"   KL = {sol.kl:.4f}, sweeps = {sol.diagnostics['sweeps']}"
        )


if __name__ == "__main__":
    main()
