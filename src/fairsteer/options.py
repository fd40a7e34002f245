"""Every option vocabulary of fairsteer in one place, and the solver options.

The estimator, :func:`fairsteer.solve.solve`, the command line and the
backends validate their options here, before any pass over the data, with
one message form: what was given, what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fairsteer.errors import InputError

__all__ = [
    "COVARIANCES",
    "METHODS",
    "PRIOR_MODES",
    "UNLABELED_MODES",
    "SolverOptions",
    "check_choice",
    "check_shrinkage",
    "parse_shrinkage",
    "shrinkage_argument",
]

#: Covariance structures: one covariance per (group, class) cell, or per group (LDA).
COVARIANCES = ("per-class", "shared")
#: Nearest-ideal programs (docs/theory.md sections 4a, 4b).
METHODS = ("affirmative", "all-subgroups")
#: How rows with an unknown label are steered (docs/theory.md section 5).
UNLABELED_MODES = ("soft", "hard", "none")
#: How the estimator's ``fit_resample`` equalises class priors (docs/theory.md section 4c).
PRIOR_MODES = ("weights", "resample", "none")


def check_choice(value: Any, allowed: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``allowed``, else an :class:`InputError` naming both."""
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{what} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_shrinkage(shrinkage: Any) -> float | str | None:
    """``None``, a float in [0, 1] or ``"oas"``; anything else is an :class:`InputError`."""
    if shrinkage is None or shrinkage == "oas":
        return shrinkage
    if isinstance(shrinkage, str | bool):
        raise InputError(f"shrinkage must be None, a float in [0, 1] or 'oas', got {shrinkage!r}")
    try:
        s = float(shrinkage)
    except (TypeError, ValueError):
        raise InputError(
            f"shrinkage must be None, a float in [0, 1] or 'oas', got {shrinkage!r}"
        ) from None
    if not 0.0 <= s <= 1.0:
        raise InputError(f"shrinkage must lie in [0, 1], got {s}")
    return s


def parse_shrinkage(text: str | None) -> float | str | None:
    """Shrinkage given as text (``None``, ``"oas"`` or a number in [0, 1]), checked."""
    if text is None or text == "oas":
        return text
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"shrinkage must be a number in [0, 1] or 'oas', got {text!r}") from None
    return check_shrinkage(value)


def shrinkage_argument(text: str) -> float | str | None:
    """:func:`parse_shrinkage` as an argparse ``type`` (the parser names the flag)."""
    import argparse

    try:
        return parse_shrinkage(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class SolverOptions:
    """Options of the nearest-ideal solvers.

    Parameters
    ----------
    n_random_starts : int
        Random starts of the global searches beyond the deterministic ones
        (pooled closed form, convex SPD restriction, eigenvector alignments).
    max_iter : int
        Iteration cap of one local solve (trust-region Newton iterations per
        start; block-coordinate sweeps for all subgroups).
    gtol : float
        Stationarity tolerance: the solve has converged when the gradient of the
        map block, in per-group standardised coordinates, is at most ``gtol``.
    """

    n_random_starts: int = 2
    max_iter: int = 1000
    gtol: float = 1e-7

    def __post_init__(self) -> None:
        for name in ("n_random_starts", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"solver option {name} must be a whole number >= 0, got {value!r}")
        if self.max_iter < 1:
            raise InputError("solver option max_iter must be at least 1")
        if not (isinstance(self.gtol, int | float) and 0.0 < float(self.gtol) < 1.0):
            raise InputError(f"solver option gtol must lie in (0, 1), got {self.gtol!r}")

    @classmethod
    def coerce(cls, options: SolverOptions | dict[str, Any] | None) -> SolverOptions:
        """``options`` as a :class:`SolverOptions` (a dict of its fields, or None for defaults)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, dict):
            raise InputError("solver options must be a SolverOptions or a dict of its fields")
        unknown = sorted(set(options) - set(asdict(cls())))
        if unknown:
            raise InputError(f"unknown solver option(s) {unknown}; known: {sorted(asdict(cls()))}")
        return cls(**options)
