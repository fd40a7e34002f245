"""``fairsteer demo``: the synthetic "bias in, bias out" case study.

Per seed: draw a training sample from the BIASED law, fit the model (shared
covariance per group), apply every method, then

- audit the law each method produces (closed form: Bayes error and DP / EO
  gaps of the group-aware Bayes classifier at cost 1/2 and the supremum over
  costs) and its KL to the fitted original;
- train a logistic regression on the steered sample (with the method's
  weights), with and without the group as an input, and evaluate it on a
  fresh sample of the unbiased ground truth (test rows go through the
  method's test-time map: the group maps for mean matching and Gaussian OT,
  none for the others).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fairsteer import GaussianModel, audit, fit_model
from fairsteer.audit import binary_gap_curves
from fairsteer.baselines import reweighing_law, reweighing_weights
from fairsteer.data.synthetic import GROUPS, case_study, sample_model
from fairsteer.metrics import dp_gap, eo_gap
from fairsteer.solve.solution import objective
from fairsteer_experiments.protocol import group_baselines, over_seeds, steer_ef, summarise_rows
from fairsteer_experiments.runner import EXPERIMENTS, check_needs

__all__ = ["METHODS", "build_report", "format_table", "register", "run_demo"]

METHODS = (
    "Original",
    "EF-Affirmative",
    "EF-All-subgroups",
    "Mean matching",
    "Gaussian OT (MiMiC)",
    "Reweighing",
)
COLUMNS = (
    ("bayes_error", "Bayes err"),
    ("bayes_dp_half", "DP@1/2"),
    ("bayes_eo_half", "EO@1/2"),
    ("bayes_dp_sup", "DP sup"),
    ("bayes_eo_sup", "EO sup"),
    ("kl", "KL"),
    ("lr_accuracy", "LR acc"),
    ("lr_dp", "LR DP"),
    ("lr_eo", "LR EO"),
    ("blind_accuracy", "blind acc"),
    ("blind_dp", "blind DP"),
    ("blind_eo", "blind EO"),
)


@dataclass
class Applied:
    """What a method makes of the training sample and of the fitted law."""

    X: NDArray[np.float64]
    weights: NDArray[np.float64]
    law: GaussianModel
    test_map: Any = None  # callable (X, groups) -> X, or None for identity
    solution: Any = None


def apply_methods(
    X: NDArray[np.float64], y: NDArray[np.int64], g: NDArray[Any], model: GaussianModel, seed: int
) -> dict[str, Applied]:
    """Every method of the demo applied to one training sample."""
    out = {"Original": Applied(X, np.ones(len(y)), model)}
    for name, est, Xs in steer_ef(X, y, g, seed=seed, covariance="shared"):
        out[name] = Applied(Xs, est.sample_weight_, est.solution_.ideal, solution=est.solution_)
    for name, group_map in group_baselines(X, g, reference=GROUPS[0]).items():
        out[name] = Applied(
            group_map.transform(X, g),
            np.ones(len(y)),
            group_map.transform_model(model),
            test_map=group_map.transform,
        )
    out["Reweighing"] = Applied(X, reweighing_weights(y, g), reweighing_law(model))
    return out


def _downstream(
    app: Applied, y: NDArray[np.int64], g: NDArray[Any], test: tuple
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    Xt, yt, gt = test
    if app.test_map is not None:
        Xt = app.test_map(Xt, gt)
    out = {}
    for prefix, with_group in (("lr", True), ("blind", False)):

        def feats(X: NDArray[np.float64], groups: NDArray[Any], with_group: bool = with_group):
            return np.c_[X, groups == GROUPS[1]] if with_group else X

        clf = LogisticRegression(max_iter=1000).fit(feats(app.X, g), y, sample_weight=app.weights)
        pred = clf.predict(feats(Xt, gt))
        out[f"{prefix}_accuracy"] = float(np.mean(pred == yt))
        out[f"{prefix}_dp"] = dp_gap(pred, sensitive_features=gt)
        out[f"{prefix}_eo"] = eo_gap(yt, pred, sensitive_features=gt)
    return out


def _one_seed(
    study: Any, seed: int, n_train: int, n_test: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Every method's row of one seed, and the fitted model and applied methods."""
    rng = np.random.default_rng(seed)
    X, y, g = sample_model(study.biased, n_train, rng)
    test = sample_model(study.truth, n_test, rng)
    model = fit_model(X, y, g, covariance="shared", group_labels=GROUPS)
    applied = apply_methods(X, y, g, model, seed)
    rows = {}
    for name, app in applied.items():
        rep = audit(app.law)
        rows[name] = {
            "bayes_error": rep.bayes_error,
            "bayes_dp_half": rep.dp_gap_half,
            "bayes_eo_half": rep.eo_gap_half,
            "bayes_dp_sup": rep.dp_gap,
            "bayes_eo_sup": rep.eo_gap,
            "kl": max(objective(model, app.law)[0], 0.0),  # round-off of KL(P || P)
            **_downstream(app, y, g, test),
        }
    return rows, {"model": model, "applied": applied}


def run_demo(
    variant: str = "univariate",
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    n_train: int = 4000,
    n_test: int = 20000,
) -> dict[str, Any]:
    """Run the case study; returns per-seed rows, mean/std summaries and seed-0 laws."""
    study = case_study(variant)
    runs = over_seeds(seeds, lambda seed: _one_seed(study, seed, n_train, n_test))
    per_seed = {name: [rows[name] for rows, _ in runs] for name in METHODS}
    keys = [k for k, _ in COLUMNS]
    summary = {name: summarise_rows(rows, keys) for name, rows in per_seed.items()}
    first = runs[0][1]
    return {
        "variant": variant,
        "seeds": list(seeds),
        "n_train": n_train,
        "n_test": n_test,
        "summary": summary,
        "per_seed": per_seed,
        "_study": study,
        "_first": first,
    }


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: mean (std) over seeds."""
    head = f"{'method':22s}" + "".join(f"{label:>16s}" for _, label in COLUMNS)
    lines = [
        f"{result['variant']} case study, seeds {result['seeds']}, n_train={result['n_train']}, "
        f"n_test={result['n_test']} (mean (std) over seeds)",
        head,
    ]
    for name, stats in result["summary"].items():
        cells = "".join(
            f"{stats[k]['mean']:>9.4f} ({stats[k]['std']:.3f})"[-16:].rjust(16) for k, _ in COLUMNS
        )
        lines.append(f"{name:22s}{cells}")
    return "\n".join(lines)


def _markdown(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = ["method"] + [label for _, label in COLUMNS]
    rows = [
        [name] + [f"{s[k]['mean']:.4f} ± {s[k]['std']:.3f}" for k, _ in COLUMNS]
        for name, s in result["summary"].items()
    ]
    return cols, rows


def build_report(results: list[dict[str, Any]], path: str) -> None:
    """The demo's HTML report (table, gap-vs-cost curves, densities, KL per cell)."""
    from fairsteer.report import Report

    rep = Report(
        "fairsteer demo: bias in, bias out",
        "Synthetic Gaussian case study. Training data come from a biased law, evaluation "
        "from the unbiased (ideal) ground truth. Command: fairsteer demo; seeds listed per table.",
    )
    colors = dict(zip(METHODS, ["#444", "#d62728", "#9467bd", "#1f77b4", "#2ca02c", "#ff7f0e"]))
    for res in results:
        study, first = res["_study"], res["_first"]
        rep.add_heading(f"{res['variant'].capitalize()} variant")
        rep.add_text(
            f"Seeds {res['seeds']}; {res['n_train']} training rows, {res['n_test']} test rows "
            "per seed; mean ± standard deviation over seeds. Bayes columns: the group-aware "
            "Bayes-optimal classifier of the law each method produces (closed form). LR: "
            "logistic regression with the group as input; blind: without it."
        )
        rep.add_table(*_markdown(res))
        rep.add_figure(
            _gap_figure(first, colors),
            "Fairness gap of the Bayes classifier versus cost (seed "
            f"{res['seeds'][0]}). EF rows are identically zero.",
        )
        rep.add_figure(
            _density_figure(study, first),
            "Class-conditional densities per group: "
            "biased fit (dashed), EF-Affirmative steered law (solid), unbiased truth "
            "(dotted). Multivariate: projected on the truth's discriminant direction.",
        )
        rep.add_figure(_cell_kl_figure(first, colors), "Where the steering moves probability mass.")
    rep.write(path)


def _gap_figure(first: dict[str, Any], colors: dict[str, str]) -> Any:
    """DP and EO gaps of the Bayes classifier h_c of every method's law versus the cost c."""
    from fairsteer.report import figure

    costs = np.linspace(0.01, 0.99, 197)
    fig, ax = figure(10, 3.4, ncols=2)
    for name, app in first["applied"].items():
        curves = binary_gap_curves(app.law, costs)
        ax[0, 0].plot(costs, curves["dp"], label=name, color=colors[name])
        ax[0, 1].plot(costs, curves["eo"], label=name, color=colors[name])
    for k, title in enumerate(("DP gap of h_c", "EO gap of h_c")):
        ax[0, k].set(xlabel="cost c of a false positive", title=title, ylim=(-0.02, None))
    ax[0, 1].legend(fontsize=7)
    return fig


def _cell_kl_figure(first: dict[str, Any], colors: dict[str, str]) -> Any:
    """KL per (group, class) cell of the two EF solutions."""
    from fairsteer.report import figure

    fig, ax = figure(7, 2.8)
    labels, width = [], 0.35
    for k, name in enumerate(("EF-Affirmative", "EF-All-subgroups")):
        cell_kl = first["applied"][name].solution.cell_kl
        labels = [f"{grp[:4]}., y={i}" for grp in GROUPS for i in (0, 1)]
        ax[0, 0].bar(
            np.arange(4) + k * width, cell_kl.ravel(), width, label=name, color=colors[name]
        )
    ax[0, 0].set_xticks(np.arange(4) + width / 2, labels)
    ax[0, 0].set(ylabel="KL (nats)", title="KL per (group, class) cell")
    ax[0, 0].legend(fontsize=8)
    return fig


def _density_figure(study: Any, first: dict[str, Any]) -> Any:
    from scipy.stats import norm

    from fairsteer.report import figure

    truth = study.truth
    direction = np.linalg.solve(truth.covariances[0, 0], truth.means[0, 1] - truth.means[0, 0])
    direction /= np.linalg.norm(direction)
    laws = (
        ("biased fit", first["model"], "--"),
        ("EF-Affirmative", first["applied"]["EF-Affirmative"].law, "-"),
        ("truth", truth, ":"),
    )
    fig, ax = figure(10, 3.2, ncols=2)
    for a, grp in enumerate(GROUPS):
        lo = min(direction @ truth.means[a, 0], direction @ truth.means[a, 1]) - 5
        hi = max(direction @ truth.means[a, 0], direction @ truth.means[a, 1]) + 5
        x = np.linspace(lo, hi, 400)
        for label, law, style in laws:
            for i, color in ((0, "#1f77b4"), (1, "#d62728")):
                mean = direction @ law.means[a, i]
                sd = np.sqrt(direction @ law.covariances[a, i] @ direction)
                dens = law.class_priors[a, i] * norm.pdf(x, mean, sd)
                ax[0, a].plot(
                    x, dens, style, color=color, label=f"{label}, y={i}" if a == 0 else None
                )
        ax[0, a].set(title=f"group: {grp}", xlabel="feature (projection)")
    ax[0, 0].legend(fontsize=7)
    return fig


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _cmd_demo(args: argparse.Namespace) -> int:
    from fairsteer.io import check_output

    check_needs("fairsteer demo", [EXPERIMENTS])
    check_output(args.report)
    variants = ("univariate", "multivariate") if args.variant == "both" else (args.variant,)
    start = time.perf_counter()
    results = [run_demo(v, tuple(args.seeds), args.n_train, args.n_test) for v in variants]
    build_report(results, args.report)
    elapsed = time.perf_counter() - start
    if args.json:
        json.dump([_public(r) for r in results], sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(format_table(r), end="\n\n")
        print(f"report: {args.report} ({elapsed:.1f} s)")
    return 0


def register(sub: Any) -> None:
    """Register ``demo`` on the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="the synthetic bias-in-bias-out case study (table + HTML report)",
        epilog="example: fairsteer demo --variant both --seeds 0 1 2 3 4",
    )
    p.add_argument("--variant", choices=["univariate", "multivariate", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--report", default="fairsteer-demo.html", help="HTML report path")
    p.set_defaults(handler=_cmd_demo)
