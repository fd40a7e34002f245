"""``fairsteer steer``: steer a table's training data to the nearest ideal law."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fairsteer.errors import InputError

__all__ = ["add_parser"]


def _cmd_steer(args: argparse.Namespace) -> int:
    from fairsteer.cli import check_output, fit_from_args
    from fairsteer.io import write_table
    from fairsteer.maps import SteeringMaps
    from fairsteer.model import write_atomic
    from fairsteer.solve import solve

    check_output(args.output, args.data)
    table, model, features, y, groups = fit_from_args(args)
    if args.weight_column in table.columns:
        raise InputError(
            f"column {args.weight_column!r} already exists; choose another --weight-column"
        )
    sol = solve(model, args.method, reference=args.reference, seed=args.seed)
    maps = SteeringMaps.from_solution(model, sol)
    X = table.numeric(features)
    steered = maps.steer(X, y, groups)
    updates: dict[str, Any] = {name: steered[:, j] for j, name in enumerate(features)}
    updates[args.weight_column] = maps.weights(y, groups)
    base = Path(args.output).with_suffix("")
    artifacts = [f"{base}.model.json", f"{base}.solution.json", f"{base}.audit.json"]
    if args.artifacts:
        from fairsteer.audit import audit

        for path in artifacts:
            check_output(path, args.data)
        # Every file is written before anything is reported, so a failed
        # artifact write ends in the error alone, never after a success line.
        model.save(artifacts[0])
        sol.save(artifacts[1])
        # The affirmative solution with the solver's reference is the audit's
        # nearest-ideal model: reused, not solved again. The ideal model's own
        # audit solves an exactly equivalent model (the eigenvector start hits
        # KL = 0 at once).
        report = {
            "before": audit(model, nearest=sol).to_dict(),
            "after": audit(sol.ideal).to_dict(),
        }
        write_atomic(artifacts[2], json.dumps(report, indent=1))
    write_table(table.with_columns(updates), args.output, input_path=args.data)
    print(
        f"steered {table.n_rows} rows, {len(features)} features ({sol.method}"
        + (f", reference {sol.reference_group!r}" if sol.reference_group is not None else "")
        + f"; KL = {sol.kl:.6g} nats) -> {args.output}"
    )
    if args.artifacts:
        print(f"wrote {', '.join(artifacts)}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``steer`` on the CLI's subparsers."""
    from fairsteer.cli import add_data_arguments, seed_type

    p = sub.add_parser(
        "steer",
        help="steer training data to the nearest ideal distribution",
        description=(
            "Fit the model, solve for the nearest ideal model and move every row with its "
            "(group, class) cell's optimal-transport map. Feature columns are replaced in "
            "place, every other column is carried over unchanged, row order and count are "
            "kept, and a weight column equalising the class priors across groups is added."
        ),
        epilog="example: fairsteer steer train.csv --group sex --label y -o steered.csv",
    )
    add_data_arguments(p)
    p.add_argument("--method", choices=["affirmative", "all-subgroups"], default="affirmative")
    p.add_argument("--reference", help="affirmative: the group that stays (default: best)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the random extra starts")
    p.add_argument("--weight-column", default="weight", help="name of the added weight column")
    p.add_argument(
        "--artifacts",
        action="store_true",
        help="also write OUT.model.json, OUT.solution.json and OUT.audit.json",
    )
    p.add_argument("-o", "--output", required=True, help="CSV or Parquet file to write")
    p.set_defaults(handler=_cmd_steer)
