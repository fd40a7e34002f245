"""The exceptions fairsteer raises on purpose.

- :class:`InputError` for every bad input (data, parameters, files): the
  message names the problem and the fix. The CLI turns it into one line on
  stderr and exit code 2.
- :class:`NotFittedError` when an estimator is used before ``fit``.

Both derive from ``ValueError``.
"""

from __future__ import annotations

__all__ = ["InputError", "NotFittedError"]


class InputError(ValueError):
    """Bad input: wrong shapes, non-finite numbers, invalid parameters, unknown names."""


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit`` (same bases as scikit-learn's NotFittedError)."""
