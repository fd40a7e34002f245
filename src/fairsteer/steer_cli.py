"""``fairsteer steer``: steer a table's training data to the nearest ideal law."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fairsteer.errors import InputError

__all__ = ["add_parser"]


def _cmd_steer(args: argparse.Namespace) -> int:
    import numpy as np

    from fairsteer.cli import fit_from_args
    from fairsteer.io import CellValues, TableWriter, atomic_output, check_output
    from fairsteer.maps import SteeringMaps
    from fairsteer.shards import steer_command, use_shards
    from fairsteer.solve import solve
    from fairsteer.table_args import chunk_features

    if args.context:
        from fairsteer.shards import no_context_on_shards

        no_context_on_shards(args)
        from fairsteer.context_cli import cmd_steer

        return cmd_steer(args)
    if use_shards(args):  # a directory or glob of shards (-o a directory), or --engine dask
        return steer_command(args)
    check_output(args.output, args.data)
    if args.round_dequantized and not args.dequantize:
        raise InputError("--round-dequantized floors the --dequantize columns; name them")
    out_kind = _output_kind(args.output)
    # Pass 1: fit chunk by chunk (every bad input is found here, before any write).
    fitted = fit_from_args(args, reserved=[args.weight_column])
    model, features, source = fitted.model, fitted.features, fitted.source
    sol = solve(model, args.method, reference=args.reference, seed=args.seed)
    maps = SteeringMaps.from_solution(model, sol)
    group_names = np.array(model.groups)
    class_names = np.array(model.classes)
    # The weight depends on the cell only: one value per (group, class).
    m, K = model.n_groups, model.n_classes
    cell_weights = maps.weights(np.tile(class_names, m), np.repeat(group_names, K))
    base = Path(args.output).with_suffix("")
    artifacts = [f"{base}.model.json", f"{base}.solution.json", f"{base}.audit.json"]
    if args.artifacts:
        _write_artifacts(artifacts, model, sol, args.data)
    # Pass 2: steer chunk by chunk into the temporary file renamed at the end.
    with atomic_output(args.output) as fh:
        writer = TableWriter(fh, out_kind, [*source.names, args.weight_column], source)
        # The features are replaced (parsed only); group and label read as dictionaries.
        for chunk in source.chunks(floats=features, labels=[args.group, args.label]):
            X = chunk_features(chunk, features, args)
            c = fitted.classes.sorted_codes(fitted.classes.encode(chunk, grow=False))
            g = fitted.groups.sorted_codes(fitted.groups.encode(chunk, grow=False))
            # maps.steer(X, class_names[c], group_names[g]) without turning the
            # codes into labels and back (a search over every row's label).
            Z = maps.original.to_gaussian_scale(X, g)
            steered = maps.original.from_gaussian_scale(maps.kernels.steer(Z, g, c), g)
            if args.round_dequantized:
                for name in args.dequantize:  # floor inverts x + U, U in [0, 1)
                    j = features.index(name)
                    steered[:, j] = np.floor(steered[:, j])
            updates = {name: steered[:, j] for j, name in enumerate(features)}
            updates[args.weight_column] = CellValues(cell_weights, g * K + c)
            writer.write(chunk, updates)
        writer.close()
    print(
        f"steered {fitted.n_rows} rows, {len(features)} features ({sol.method}"
        + (f", reference {sol.reference_group!r}" if sol.reference_group is not None else "")
        + f"; KL = {sol.kl:.6g} nats) -> {args.output}"
    )
    if args.artifacts:
        print(f"wrote {', '.join(artifacts)}")
    return 0


def _write_artifacts(paths: list[str], model: Any, sol: Any, data: str) -> None:
    """OUT.model.json, OUT.solution.json and OUT.audit.json (before and after)."""
    from fairsteer.audit import audit
    from fairsteer.files import write_atomic
    from fairsteer.io import check_output

    for path in paths:
        check_output(path, data)
    # Every file is written before anything is reported, so a failed
    # artifact write ends in the error alone, never after a success line.
    model.save(paths[0])
    sol.save(paths[1])
    # The affirmative solution with the solver's reference is the audit's
    # nearest-ideal model: reused, not solved again. The ideal model's own
    # audit solves an exactly equivalent model (the eigenvector start hits
    # KL = 0 at once).
    report = {
        "before": audit(model, nearest=sol).to_dict(),
        "after": audit(sol.ideal).to_dict(),
    }
    write_atomic(paths[2], json.dumps(report, indent=1))


def _output_kind(path: str) -> str:
    from fairsteer.io import FORMATS

    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"unsupported file type {suffix!r} for {path}; use .csv or .parquet")
    if FORMATS[suffix] == "parquet":
        from fairsteer.extras import require

        require("Parquet output", "io", ["pyarrow"])  # said before the work
    return FORMATS[suffix]


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
        "--round-dequantized",
        action="store_true",
        help=(
            "floor the steered --dequantize columns back to integers (the exact "
            "ideality then holds only up to that rounding)"
        ),
    )
    p.add_argument(
        "--artifacts",
        action="store_true",
        help="also write OUT.model.json, OUT.solution.json and OUT.audit.json",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="CSV or Parquet file to write (for shards: a new directory of steered shards)",
    )
    p.set_defaults(handler=_cmd_steer)
