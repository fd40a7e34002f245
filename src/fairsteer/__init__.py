"""fairsteer: exact group fairness by optimal steering.

Fit Gaussian models per (group, class) cell, audit how far they are from ideal,
find the nearest ideal model in KL divergence and steer data to it with
optimal-transport affine maps. The layers, bottom up: statistics
(:mod:`fairsteer.stats`), families (:mod:`fairsteer.families`), the model
(:mod:`fairsteer.model`) and its estimation (:mod:`fairsteer.fit`), solvers
(:mod:`fairsteer.solve`), the audit, the maps, the estimator, the backends
(:mod:`fairsteer.torch`) and the command line.
"""

from fairsteer.audit import Audit, audit
from fairsteer.errors import InputError, NotFittedError
from fairsteer.estimator import OptimalSteering
from fairsteer.families import Families, Family
from fairsteer.fit import Fitter, fit_model, model_from_stats, shrink_covariance
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.options import SolverOptions
from fairsteer.solve import Solution, affirmative_action, all_subgroups, solve
from fairsteer.stats import CellStats, cell_statistics

__all__ = [
    "Audit",
    "CellStats",
    "Families",
    "Family",
    "Fitter",
    "GaussianModel",
    "InputError",
    "NotFittedError",
    "OptimalSteering",
    "Solution",
    "SolverOptions",
    "SteeringMaps",
    "affirmative_action",
    "all_subgroups",
    "audit",
    "cell_statistics",
    "fit_model",
    "model_from_stats",
    "shrink_covariance",
    "solve",
]
__version__ = "0.1.0"
