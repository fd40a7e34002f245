r"""Categorical context steered with the exact guarantee (:ref:`theory-9`, second part).

Groups a, classes y, a categorical context C with few levels c (several
context columns: every observed combination of their values is a level) and
features X. The model is

- the joint law ``joint[a, c, y] = P(A=a, C=c, Y=y)``, and
- per level c a :class:`~fairsteer.model.GaussianModel` of X given (a, y),
  ``F[a,c,y] = N(mu[a,c,y], S[a,c,y])``, whose priors are P(A=a, Y=y | C=c).

Ideal target (:ref:`theory-9`): P~(A) = P(A), class priors pi~ common to the
groups, a category law given the class that does not depend on the group,
P~(c | a, y) = Q(c | y), and per-(a, c) affine images of a per-level reference,
F~[a,c,y] = N(G_ac nu_cy + t_ac, G_ac Om_cy G_ac^T). With T_a(x, c) =
(G_ac x + t_ac, c), invertible, this is ideal by :ref:`theory-3`.

KL by the chain rule over (A, Y, C, X), with R(c, y) = pi~_y Q(c | y):

.. math::

    \mathrm{KL}(\tilde D\|D) = \sum_a w_a \Big[\mathrm{KL}(\tilde\pi\|\pi_a)
      + \sum_y \tilde\pi_y \mathrm{KL}(Q(\cdot|y)\|P(\cdot|a,y))
      + \sum_{c,y} R(c,y)\,\mathrm{KL}(\tilde F_{acy}\|F_{acy})\Big]
    = \sum_a w_a \sum_{c,y} R(c,y)\Big[\ln\frac{R(c,y)}{P(c,y|a)} + K_{acy}\Big].

Block-coordinate descent (all subgroups):

1. Gaussian block, R fixed: the objective separates over levels; level c is a
   nearest-ideal Gaussian problem over (a, y) with cell weights
   w_a R(c, y) (proportional to w_a rho_c(y), rho_c = R(., c) / R(c)),
   solved by :func:`fairsteer.solve.all_subgroups` with ``hold_priors=True``
   on a per-level model with group weights w and class priors rho_c. The
   solver is multi-start and non-convex, so the previous level solution is
   kept when it is better under the new weights: the step never increases KL.
2. Category block, Gaussian parts fixed: with s(c, y) = sum_a w_a (ln P(c, y | a)
   - K_acy), Gibbs' variational principle gives the exact joint minimiser
   R(c, y) = exp(s(c, y)) / sum exp(s) (the w_a sum to one). For fixed pi~ its
   conditional is :ref:`theory-9`'s Q(c|y) proportional to
   exp(sum_a w_a (ln P(c|a,y) - KL(F~[a,c,y] || F[a,c,y]))), and its marginal
   is :ref:`theory-4b`'s prior update with the cell KL replaced by
   -ln sum_c exp(...).

Affirmative action with reference group r keeps r's whole law: pi~ = pi_r,
Q = P(.|r, .) and, per level, the 4a maps to r's cells (no descent needed).

Steering samples (:func:`steer_context`) re-draws each row's category by the
optimal coupling of P(.|a,y) to Q(.|y) on counts (deterministic
largest-remainder rounding of n_ay Q(.|y), the maximum number of rows kept in
place) and maps x by the OT map from F[a,c,y] to F~[a,c',y].
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from fairsteer.errors import InputError
from fairsteer.files import read_json, write_atomic
from fairsteer.fit import fit_model
from fairsteer.model import GaussianModel
from fairsteer.solve import Solution, affirmative_action, all_subgroups
from fairsteer.stats import encode_labels

__all__ = [
    "ContextModel",
    "ContextSolution",
    "SteeredContext",
    "context_kl",
    "fit_context_model",
    "largest_remainder",
    "solve_context",
    "steer_context",
]

Array = NDArray[np.float64]
COMBINE = " & "  # joins the values of several context columns into one level name
MERGE = " | "  # joins the level names merged by the rare-level rule
METHODS = ("affirmative", "all-subgroups")


# ------------------------------------------------------------------ levels


def _context_combos(context: ArrayLike, n: int) -> list[tuple[str, ...]]:
    """The context of every row as a tuple of strings (one per context column)."""
    arr = np.asarray(context, dtype=object)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise InputError(
            f"context must have shape ({n},) or ({n}, k) to match X, got {np.shape(context)}"
        )
    out = []
    for k, row in enumerate(arr):
        for v in row:
            if v is None or (isinstance(v, float) and not np.isfinite(v)) or str(v) == "":
                raise InputError(
                    f"context row {k + 1} has no value ({v!r}); every row needs a context "
                    "value: fill or drop that row"
                )
        out.append(tuple(str(v) for v in row))
    return out


def _level_name(members: Sequence[tuple[str, ...]]) -> str:
    return MERGE.join(COMBINE.join(m) for m in members)


@dataclass(frozen=True, eq=False)
class ContextModel:
    """Gaussian cells per (group, context level, class) and the joint law of (A, C, Y).

    Attributes
    ----------
    joint : ndarray (m, L, K)
        P(A=a, C=c, Y=y); positive, summing to one.
    cells : tuple of GaussianModel
        One per level c, over the same groups and classes: X | A=a, C=c, Y=y
        ~ N(cells[c].means[a, y], cells[c].covariances[a, y]); its priors are
        P(A=a, Y=y | C=c).
    levels : tuple of str
        Level names (combinations joined by ``" & "``, merged levels by ``" | "``).
    members : tuple of tuple of tuple of str
        The context values (one string per context column) that form each level.
    context : tuple of str
        Names of the context columns.
    """

    joint: Array
    cells: tuple[GaussianModel, ...]
    levels: tuple[str, ...]
    members: tuple[tuple[tuple[str, ...], ...], ...]
    context: tuple[str, ...] = ("context",)

    def __post_init__(self) -> None:
        joint = np.array(self.joint, dtype=np.float64)
        cells = tuple(self.cells)
        if joint.ndim != 3 or joint.shape[1] != len(cells) or len(cells) < 1:
            raise InputError(
                f"joint must have shape (groups, {len(cells)} levels, classes), got {joint.shape}"
            )
        if not np.all(np.isfinite(joint)) or np.any(joint <= 0):
            raise InputError("joint P(A, C, Y) must be positive: every cell needs rows")
        if abs(joint.sum() - 1.0) > 1e-6:  # JSON keeps ~15 digits: far below this
            raise InputError(f"joint P(A, C, Y) must sum to 1, it sums to {joint.sum():.10g}")
        first = cells[0]
        for c, model in enumerate(cells):
            if (
                model.priors.shape != (joint.shape[0], joint.shape[2])
                or model.groups != first.groups
                or model.classes != first.classes
                or model.n_features != first.n_features
                or model.families != first.families
            ):
                raise InputError(
                    f"level {c} has a model of another layout; every level needs the same "
                    "groups, classes, features and family"
                )
        if len(self.levels) != len(cells) or len(self.members) != len(cells):
            raise InputError("one level name and one member list are needed per level")
        if len(set(self.levels)) != len(self.levels):
            raise InputError(f"level names must be unique, got {list(self.levels)}")
        members = tuple(tuple(tuple(str(v) for v in m) for m in ms) for ms in self.members)
        k = len(self.context)
        if any(len(m) != k for ms in members for m in ms):
            raise InputError(f"every level member needs one value per context column ({k})")
        seen: set[tuple[str, ...]] = set()
        for ms in members:
            if not ms or seen.intersection(ms):
                raise InputError("levels must be non-empty and must not share members")
            seen.update(ms)
        joint = joint / joint.sum()
        joint.setflags(write=False)
        object.__setattr__(self, "joint", joint)
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "levels", tuple(str(v) for v in self.levels))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "context", tuple(str(v) for v in self.context))

    # --------------------------------------------------------------- sizes
    @property
    def groups(self) -> tuple[Hashable, ...]:
        return self.cells[0].groups

    @property
    def classes(self) -> tuple[Hashable, ...]:
        return self.cells[0].classes

    @property
    def n_levels(self) -> int:
        return len(self.cells)

    @property
    def group_weights(self) -> Array:
        """w[a] = P(A=a)."""
        return self.joint.sum(axis=(1, 2))

    @property
    def class_priors(self) -> Array:
        """pi[a, y] = P(Y=y | A=a), shape (m, K)."""
        return self.joint.sum(axis=1) / self.group_weights[:, None]

    @property
    def level_law(self) -> Array:
        """P(C=c | A=a, Y=y), shape (m, L, K)."""
        return self.joint / self.joint.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------- coding
    def level_codes(self, context: ArrayLike) -> NDArray[np.intp]:
        """The level index of every row's context value(s).

        Raises
        ------
        InputError
            For a value (combination) that is not in any level of the model.
        """
        combos = _context_combos(context, len(context))  # type: ignore[arg-type]
        lookup = {m: c for c, ms in enumerate(self.members) for m in ms}
        out = np.empty(len(combos), dtype=np.intp)
        for k, combo in enumerate(combos):
            if combo not in lookup:
                raise InputError(
                    f"context {COMBINE.join(combo)!r} (row {k + 1}) is not a level of the model "
                    f"(levels: {list(self.levels)}); fit the model on data with that value"
                )
            out[k] = lookup[combo]
        return out

    def level_values(self) -> list[tuple[str, ...]]:
        """What steering writes into the context columns for each level.

        Column j of level c holds the distinct j-th values of its members
        joined by ``" | "``: the value itself for an unmerged level, the level
        name for a merged level of one context column.

        Raises
        ------
        InputError
            If two levels would write the same values.
        """
        out = []
        for ms in self.members:
            cols = []
            for j in range(len(self.context)):
                vals = list(dict.fromkeys(m[j] for m in ms))
                cols.append(MERGE.join(vals))
            out.append(tuple(cols))
        if len(set(out)) != len(out):
            raise InputError(
                "two merged levels write the same values into the context columns; merge the "
                "context values by hand (one column) before fitting"
            )
        return out

    # --------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "context-model",
            "context": list(self.context),
            "levels": list(self.levels),
            "members": [[list(m) for m in ms] for ms in self.members],
            "joint": self.joint.tolist(),
            "cells": [model.to_dict() for model in self.cells],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextModel:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("kind") != "context-model":
            raise InputError("not a context model JSON (kind 'context-model'); fit with --context")
        try:
            return cls(
                joint=np.array(data["joint"], dtype=np.float64),
                cells=tuple(GaussianModel.from_dict(c) for c in data["cells"]),
                levels=tuple(data["levels"]),
                members=tuple(tuple(tuple(m) for m in ms) for ms in data["members"]),
                context=tuple(data["context"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed context model JSON: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ContextModel:
        return cls.from_dict(read_json(path))


# --------------------------------------------------------------------- fit


def _merge_rare(
    counts: NDArray[np.int64], members: list[list[tuple[str, ...]]], min_count: int
) -> tuple[NDArray[np.int64], list[list[tuple[str, ...]]]]:
    """Merge levels until every (group, level, class) cell has ``min_count`` rows.

    Rule: while a cell is short, the level with the smallest cell count
    (over groups and classes) is merged with the level with the next
    smallest; ties go to the earlier level. ``counts`` is (m, L, K).
    """
    counts = counts.copy()
    members = [list(ms) for ms in members]
    while counts.min() < min_count and counts.shape[1] > 1:
        smallest = counts.min(axis=(0, 2))
        order = np.argsort(smallest, kind="stable")
        c1, c2 = sorted(int(c) for c in order[:2])
        counts[:, c1] += counts[:, c2]
        members[c1] = members[c1] + members[c2]
        counts = np.delete(counts, c2, axis=1)
        del members[c2]
    return counts, members


def _check_min_count(
    counts: NDArray[np.int64],
    members: Sequence[Sequence[tuple[str, ...]]],
    min_count: int,
    merge_rare: bool,
    group_names: Sequence[Hashable],
    class_names: Sequence[Hashable],
) -> None:
    """Raise :class:`InputError` naming the first (group, level, class) cell below ``min_count``."""
    if counts.min() >= min_count:
        return
    a, c, i = (int(v) for v in np.argwhere(counts < min_count)[0])
    name = _level_name(members[c])
    hint = (
        "even with every level merged into one; drop that group or class"
        if merge_rare
        else "merge it with another level (merge_rare=True / --merge-rare merges the rarest "
        "levels), drop those rows, or use covariance='shared'"
    )
    raise InputError(
        f"context level {name!r} has {counts[a, c, i]} row(s) in cell (group "
        f"{group_names[a]!r}, class {class_names[i]!r}), fewer than min_count={min_count}; "
        f"{hint}"
    )


def _fit_levels(
    X: Array,
    g: NDArray[np.intp],
    yc: NDArray[np.intp],
    level: NDArray[np.intp],
    members: Sequence[Sequence[tuple[str, ...]]],
    fit_options: dict[str, Any],
) -> list[GaussianModel]:
    """:func:`fairsteer.fit_model` on the rows of every level; an error names the level."""
    group_arr = np.asarray(fit_options["group_labels"], dtype=object)[g]
    class_arr = np.asarray(fit_options["class_labels"], dtype=object)[yc]
    cells = []
    for c, ms in enumerate(members):
        rows = level == c
        try:
            cells.append(fit_model(X[rows], class_arr[rows], group_arr[rows], **fit_options))
        except InputError as exc:
            raise InputError(f"context level {_level_name(ms)!r}: {exc}") from None
    return cells


def fit_context_model(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    context: ArrayLike,
    *,
    context_names: Sequence[str] | None = None,
    family: str | Sequence[str] = "normal",
    covariance: str = "per-class",
    shrinkage: float | str | None = None,
    features: Sequence[str] | None = None,
    min_count: int | None = None,
    merge_rare: bool = False,
) -> ContextModel:
    """Fit Gaussian cells per (group, context level, class) and P(A, C, Y).

    Parameters
    ----------
    X : array-like of shape (n, d)
    y, groups : array-like of shape (n,)
    context : array-like of shape (n,) or (n, k)
        Categorical context values; with k columns every observed
        combination is a level.
    context_names : sequence of str, optional
        Names of the context columns (default ``context``, ``context1``, ...).
    family, covariance, shrinkage, features
        As in :func:`fairsteer.fit_model`, per level (``covariance="shared"``
        means one covariance per (group, level)).
    min_count : int, optional
        Fewest rows a (group, level, class) cell may have. Default: d + 1 for
        per-class covariances (fewer rows give a singular covariance), 1 for
        shared ones.
    merge_rare : bool
        False: a cell below ``min_count`` is an :class:`InputError` naming it.
        True: merge levels by the rule of :func:`_merge_rare` (repeatedly the
        two levels with the smallest cell counts) until every cell has
        ``min_count`` rows.

    Returns
    -------
    ContextModel
        Maximum-likelihood joint law (counts / n) and per-level models
        (:func:`fairsteer.fit_model` on the rows of each level).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    n, d = X.shape
    combos = _context_combos(context, n)
    k = len(combos[0]) if combos else 1
    if context_names is None:
        context_names = ["context"] if k == 1 else [f"context{j + 1}" for j in range(k)]
    if len(context_names) != k:
        raise InputError(f"{len(context_names)} context names given for {k} context columns")
    if min_count is None:
        min_count = 1 if covariance == "shared" else d + 1
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise InputError(f"min_count must be a whole number >= 1, got {min_count!r}")
    group_names, g = encode_labels(groups, None, "group")
    class_names, yc = encode_labels(y, None, "class")
    if g.size != n or yc.size != n:
        raise InputError(f"X has {n} rows but groups have {g.size} and y {yc.size}")
    uniq = sorted(set(combos))
    code = {u: j for j, u in enumerate(uniq)}
    raw = np.array([code[u] for u in combos], dtype=np.intp)
    counts = np.zeros((len(group_names), len(uniq), len(class_names)), dtype=np.int64)
    np.add.at(counts, (g, raw, yc), 1)
    members = [[u] for u in uniq]
    if merge_rare:
        counts, members = _merge_rare(counts, members, int(min_count))
    _check_min_count(counts, members, min_count, merge_rare, group_names, class_names)
    lookup = {u: c for c, ms in enumerate(members) for u in ms}
    level = np.array([lookup[u] for u in combos], dtype=np.intp)
    fit_options = {
        "family": family,
        "covariance": covariance,
        "shrinkage": shrinkage,
        "features": features,
        "group_labels": group_names,
        "class_labels": class_names,
    }
    cells = _fit_levels(X, g, yc, level, members, fit_options)
    return ContextModel(
        joint=counts / n,
        cells=tuple(cells),
        levels=tuple(_level_name(ms) for ms in members),
        members=tuple(tuple(ms) for ms in members),
        context=tuple(context_names),
    )


# ------------------------------------------------------------------- solve


def context_kl(original: ContextModel, candidate: ContextModel) -> dict[str, Any]:
    r"""KL(candidate || original) by the chain rule over (A, Y, C, X), with its parts.

    .. math::

        \mathrm{KL} = \mathrm{KL}(\tilde w\|w) + \sum_a \tilde w_a\Big[
        \mathrm{KL}(\tilde\pi_a\|\pi_a) + \sum_y \tilde\pi_{ay}
        \mathrm{KL}(\tilde P(\cdot|a,y)\|P(\cdot|a,y))
        + \sum_{c,y} \tilde P(c,y|a)\,\mathrm{KL}(\tilde F_{acy}\|F_{acy})\Big]

    (:ref:`theory-4` and :ref:`theory-9`; the first term is zero when P~(A) = P(A)). Works for any
    candidate of the same layout, ideal or not.

    Returns
    -------
    dict
        ``total``, ``group_kl`` (m,), ``prior_kl`` (m,), ``category_kl`` (m, K)
        and ``cell_kl`` (m, L, K).

    References
    ----------
    :ref:`theory-4` and :ref:`theory-9`; T. M. Cover and J. A. Thomas, *Elements of
    Information Theory*, 2nd ed., Theorem 2.5.3 (chain rule for relative entropy).
    """
    from fairsteer.solve.solution import objective

    _same_layout(original, candidate)
    cell_kl = np.stack(
        [objective(o, c)[1] for o, c in zip(original.cells, candidate.cells)], axis=1
    )
    wt, w = candidate.group_weights, original.group_weights
    group_kl = float(np.sum(wt * np.log(wt / w)))
    pit, pi = candidate.class_priors, original.class_priors
    prior_kl = np.sum(pit * np.log(pit / pi), axis=1)
    Qt, P = candidate.level_law, original.level_law
    category_kl = np.sum(Qt * np.log(Qt / P), axis=1)
    joint_t = candidate.joint / wt[:, None, None]  # P~(c, y | a)
    gauss = np.sum(joint_t * cell_kl, axis=(1, 2))
    total = group_kl + float(wt @ (prior_kl + np.sum(pit * category_kl, axis=1) + gauss))
    return {
        "total": total,
        "group_kl": group_kl,
        "prior_kl": prior_kl,
        "category_kl": category_kl,
        "cell_kl": cell_kl,
    }


def _same_layout(a: ContextModel, b: ContextModel) -> None:
    if (
        a.joint.shape != b.joint.shape
        or a.groups != b.groups
        or a.classes != b.classes
        or a.levels != b.levels
    ):
        raise InputError(
            "the model and the solution (or the two models) need the same groups, context "
            "levels and classes; solve the model you steer with"
        )


def _objective(w: Array, log_joint: Array, R: Array, cell_kl: Array) -> float:
    """sum_a w_a sum_{c,y} R (ln R - ln P(c, y | a) + K_acy); R (L, K), others (m, L, K)."""
    return float(w @ np.sum(R * (np.log(R)[None] - log_joint + cell_kl), axis=(1, 2)))


def _category_update(w: Array, log_joint: Array, cell_kl: Array) -> Array:
    """Exact minimiser R(c, y) = P~(c, y) of the objective for fixed Gaussian parts.

    R proportional to exp(sum_a w_a (ln P(c, y | a) - K_acy)) (Gibbs' variational
    principle; sum_a w_a = 1). ``log_joint`` is ln P(c, y | a), (m, L, K).
    """
    s = np.einsum("a,acy->cy", w, log_joint - cell_kl) / w.sum()
    return np.exp(s - logsumexp(s))


def _level_model(model: ContextModel, c: int, rho: Array) -> GaussianModel:
    """Level c's cells with group weights P(A) and the common class priors ``rho``."""
    rho = np.maximum(rho, np.finfo(np.float64).tiny)
    rho = rho / rho.sum()
    w = model.group_weights
    return model.cells[c].with_params(
        w[:, None] * rho[None, :], model.cells[c].means, model.cells[c].covariances
    )


def _gaussian_block(
    model: ContextModel,
    R: Array,
    method: str,
    reference: int | None,
    seed: int,
    n_random_starts: int,
    previous: list[Solution] | None = None,
) -> list[Solution]:
    """Per-level nearest-ideal solutions for the joint law R (L, K) of (C, Y)."""
    out = []
    for c in range(model.n_levels):
        rho = R[c] / R[c].sum()
        level = _level_model(model, c, rho)
        if method == "affirmative":
            sol = affirmative_action(level, reference=level.groups[reference], seed=seed)
        else:
            sol = all_subgroups(level, seed=seed, n_random_starts=n_random_starts, hold_priors=True)
        if previous is not None:
            # Non-convex, multi-start: keep the previous parts when they are
            # better under the new weights, so the block never increases KL.
            w = model.group_weights
            old = float(w @ (previous[c].cell_kl @ rho))
            new = float(w @ (sol.cell_kl @ rho))
            if old < new:
                sol = previous[c]
        out.append(sol)
    return out


def _cell_kl(solutions: list[Solution]) -> Array:
    return np.stack([s.cell_kl for s in solutions], axis=1)


def _descend(
    model: ContextModel,
    R: Array,
    sols: list[Solution],
    seed: int,
    n_random_starts: int,
    tol: float,
    max_iter: int,
) -> tuple[Array, list[Solution], dict[str, Any]]:
    """Block-coordinate descent from (R, sols); stops when KL drops by <= tol relative."""
    w = model.group_weights
    log_joint = np.log(model.joint / w[:, None, None])
    history = [_objective(w, log_joint, R, _cell_kl(sols))]
    converged = False
    for _ in range(max_iter):
        R = _category_update(w, log_joint, _cell_kl(sols))
        sols = _gaussian_block(model, R, "all-subgroups", None, seed, n_random_starts, sols)
        history.append(_objective(w, log_joint, R, _cell_kl(sols)))
        if history[-2] - history[-1] <= tol * abs(history[-2]):
            converged = True
            break
    info = {
        "iterations": len(history) - 1,
        "converged": converged,
        "history": history,
        "levels_converged": all(bool(s.diagnostics.get("converged", True)) for s in sols),
    }
    return R, sols, info


def solve_context(
    model: ContextModel,
    method: str = "affirmative",
    *,
    reference: Hashable | None = None,
    seed: int = 0,
    tol: float = 1e-9,
    max_iter: int = 200,
    n_random_starts: int = 2,
) -> ContextSolution:
    r"""Nearest ideal context model in KL(steered || original) (:ref:`theory-9`).

    Parameters
    ----------
    model : ContextModel
    method : {"affirmative", "all-subgroups"}
        ``affirmative``: group ``reference`` keeps its whole law (pi~ = pi_r,
        Q = P(.|r, .), per-level :ref:`theory-4a` maps); default reference: the
        group giving the smallest KL. ``all-subgroups``: block-coordinate
        descent over the category block (exact, Gibbs) and the per-level
        Gaussian block (:func:`fairsteer.solve.all_subgroups` with
        ``hold_priors=True``), started from every group's affirmative solution
        and from the pooled law R = P(C, Y); the best run is kept.
    reference : group name, optional
        Affirmative action only.
    seed : int
        Seed of the random extra starts of the per-level solvers.
    tol : float
        A descent run stops when an iteration lowers the total KL by at most
        ``tol`` times its value (relative tolerance; an exact zero stops at once).
    max_iter : int
        Maximum iterations per descent run.
    n_random_starts : int
        Random extra starts of every per-level solve (all subgroups).

    Returns
    -------
    ContextSolution
        ``diagnostics["converged"]``: the best run met ``tol`` within
        ``max_iter`` (and, for each level, the per-level solver its gradient
        tolerance: ``levels_converged``); ``history``: its KL per iteration,
        non-increasing by construction.

    Notes
    -----
    Category update, for fixed Gaussian parts (proof: Gibbs' inequality):

    .. math::

        \tilde P(c, y) \propto \exp\Big(\sum_a w_a \big(\ln P(c, y|a)
        - \mathrm{KL}(\tilde F_{acy}\|F_{acy})\big)\Big).

    References
    ----------
    :ref:`theory-4a`, :ref:`theory-4b` and :ref:`theory-9` (this project); Gibbs' variational
    principle,
    e.g. Cover and Thomas, *Elements of Information Theory*, Theorem 2.6.3.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    names = [str(gr) for gr in model.groups]
    if reference is not None:
        if method != "affirmative":
            raise InputError("reference applies to method 'affirmative' only")
        if str(reference) not in names:
            raise InputError(
                f"unknown reference group {reference!r}; the model's groups are "
                f"{list(model.groups)}"
            )
    for name, value in (("tol", tol), ("max_iter", max_iter)):
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a number >= 0, got {value!r}")
    w = model.group_weights
    log_joint = np.log(model.joint / w[:, None, None])
    candidates = [names.index(str(reference))] if reference is not None else range(len(names))
    affirmative = {}
    for r in candidates:
        R = model.joint[r] / w[r]
        sols = _gaussian_block(model, R, "affirmative", r, seed, n_random_starts)
        affirmative[r] = (_objective(w, log_joint, R, _cell_kl(sols)), R, sols)
    best_r = min(affirmative, key=lambda k: affirmative[k][0])
    kl_by_reference = {names[r]: v[0] for r, v in affirmative.items()}
    if method == "affirmative":
        _, R, sols = affirmative[best_r]
        diagnostics: dict[str, Any] = {
            "solver": "affirmative action per level (reference group kept)",
            "converged": all(bool(s.diagnostics.get("converged", True)) for s in sols),
            "kl_by_reference": kl_by_reference,
        }
        return _solution(model, method, R, sols, model.groups[best_r], diagnostics)
    pooled = model.joint.sum(axis=0)
    pooled_sols = _gaussian_block(model, pooled, method, None, seed, n_random_starts)
    starts = [("pooled", pooled, pooled_sols)]
    starts += [(f"affirmative {names[r]}", v[1], v[2]) for r, v in affirmative.items()]
    runs = []
    best = None
    for label, R0, sols0 in starts:
        R, sols, info = _descend(model, R0, sols0, seed, n_random_starts, tol, max_iter)
        runs.append({"start": label, "kl": info["history"][-1], **info})
        if best is None or info["history"][-1] < best[2]["history"][-1]:
            best = (R, sols, info)
    assert best is not None
    R, sols, info = best
    diagnostics = {
        "solver": "block-coordinate descent: exact category block, per-level all-subgroups",
        "converged": info["converged"],
        "levels_converged": info["levels_converged"],
        "iterations": info["iterations"],
        "history": info["history"],
        "tol": tol,
        "pooled_kl": runs[0]["history"][0],
        "best_affirmative_kl": min(kl_by_reference.values()),
        "kl_by_reference": kl_by_reference,
        "runs": runs,
    }
    return _solution(model, method, R, sols, None, diagnostics)


def _solution(
    model: ContextModel,
    method: str,
    R: Array,
    sols: list[Solution],
    reference_group: Hashable | None,
    diagnostics: dict[str, Any],
) -> ContextSolution:
    """Assemble the ideal context model and its KL parts from R and the level solutions."""
    w = model.group_weights
    levels = []
    for c, sol in enumerate(sols):
        rho = R[c] / R[c].sum()
        level = _level_model(model, c, rho)
        # The level solution of the final weights: same maps, the weights rho_c.
        levels.append(
            Solution.from_maps(
                level,
                sol.method,
                level.class_priors[0],
                sol.reference_means,
                sol.reference_covariances,
                sol.G,
                sol.t,
                reference_group=sol.reference_group,
                diagnostics=sol.diagnostics,
            )
        )
        if reference_group is not None:
            # The kept group's cells stay bit for bit (from_maps recomputes them).
            ideal = levels[-1].ideal
            r = list(model.groups).index(reference_group)
            means, covs = np.array(ideal.means), np.array(ideal.covariances)
            means[r], covs[r] = model.cells[c].means[r], model.cells[c].covariances[r]
            levels[-1] = Solution(
                ideal=ideal.with_params(ideal.priors, means, covs),
                method=levels[-1].method,
                reference_priors=levels[-1].reference_priors,
                reference_means=np.array(model.cells[c].means[r]),
                reference_covariances=np.array(model.cells[c].covariances[r]),
                G=levels[-1].G,
                t=levels[-1].t,
                kl=levels[-1].kl,
                cell_kl=levels[-1].cell_kl,
                prior_kl=levels[-1].prior_kl,
                reference_group=reference_group,
                diagnostics=levels[-1].diagnostics,
            )
    ideal = ContextModel(
        joint=w[:, None, None] * R[None],
        cells=tuple(s.ideal for s in levels),
        levels=model.levels,
        members=model.members,
        context=model.context,
    )
    parts = context_kl(model, ideal)
    return ContextSolution(
        ideal=ideal,
        method=method,
        class_priors=R.sum(axis=0),
        level_priors=R / R.sum(axis=0, keepdims=True),
        level_solutions=tuple(levels),
        kl=parts["total"],
        prior_kl=parts["prior_kl"],
        category_kl=parts["category_kl"],
        cell_kl=parts["cell_kl"],
        reference_group=reference_group,
        diagnostics=diagnostics,
    )


@dataclass(frozen=True, eq=False)
class ContextSolution:
    """Nearest ideal context model and how it was reached.

    Attributes
    ----------
    ideal : ContextModel
        joint~[a, c, y] = w_a pi~_y Q(c | y); level c's cells
        N(G_ac nu_cy + t_ac, G_ac Om_cy G_ac^T).
    method : {"affirmative", "all-subgroups"}
    class_priors : ndarray (K,)
        pi~.
    level_priors : ndarray (L, K)
        Q(c | y), the group-independent category law given the class.
    level_solutions : tuple of Solution
        Per level c: reference (nu_c, Om_c) and maps (G_ac, t_ac) of the
        per-level problem (group weights P(A), class priors rho_c(y) =
        P~(y | c)); its ``kl`` is that level's Gaussian term
        sum_a w_a sum_y rho_c(y) KL(F~[a,c,y] || F[a,c,y]).
    kl : float
        Total KL(ideal || original) in nats.
    prior_kl : ndarray (m,)
        KL(pi~ || pi_a).
    category_kl : ndarray (m, K)
        KL(Q(.|y) || P(.|a,y)).
    cell_kl : ndarray (m, L, K)
        KL(F~[a,c,y] || F[a,c,y]).
    reference_group : hashable or None
    diagnostics : dict
    """

    ideal: ContextModel
    method: str
    class_priors: Array
    level_priors: Array
    level_solutions: tuple[Solution, ...]
    kl: float
    prior_kl: Array
    category_kl: Array
    cell_kl: Array
    reference_group: Hashable | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from fairsteer.solve.solution import _jsonable

        return {
            "kind": "context-solution",
            "method": self.method,
            "reference_group": self.reference_group,
            "kl": self.kl,
            "class_priors": self.class_priors.tolist(),
            "level_priors": self.level_priors.tolist(),
            "prior_kl": self.prior_kl.tolist(),
            "category_kl": self.category_kl.tolist(),
            "cell_kl": self.cell_kl.tolist(),
            "ideal": self.ideal.to_dict(),
            "level_solutions": [s.to_dict() for s in self.level_solutions],
            "diagnostics": _jsonable(self.diagnostics),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextSolution:
        """Inverse of :meth:`to_dict`; checks the level solutions reproduce the ideal cells."""
        if not isinstance(data, dict) or data.get("kind") != "context-solution":
            raise InputError("not a context solution JSON (kind 'context-solution')")
        try:
            ideal = ContextModel.from_dict(data["ideal"])
            levels = tuple(Solution.from_dict(s) for s in data["level_solutions"])
            arrays = {
                k: np.array(data[k], dtype=np.float64)
                for k in ("class_priors", "level_priors", "prior_kl", "category_kl", "cell_kl")
            }
            kl = float(data["kl"])
            method = str(data["method"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed context solution JSON: {exc}") from None
        if len(levels) != ideal.n_levels or method not in METHODS:
            raise InputError("context solution JSON: one level solution per level is needed")
        for s, cell in zip(levels, ideal.cells):
            scale = 1.0 + np.abs(cell.means).max()
            # JSON keeps ~16 significant digits
            if np.abs(s.ideal.means - cell.means).max() > 1e-8 * scale:
                raise InputError("context solution JSON is inconsistent: level maps and cells")
        return cls(
            ideal=ideal,
            method=method,
            level_solutions=levels,
            kl=kl,
            reference_group=data.get("reference_group"),
            diagnostics=dict(data.get("diagnostics", {})),
            **arrays,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the solution as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ContextSolution:
        return cls.from_dict(read_json(path))


# ------------------------------------------------------------------- steer


def largest_remainder(n: int, shares: Array) -> NDArray[np.int64]:
    """Integer counts summing to ``n`` closest to ``n * shares`` (Hamilton's rule).

    floor(n * shares) plus one for the largest remainders (ties: the earlier
    level); every count is the floor or the ceiling of its target.
    """
    target = n * np.asarray(shares, dtype=np.float64)
    counts = np.floor(target).astype(np.int64)
    short = int(n - counts.sum())
    order = np.argsort(-(target - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


@dataclass(frozen=True, eq=False)
class SteeredContext:
    """Steered samples.

    Attributes
    ----------
    X : ndarray (n, d)
        Steered features (data scale).
    levels : ndarray (n,) of int
        Level index of every row after the re-draw.
    moved : ndarray (n,) of bool
        Rows whose level changed.
    weights : ndarray (n,)
        pi~_y / pi[a, y] (:ref:`theory-4c`): the weighted sample has the ideal class
        priors in every group.
    uncorrected : list of (group, level, class)
        Cells where the exact moment correction was skipped (fewer than d + 1
        rows after the re-draw).
    """

    X: Array
    levels: NDArray[np.intp]
    moved: NDArray[np.bool_]
    weights: Array
    uncorrected: list[tuple[Hashable, str, Hashable]]


def _redraw_levels(
    lv: NDArray[np.intp],
    g: NDArray[np.intp],
    yc: NDArray[np.intp],
    Q: Array,
    m: int,
    rng: np.random.Generator,
) -> NDArray[np.intp]:
    """Step 1 of :func:`steer_context`: every row's level after the maximal coupling.

    Within each (group, class), the rows of a level above its largest-remainder
    target (of ``n_ay Q[:, y]``) move, chosen at random, to the levels below theirs.
    """
    L, K = Q.shape
    new = lv.copy()
    for a in range(m):
        for i in range(K):
            rows = np.flatnonzero((g == a) & (yc == i))
            if rows.size == 0:
                continue
            have = np.bincount(lv[rows], minlength=L)
            want = largest_remainder(rows.size, Q[:, i])
            movers = []
            for c in np.flatnonzero(have > want):
                at_c = rows[lv[rows] == c]
                movers.append(rng.choice(at_c, size=have[c] - want[c], replace=False))
            if movers:
                moving = rng.permutation(np.concatenate(movers))
                slots = np.repeat(np.arange(L), np.maximum(want - have, 0))
                new[moving] = slots
    return new


def _map_moved_rows(
    model: ContextModel,
    solution: ContextSolution,
    Z: Array,
    lv: NDArray[np.intp],
    new: NDArray[np.intp],
    g: NDArray[np.intp],
    yc: NDArray[np.intp],
) -> Array:
    r"""Step 2 of :func:`steer_context`: the OT map from F[a,c,y] to F~[a,c',y] on each row.

    ``Z`` is on the Gaussian scale; a row from level c to level c' gets
    :math:`\tilde\mu + A (z - \mu)` with :math:`A S A = \tilde S` (:ref:`theory-5`).
    """
    from fairsteer.maps import SteeringMaps

    m, L, K = model.joint.shape
    out = np.empty_like(Z)
    for c in range(L):
        for c2 in range(L):
            sel = (lv == c) & (new == c2)
            if not sel.any():
                continue
            maps = SteeringMaps.from_models(model.cells[c], solution.ideal.cells[c2])
            src, dst = model.cells[c], solution.ideal.cells[c2]
            for a in range(m):
                for i in range(K):
                    rows = np.flatnonzero(sel & (g == a) & (yc == i))
                    if rows.size:
                        out[rows] = dst.means[a, i] + (Z[rows] - src.means[a, i]) @ maps.A[a, i].T
    return out


def _correct_cell_moments(
    model: ContextModel,
    solution: ContextSolution,
    out: Array,
    new: NDArray[np.intp],
    g: NDArray[np.intp],
    yc: NDArray[np.intp],
) -> list[tuple[Hashable, str, Hashable]]:
    """Step 3 of :func:`steer_context`: give every target cell the ideal moments exactly.

    Maps the rows of each (a, c', y) cell of ``out`` in place by the OT map
    from their sample mean and covariance to F~[a,c',y]. Returns the cells
    left as they were (fewer than d + 1 rows, or a singular covariance).
    """
    from fairsteer.linalg import gaussian_ot_matrix

    m, L, K = model.joint.shape
    d = out.shape[1]
    uncorrected = []
    for c in range(L):
        dst = solution.ideal.cells[c]
        for a in range(m):
            for i in range(K):
                rows = np.flatnonzero((new == c) & (g == a) & (yc == i))
                if rows.size <= d:
                    if rows.size:
                        uncorrected.append((model.groups[a], model.levels[c], model.classes[i]))
                    continue
                mean = out[rows].mean(axis=0)
                dev = out[rows] - mean
                cov = dev.T @ dev / rows.size
                try:
                    A = gaussian_ot_matrix(cov, dst.covariances[a, i])
                except InputError:
                    uncorrected.append((model.groups[a], model.levels[c], model.classes[i]))
                    continue
                out[rows] = dst.means[a, i] + dev @ A.T
    return uncorrected


def steer_context(
    model: ContextModel,
    solution: ContextSolution,
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    context: ArrayLike,
    *,
    seed: int = 0,
    exact: bool = True,
) -> SteeredContext:
    r"""Steer labelled samples to the ideal context model.

    1. Categories: within each (group a, class y) with n_ay rows, the target
       counts are N_c = the largest-remainder rounding of n_ay Q(c|y)
       (deterministic; ``|N_c / n_ay - Q(c|y)| < 1 / n_ay``). The optimal coupling
       keeps min(n_acy, N_c) rows of every level in place (the most possible:
       sum_c min(P, Q) mass) and moves the excess rows, chosen at random
       (``seed``), to the levels short of their target.
    2. Features: a row moved from (a, c, y) to (a, c', y) is mapped by the OT
       map from F[a,c,y] to F~[a,c',y] (:ref:`theory-5`),
       :math:`x \mapsto \tilde\mu + A (x - \mu)`, :math:`A S A = \tilde S`.
    3. ``exact``: every target cell's rows are then mapped once more, by the
       OT map from their own sample mean and covariance to F~[a,c',y], so the
       steered sample's cell moments are the ideal ones exactly (a random
       subset of a cell does not have the cell's moments; without this step
       they match up to that sampling error). Skipped for cells with fewer
       than d + 1 rows (listed in ``uncorrected``).

    With the weights pi~_y / pi[a, y] the steered sample's law of (A, C, Y)
    is the ideal one up to the rounding of the counts, and its refit is ideal.

    References
    ----------
    :ref:`theory-4c`, :ref:`theory-5` and :ref:`theory-9`; the maximal coupling keeps sum_c min(P,
    Q)
    in place (T. Lindvall, *Lectures on the Coupling Method*, 1992, ch. I.5);
    Gaussian OT maps: G. Peyre and M. Cuturi, *Computational Optimal
    Transport*, 2019, Remark 2.31.
    """
    _same_layout(model, solution.ideal)
    first = model.cells[0]
    g = encode_labels(groups, model.groups, "group")[1]
    Z = first.to_gaussian_scale(X, g)
    n = Z.shape[0]
    yc = encode_labels(y, model.classes, "class")[1]
    lv = model.level_codes(context)
    if g.size != n or yc.size != n or lv.size != n:
        raise InputError(
            f"X has {n} rows but groups have {g.size}, y {yc.size} and context {lv.size}"
        )
    rng = np.random.default_rng(seed)
    new = _redraw_levels(lv, g, yc, solution.level_priors, model.joint.shape[0], rng)
    out = _map_moved_rows(model, solution, Z, lv, new, g, yc)
    uncorrected = _correct_cell_moments(model, solution, out, new, g, yc) if exact else []
    ratio = solution.class_priors[None, :] / model.class_priors
    return SteeredContext(
        X=first.from_gaussian_scale(out, g),
        levels=new,
        moved=new != lv,
        weights=ratio[g, yc],
        uncorrected=uncorrected,
    )
