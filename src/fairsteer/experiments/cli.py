"""The ``fairsteer experiment`` command group (tabular data sets register here)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register ``experiment`` with one subcommand per experiment."""
    from fairsteer.experiments import tabular

    p = sub.add_parser("experiment", help="experiments on real data (adult, compas, bug)")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    tabular.register(experiments)
    try:
        from fairsteer.experiments import bug
    except ImportError:  # the torch extra is not installed
        return
    bug.register(experiments)
