"""Nearest ideal models: min KL(steered || original) over ideal Gaussian models.

THEORY section 4. :func:`solve` looks the method up in :data:`SOLVERS`:
:func:`affirmative_action` (one reference group stays, the others move) and
:func:`all_subgroups` (every group may move).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import asdict
from typing import Any

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel
from fairsteer.options import METHODS, SolverOptions, check_choice
from fairsteer.solve.affirmative import affirmative_action
from fairsteer.solve.all_subgroups import all_subgroups
from fairsteer.solve.solution import Solution

__all__ = [
    "METHODS",
    "SOLVERS",
    "Solution",
    "SolverOptions",
    "affirmative_action",
    "all_subgroups",
    "solve",
]

#: Solver of each method: ``solver(model, *, seed, n_random_starts, max_iter, gtol, **extra)``.
SOLVERS: dict[str, Callable[..., Solution]] = {
    "affirmative": affirmative_action,
    "all-subgroups": all_subgroups,
}


def solve(
    model: GaussianModel,
    method: str = "affirmative",
    *,
    reference: Hashable | None = None,
    seed: int = 0,
    options: SolverOptions | dict[str, Any] | None = None,
) -> Solution:
    """Nearest ideal model to ``model`` in KL(steered || original).

    Parameters
    ----------
    model : GaussianModel
    method : {"affirmative", "all-subgroups"}
    reference : group name, optional
        Affirmative action only: the group that stays in place. Default: the
        group whose choice gives the smallest KL.
    seed : int
        Seed of the random extra starts of the global searches.
    options : SolverOptions or dict, optional
        Starts, iteration cap and tolerance (:class:`SolverOptions`).

    Returns
    -------
    Solution
        ``solution.diagnostics["converged"]`` says whether the stationarity
        certificate holds.
    """
    check_choice(method, METHODS, "method")
    opts = asdict(SolverOptions.coerce(options))
    if method == "affirmative":
        return SOLVERS[method](model, reference=reference, seed=seed, **opts)
    if reference is not None:
        raise InputError(
            f"a reference group applies to method 'affirmative' only, not {method!r}; "
            "drop the reference"
        )
    return SOLVERS[method](model, seed=seed, **opts)
