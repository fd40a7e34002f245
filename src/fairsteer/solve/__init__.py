"""Nearest ideal models: min KL(steered || original) over ideal Gaussian models.

THEORY section 4. ``solve`` dispatches to :func:`affirmative_action` (one
reference group stays, the others move) and :func:`all_subgroups` (every group
may move).
"""

from __future__ import annotations

from collections.abc import Hashable

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel
from fairsteer.solve.affirmative import affirmative_action
from fairsteer.solve.all_subgroups import all_subgroups
from fairsteer.solve.solution import METHODS, Solution

__all__ = ["METHODS", "Solution", "affirmative_action", "all_subgroups", "solve"]


def solve(
    model: GaussianModel,
    method: str = "affirmative",
    *,
    reference: Hashable | None = None,
    seed: int = 0,
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
    """
    if method == "affirmative":
        return affirmative_action(model, reference=reference, seed=seed)
    if method == "all-subgroups":
        if reference is not None:
            raise InputError("--reference applies to method 'affirmative' only")
        return all_subgroups(model, seed=seed)
    raise InputError(f"method must be one of {METHODS}, got {method!r}")
