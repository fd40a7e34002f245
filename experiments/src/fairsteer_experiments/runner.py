"""What every experiment command does around its run: check its needs, print its result.

Every command first checks what it needs (:func:`check_needs`: one line and
exit code 2 naming the pip command when something is missing, before any
work), then runs, writes its HTML report and prints its table or JSON
(:func:`emit`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from fairsteer.extras import require

__all__ = ["EXPERIMENTS", "TORCH", "Need", "check_needs", "emit"]

#: (extra, import names, pip command or None for ``pip install 'fairsteer[extra]'``)
Need = tuple[str, tuple[str, ...], "str | None"]
EXPERIMENTS: Need = ("experiments", ("sklearn", "matplotlib"), None)
TORCH: Need = ("torch", ("torch", "transformers", "tqdm"), None)


def check_needs(what: str, needs: Sequence[Need]) -> None:
    """Raise one ``InputError`` line naming the first missing extra's pip command."""
    for extra, modules, pip in needs:
        require(what, extra, modules, pip)


def emit(res: dict[str, Any], as_json: bool, table: str, report: str, start: float) -> int:
    """Print an experiment's result: JSON without the per-seed details, or the table."""
    if as_json:
        json.dump({k: v for k, v in res.items() if k != "per_seed"}, sys.stdout, indent=1)
        print()
    else:
        print(table)
        print(f"report: {report} ({time.perf_counter() - start:.0f} s)")
    return 0
