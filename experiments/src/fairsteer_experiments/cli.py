"""The plugin function of the experiments: ``fairsteer demo`` and ``fairsteer experiment ...``.

:func:`add_parser` is what the core CLI calls (entry point ``experiments`` of
the group ``fairsteer.commands``, or ``FAIRSTEER_PLUGINS=fairsteer_experiments.cli``
in a source checkout). The command modules import nothing from here.
"""

from __future__ import annotations

from typing import Any

from fairsteer_experiments import bug, demo, generation, tabular

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register ``demo`` and ``experiment`` (one subcommand per experiment) on the CLI."""
    demo.register(sub)
    p = sub.add_parser("experiment", help="experiments on real data and models")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    tabular.register(experiments)
    bug.register(experiments)
    generation.register(experiments)
