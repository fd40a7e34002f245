"""The one exception type fairsteer raises for bad input.

Every message names the problem and the fix. The CLI turns an ``InputError``
into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = ["InputError", "NotFittedError"]


class InputError(ValueError):
    """Bad input: wrong shapes, non-finite numbers, invalid parameters, unknown names."""


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit`` (same bases as scikit-learn's NotFittedError)."""
