"""``--context COL [COL ...]`` for ``fairsteer fit``, ``solve`` and ``steer``.

The command-line side of :mod:`fairsteer.context`: the table is read whole
(:func:`fairsteer.io.read_table`), the context columns' values (their
combinations, for several columns) are the levels, and the commands call the
library functions. ``solve`` recognises a context model JSON by itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fairsteer.errors import InputError
from fairsteer.options import parse_shrinkage

__all__ = ["add_context_arguments", "cmd_fit", "cmd_solve", "cmd_steer", "is_context_model"]


def add_context_arguments(p: argparse.ArgumentParser) -> None:
    """--context, --merge-rare, --min-count."""
    p.add_argument(
        "--context",
        nargs="+",
        metavar="COL",
        help="categorical context column(s), steered with the exact guarantee "
        "(docs/theory.md section 9); several columns: their combinations are the levels",
    )
    p.add_argument(
        "--merge-rare",
        action="store_true",
        help="with --context: merge the rarest levels until every (group, level, class) "
        "cell has --min-count rows, instead of failing",
    )
    p.add_argument(
        "--min-count",
        type=int,
        default=None,
        help="with --context: fewest rows per (group, level, class) cell (default: "
        "features + 1 for per-class covariances, 1 for shared)",
    )


def _fit(args: argparse.Namespace, reserved: tuple[str, ...] = ()) -> tuple[Any, Any, dict]:
    """Read the table and fit the context model; returns (table, model, row data)."""
    from fairsteer.context import fit_context_model
    from fairsteer.io import read_table

    table = read_table(args.data)
    context = list(args.context)
    special = [args.group, args.label, *context]
    table.require(special)
    if len(set(special)) != len(special):
        raise InputError("--context columns must differ from each other and from group/label")
    features = list(args.features or [])
    for name in features:
        if name in special:
            raise InputError(f"column {name!r} cannot be both a feature and a group/label/context")
    if not features:
        features = table.numeric_names(exclude=special)
        if not features:
            raise InputError("no numeric feature columns found; name them with --features")
    for name in reserved:
        if name in table.names:
            raise InputError(f"column {name!r} already exists; choose another --weight-column")
    X = table.numeric(features)
    g = table.labels(args.group, "group")
    y = table.labels(args.label, "class")
    ctx = np.column_stack([table.labels(col, "context") for col in context])
    family: Any = args.family[0] if len(args.family) == 1 else tuple(args.family)
    model = fit_context_model(
        X,
        y,
        g,
        ctx,
        context_names=context,
        family=family,
        covariance=args.covariance,
        shrinkage=parse_shrinkage(args.shrinkage),
        features=features,
        min_count=args.min_count,
        merge_rare=args.merge_rare,
    )
    return table, model, {"X": X, "y": y, "g": g, "context": ctx, "features": features}


def cmd_fit(args: argparse.Namespace) -> int:
    """``fairsteer fit DATA --context COL ...``: write the context model JSON."""
    from fairsteer.io import check_output

    check_output(args.output, args.data)
    _, model, rows = _fit(args)
    model.save(args.output)
    print(
        f"fitted {len(model.groups)} groups x {model.n_levels} context levels x "
        f"{len(model.classes)} classes on {len(rows['features'])} features "
        f"({args.covariance} covariance; levels {list(model.levels)}) -> {args.output}"
    )
    return 0


def is_context_model(path: str) -> bool:
    """True when the JSON file at ``path`` is a context model (kind 'context-model').

    ``ContextModel.save`` writes the kind first: files without it in their
    first 4096 characters are not parsed here.
    """
    from fairsteer.files import read_json

    try:
        with open(path, encoding="utf-8-sig") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False  # the regular loader reports the error
    if "context-model" not in head:
        return False  # no second parse of a (possibly large) plain model
    try:
        data = read_json(path)
    except InputError:
        return False
    return isinstance(data, dict) and data.get("kind") == "context-model"


def _summary(sol: Any, output: str) -> str:
    ref = f", reference group {sol.reference_group!r}" if sol.reference_group is not None else ""
    conv = "" if sol.diagnostics.get("converged", True) else " (NOT converged: see diagnostics)"
    return (
        f"{sol.method}{ref} with context {list(sol.ideal.context)}: KL(ideal || original) = "
        f"{sol.kl:.6g} nats{conv} -> {output}"
    )


def cmd_solve(args: argparse.Namespace) -> int:
    """``fairsteer solve CONTEXT_MODEL.json``: write the context solution JSON."""
    from fairsteer.context import ContextModel, solve_context

    model = ContextModel.load(args.model)
    sol = solve_context(model, args.method, reference=args.reference, seed=args.seed)
    sol.save(args.output)
    print(_summary(sol, args.output))
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    """``fairsteer steer DATA --context COL ...``: steer categories and features, add weights.

    Feature columns and context columns are replaced in place (a merged level
    writes its values joined by `` | ``), every other column is carried over,
    row order and count are kept, and the weight column pi~_y / pi[a, y] is
    added.
    """
    from fairsteer.context import solve_context, steer_context
    from fairsteer.io import Table, check_output, write_table

    check_output(args.output, args.data)
    table, model, rows = _fit(args, reserved=(args.weight_column,))
    values = model.level_values()
    sol = solve_context(model, args.method, reference=args.reference, seed=args.seed)
    steered = steer_context(
        model, sol, rows["X"], rows["y"], rows["g"], rows["context"], seed=args.seed
    )
    columns = dict(table.columns)
    for j, name in enumerate(model.context):
        text = [values[c][j] for c in steered.levels]
        if table.kind == "csv":
            columns[name] = text
        else:
            from fairsteer.io import _pyarrow

            columns[name] = _pyarrow().array(text)
    out = Table(table.names, columns, table.n_rows, table.kind, dict(table.replaced), table.lines)
    updates = {name: steered.X[:, j] for j, name in enumerate(rows["features"])}
    updates[args.weight_column] = steered.weights
    out = out.with_columns(updates)
    if args.artifacts:
        base = Path(args.output).with_suffix("")
        artifacts = [f"{base}.model.json", f"{base}.solution.json"]
        for path in artifacts:
            check_output(path, args.data)
        model.save(artifacts[0])
        sol.save(artifacts[1])
    write_table(out, args.output, input_path=args.data)
    print(
        f"steered {table.n_rows} rows ({int(steered.moved.sum())} moved to another context "
        f"level), {len(rows['features'])} features; " + _summary(sol, args.output)
    )
    if steered.uncorrected:
        print(
            "note: moment correction skipped in cells with <= d rows: "
            + json.dumps([[str(v) for v in cell] for cell in steered.uncorrected])
        )
    return 0
