"""The ``fairsteer experiment`` command group (tabular data sets register here)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_parser", "emit"]


def emit(res: dict[str, Any], as_json: bool, table: str, report: str, start: float) -> int:
    """Print an experiment's result: JSON without the per-seed details, or the table."""
    import json
    import sys
    import time

    if as_json:
        json.dump({k: v for k, v in res.items() if k != "per_seed"}, sys.stdout, indent=1)
        print()
    else:
        print(table)
        print(f"report: {report} ({time.perf_counter() - start:.0f} s)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``experiment`` with one subcommand per experiment."""
    from fairsteer.experiments import tabular

    p = sub.add_parser("experiment", help="experiments on real data and models")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    tabular.register(experiments)
    try:
        from fairsteer.experiments import bug, generation
    except ImportError:  # the torch extra is not installed
        return
    bug.register(experiments)
    generation.register(experiments)
