"""Representation benchmark: EF fit-and-solve time next to LEACE and POT fit time.

Run on demand (not collected by pytest):

    python benchmarks/bench_representations.py [--limit 12000] [--repeat 3] [--synthetic]

Data: the BUG sentences of ``fairsteer experiment bug`` (all professions with
>= 150 sentences per gender as classes, groups = gender, --limit sentences,
seed 0) encoded by MiniLM (d=384, mean pooling, last layer) and SmolLM2-135M
(d=576, last token, last layer), through the experiment's disk cache (the
first run encodes: minutes). ``--synthetic`` replaces the representations by
standard-normal vectors of the same shape (same labels and groups) for a
quick run without the models.

Timed, best of --repeat, all in this process:
  * EF fit+solve: fit_model (shared covariance per gender, OAS) followed by
    the affirmative solve; the all-subgroups solve is timed once;
  * LEACE fit: concept_erasure.LeaceEraser.fit(X, one-hot gender) in float64;
  * POT fit: ot.da.LinearTransport().fit (Gaussian OT of one gender onto the
    other = MiMiC's map).
Ratios are EF time / peer time.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from _timing import best_of  # benchmarks/ is on sys.path when run as a script

from fairsteer import fit_model, solve

MODELS = {"minilm": 384, "smollm2": 576}


def representations(model: str, limit: int, synthetic: bool):
    from fairsteer_experiments.data.bug import load_bug

    data = load_bug(limit=limit, seed=0)
    y, g = data.professions.astype(str), data.genders.astype(str)
    if synthetic:
        X = np.random.default_rng(0).standard_normal((len(y), MODELS[model]))
    else:
        from fairsteer_experiments.models import encode

        X = encode(data.sentences, model=model).astype(np.float64)
    return X, y, g


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=12000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--skip-all-subgroups", action="store_true")
    args = p.parse_args()

    import ot
    import torch

    with warnings.catch_warnings():  # concept-erasure uses torch.jit.script at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from concept_erasure import LeaceEraser

    torch.set_num_threads(2)
    for model in args.models:
        X, y, g = representations(model, args.limit, args.synthetic)
        source = "synthetic N(0, I)" if args.synthetic else "BUG representations"
        bench(model, source, X, y, g, args.repeat, LeaceEraser, ot, args.skip_all_subgroups)


def bench(model, source, X, y, g, repeat, LeaceEraser, ot, skip_all=False) -> None:
    import torch

    names = np.unique(g)
    Z = torch.tensor((g[:, None] == names[None, :]).astype(np.float64))
    Xt = torch.tensor(X)

    def ef():
        fitted = fit_model(X, y, g, covariance="shared", shrinkage="oas")
        return fitted, solve(fitted, "affirmative")

    t_ef, (fitted, aff) = best_of(repeat, ef)
    t_leace, _ = best_of(repeat, lambda: LeaceEraser.fit(Xt, Z))
    t_pot, _ = best_of(
        repeat, lambda: ot.da.LinearTransport().fit(Xs=X[g == names[0]], Xt=X[g == names[1]])
    )
    K = len(np.unique(y))
    print(f"{model}: n={len(y)}, d={X.shape[1]}, K={K} professions, m=2 genders ({source})")
    print(f"  LEACE fit                 {t_leace:8.3f} s")
    print(f"  POT LinearTransport fit   {t_pot:8.3f} s")
    print(
        f"  EF fit + affirmative      {t_ef:8.3f} s   {t_ef / t_leace:6.2f}x LEACE"
        f"   {t_ef / t_pot:6.2f}x POT   (KL {aff.kl:.4f}, reference {aff.reference_group})"
    )
    if skip_all:
        return
    t_all, sol = best_of(1, lambda: solve(fitted, "all-subgroups"))
    print(
        f"  EF all-subgroups solve    {t_all:8.3f} s   {t_all / t_leace:6.2f}x LEACE"
        f"   {t_all / t_pot:6.2f}x POT   (KL {sol.kl:.4f})"
    )


if __name__ == "__main__":
    main()
