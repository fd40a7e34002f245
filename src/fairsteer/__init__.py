"""fairsteer: exact group fairness by optimal steering.

Fit Gaussian models per (group, class) cell, audit how far they are from ideal,
find the nearest ideal model in KL divergence and steer data to it with
optimal-transport affine maps. THEORY.md is the mathematical contract.
"""

from fairsteer.audit import Audit, audit
from fairsteer.context import (
    ContextModel,
    ContextSolution,
    fit_context_model,
    solve_context,
    steer_context,
)
from fairsteer.errors import InputError, NotFittedError
from fairsteer.estimator import OptimalSteering
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel, fit_model, model_from_stats, shrink_covariance
from fairsteer.solve import Solution, affirmative_action, all_subgroups, solve
from fairsteer.stats import CellStats, cell_statistics

__all__ = [
    "Audit",
    "CellStats",
    "ContextModel",
    "ContextSolution",
    "GaussianModel",
    "InputError",
    "NotFittedError",
    "OptimalSteering",
    "Solution",
    "SteeringMaps",
    "affirmative_action",
    "all_subgroups",
    "audit",
    "cell_statistics",
    "fit_context_model",
    "fit_model",
    "model_from_stats",
    "shrink_covariance",
    "solve",
    "solve_context",
    "steer_context",
]
__version__ = "0.1.0"
