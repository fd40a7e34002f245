"""The ``fairsteer`` command: a thin shell over the library.

Every bad input ends with one line ``fairsteer: error: ...`` on stderr and exit
code 2. Outputs are written atomically and never over an input file.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fairsteer import __version__
from fairsteer.errors import InputError
from fairsteer.io import check_output
from fairsteer.options import parse_shrinkage, shrinkage_argument
from fairsteer.table_args import (
    RESERVOIR_ROWS,
    chunk_features,
    family_sample_rows,
)
from fairsteer.table_args import families as _families

__all__ = ["build_parser", "main", "plugins"]

# Built-in commands kept in their own module (``add_parser(subparsers)``).
EXTENSIONS = ("fairsteer.steer_cli",)
# Plugin commands: every entry point of this group names a function that takes
# the subparsers and adds its commands (the experiments package registers
# ``demo`` and ``experiment`` here). Plugins importable but not installed (a
# source checkout run with PYTHONPATH) are named in the environment variable
# instead, as comma-separated ``module:function`` (function default add_parser).
PLUGIN_GROUP = "fairsteer.commands"
PLUGIN_ENV = "FAIRSTEER_PLUGINS"
# Commands that a plugin provides, named in the usage error when it is absent.
PLUGIN_HINTS = {
    "demo": "fairsteer-experiments",
    "experiment": "fairsteer-experiments",
}


# Library messages name API arguments; on the command line the same fix is a flag.
_API_TO_FLAG = (
    (re.compile(r"shrinkage='oas'"), "--shrinkage oas"),
    (re.compile(r"shrinkage=([0-9.]+)"), r"--shrinkage \1"),
    (re.compile(r"covariance='shared'"), "--covariance shared"),
    (re.compile(r"covariance='per-class'"), "--covariance per-class"),
)


def _data_help() -> str:
    if importlib.util.find_spec("pyarrow") is not None:
        return "CSV or Parquet file, read in chunks with pyarrow (memory bounded by a chunk)"
    return (
        "CSV file, read in chunks through the Python standard library (pyarrow is not "
        "installed: several times slower, and Parquet needs it: pip install 'fairsteer[io]')"
    )


_DATA_HELP = _data_help()


def _fail(message: str) -> int:
    for pattern, flag in _API_TO_FLAG:
        message = pattern.sub(flag, message)
    message = " ".join(message.split())  # always one line
    print(f"fairsteer: error: {message}", file=sys.stderr)
    return 2


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line ``fairsteer: error: ...``."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem and where to find the usage; exit 2."""
        unknown = re.search(r"invalid choice: '([^']+)'", message)
        if unknown and unknown.group(1) in PLUGIN_HINTS and self.prog == "fairsteer":
            name, dist = unknown.group(1), PLUGIN_HINTS[unknown.group(1)]
            self.exit(
                2,
                f"fairsteer: error: '{name}' is a command of the {dist} package, which is not "
                f"installed: pip install -e ./experiments (in the fairsteer repository)\n",
            )
        hint = f"see '{self.prog} --help'"
        self.exit(2, f"fairsteer: error: {' '.join(message.split())}; {hint}\n")


def seed_type(text: str) -> int:
    """A seed for ``numpy.random.default_rng``: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, got {value}")
    return value


@dataclass
class FitPass:
    """What one streamed pass over the data of ``fit`` or ``steer`` found.

    Attributes
    ----------
    source : fairsteer.io.TableSource
        The table, to read again (``steer`` writes in a second pass).
    model : GaussianModel
        Fitted on every row.
    features : list of str
    groups, classes : fairsteer.io.LabelCoder
        Label codes, consistent across chunks and passes.
    n_rows : int
    """

    source: Any
    model: Any
    features: list[str]
    groups: Any
    classes: Any
    n_rows: int


def _fit_transforms(
    source: Any,
    features: list[str],
    family: Any,
    groups: Any,
    classes: Any,
    source_args: argparse.Namespace,
) -> Any:
    """Fit the families' parameters in a first pass, on a bounded uniform sample of rows.

    Row r of the table gets the key h(seed, r) (a bijective hash) and the
    ``--family-sample`` rows (default :data:`RESERVOIR_ROWS`) with the smallest
    keys are kept (a bottom-k sample, :class:`fairsteer.sampling.RowSample`:
    uniform without replacement, memory bounded by it, the same rows whatever
    the chunking, and the rows a sharded fit of the same table keeps). They are
    fitted in file order, so a table with fewer rows is fitted exactly as the
    library's one-shot fit. The statistics are then accumulated on the
    Gaussian scale in the second pass.
    """
    from fairsteer.sampling import RowSample

    seed = getattr(source_args, "seed", 0)
    size = family_sample_rows(source_args)
    sample = RowSample.empty(len(features), size, seed)
    for chunk in source.chunks():
        g, c = groups.encode(chunk), classes.encode(chunk)
        part = RowSample.of(
            chunk_features(chunk, features, source_args),
            g,
            c,
            range(len(groups.labels)),  # the coders' codes stand for their labels
            range(len(classes.labels)),
            first_row=chunk.start,
            size=size,
            seed=seed,
        )
        sample = sample.merge(part)
    if sample.n_rows == 0:
        raise InputError(source.no_rows_message())
    # The model's label order is the sorted one: codes listed in that order.
    order_g = sorted(range(len(groups.labels)), key=lambda k: groups.labels[k])
    order_c = sorted(range(len(classes.labels)), key=lambda k: classes.labels[k])
    return sample.fit(family, order_g, order_c, seed=seed)


def fit_from_args(args: argparse.Namespace, reserved: Sequence[str] = ()) -> FitPass:
    """Fit the model named by the data arguments of ``fit`` and ``steer``, chunk by chunk.

    The table is streamed (:func:`fairsteer.io.open_table`): each chunk's
    features are parsed and checked, mapped to the model scale, and its cell
    statistics merged into the running total (Chan's exact update), so memory
    is bounded by a chunk. With the default features (every numeric column but
    group and label) the numeric columns are decided on the first chunk; a bad
    cell in any later chunk is an error naming its row.

    Parameters
    ----------
    args : argparse.Namespace
        ``data``, ``group``, ``label``, ``features``, ``family``,
        ``covariance``, ``shrinkage``.
    reserved : sequence of str
        Column names the command will add (``steer``'s weight column).

    Raises
    ------
    InputError
        For any bad input, before anything is written.
    """
    import numpy as np

    from fairsteer._threads import find_blas_soon, ordered_map
    from fairsteer.fit import model_from_stats
    from fairsteer.io import LabelCoder, open_table
    from fairsteer.stats import FeatureRange, cell_statistics_from_codes

    shrinkage = parse_shrinkage(args.shrinkage)
    family_sample_rows(args)  # checked before any pass
    find_blas_soon()  # for the workers' BLAS limit, while the first chunk is read
    source = open_table(args.data)
    source.require([args.group, args.label])
    for name in args.features or ():
        if name in (args.group, args.label):
            raise InputError(f"column {name!r} cannot be both a feature and the group/label")
    if args.features:
        source.require(args.features)
    for name in reserved:
        if name in source.names:
            raise InputError(f"column {name!r} already exists; choose another --weight-column")
    hint = "" if args.features else " (list the features to use with --features)"
    groups = LabelCoder(source, args.group, "group")
    classes = LabelCoder(source, args.label, "class")
    features: list[str] = list(args.features or ())
    family: Any = None  # decided on the first chunk, before any task below reads it
    labels = [args.group, args.label]
    chunks = source.chunks(floats=features, labels=labels, order="F")
    pooled = args.covariance == "shared"

    def features_of(chunk: Any) -> Any:
        try:
            return chunk_features(chunk, features, args)
        except InputError as exc:
            if "--features" in str(exc):
                raise
            raise InputError(f"{exc}{hint}") from None

    def task(chunk: Any, X: Any = None) -> Callable[[], Any]:
        """The moments of a chunk as a call for a worker; its labels are coded here, in order."""
        try:
            c, g = classes.encode(chunk), groups.encode(chunk)
        except InputError:
            features_of(chunk)  # a bad feature cell is named first, as in a one-chunk fit
            raise
        # Per-group transforms take codes in the model's (sorted) group order; the
        # first pass saw every group, so that order is final.
        codes = groups.sorted_codes(g) if family.group_dependent else None
        glabels, clabels = tuple(groups.labels), tuple(classes.labels)

        def moments() -> tuple[Any, Any, int]:
            X_chunk = features_of(chunk) if X is None else X
            Z = family.forward(X_chunk, codes, features, rows=chunk.where)
            part = FeatureRange(len(features))
            part.update(Z)
            cells = cell_statistics_from_codes(Z, g, c, glabels, clabels, pooled=pooled)
            return part, cells, chunk.n_rows

        return moments

    try:
        first = next(chunks, None)
        if first is None:
            raise InputError(source.no_rows_message())
        if not features:
            try:
                features = first.numeric_names(exclude=(args.group, args.label))
            except InputError as exc:
                raise InputError(f"{exc}{hint}") from None
            if not features:
                raise InputError("no numeric feature columns found; name them with --features")
            chunks.parse(features)  # the reader parses them in its own thread from now on
        X = features_of(first)
        family = _families(args.family, len(features), features)
        if not family.fitted:
            family = _fit_transforms(source, features, family, groups, classes, args)
        span, stats, n_rows = task(first, X)()
        # The other chunks' moments are computed by workers, in parallel with each
        # other and with the reader, and merged here in file order (Chan's exact
        # update), so the result does not depend on which worker finished first.
        for span_part, part, rows in ordered_map(task, chunks):
            span.merge(span_part)
            with np.errstate(all="ignore"):  # out-of-range values: FeatureRange names them
                stats = stats.merge(part)
            n_rows += rows
    finally:
        chunks.close()
    span.check(features)
    stats = stats.aligned(groups.sorted_labels(), classes.sorted_labels())
    model = model_from_stats(
        stats, covariance=args.covariance, shrinkage=shrinkage, family=family, features=features
    )
    return FitPass(source, model, features, groups, classes, n_rows)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--group, --label, --features, --family, --covariance, --shrinkage."""
    p.add_argument("data", help=f"{_DATA_HELP}; or a directory or glob of such shards (one kind)")
    p.add_argument("--group", required=True, help="column with the sensitive attribute")
    p.add_argument("--label", required=True, help="column with the class label")
    p.add_argument(
        "--features",
        nargs="+",
        metavar="COL",
        help="feature columns (default: every numeric column but group and label)",
    )
    p.add_argument(
        "--family",
        nargs="+",
        default=["normal"],
        metavar="FAMILY",
        help=(
            "normal, lognormal (log), log1p, yeo-johnson, normal-scores or auto (a parametric "
            "one may end in -by-group); one for all features, one per feature, or "
            "COLUMN=FAMILY pairs (other columns normal). Transform parameters are fitted "
            "in a first pass on a seeded uniform sample of at most --family-sample rows"
        ),
    )
    p.add_argument(
        "--family-sample",
        type=int,
        default=None,
        metavar="ROWS",
        help=(
            "largest number of rows (a seeded uniform sample) that families with "
            f"parameters are fitted on (default {RESERVOIR_ROWS}; the whole table if it "
            "has no more rows)"
        ),
    )
    p.add_argument(
        "--dequantize",
        nargs="+",
        metavar="COL",
        help=(
            "integer-valued feature columns to spread over [k, k+1) by adding seeded "
            "uniform noise before fitting (docs/families.md); steered values are continuous"
        ),
    )
    p.add_argument("--covariance", choices=["per-class", "shared"], default="per-class")
    p.add_argument(
        "--shrinkage",
        type=shrinkage_argument,
        default=None,
        help="covariance shrinkage: a number in [0, 1] or 'oas'",
    )
    from fairsteer.context_cli import add_context_arguments

    # --context COL [COL ...] (docs/theory.md section 9), --merge-rare, --min-count
    add_context_arguments(p)
    p.add_argument(
        "--engine",
        choices=["local", "dask"],
        default="local",
        help="local: this process; dask: a Dask cluster, one task per shard (fairsteer.shards)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="--engine dask: e.g. tcp://host:8786")
    p.add_argument(
        "--workers", type=int, metavar="N", help="--engine dask: a local cluster of N processes"
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    from fairsteer.shards import fit_command, no_context_on_shards, use_shards

    if args.context:
        no_context_on_shards(args)
        from fairsteer.context_cli import cmd_fit

        return cmd_fit(args)

    if use_shards(args):  # a directory or glob of shards, or --engine dask
        return fit_command(args)
    check_output(args.output, args.data)
    fitted = fit_from_args(args)
    model, features = fitted.model, fitted.features
    model.save(args.output)
    print(
        f"fitted {model.n_groups} groups x {model.n_classes} classes on {len(features)} "
        f"features ({model.family}, {args.covariance} covariance) -> {args.output}"
    )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from fairsteer.audit import audit
    from fairsteer.model import GaussianModel
    from fairsteer.significance import audit_data_command, is_data_audit

    if is_data_audit(args):
        return audit_data_command(args)
    model = GaussianModel.load(args.model)
    report = audit(model, seed=args.seed)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.summary())
    return 0


def _cmd_solve(args: argparse.Namespace) -> int:
    from fairsteer.model import GaussianModel
    from fairsteer.solve import solve

    check_output(args.output, args.model)
    from fairsteer.context_cli import cmd_solve, is_context_model

    if is_context_model(args.model):  # fitted with --context
        return cmd_solve(args)
    model = GaussianModel.load(args.model)
    sol = solve(model, args.method, reference=args.reference, seed=args.seed)
    sol.save(args.output)
    b = sol.bounds()
    ref = f", reference group {sol.reference_group!r}" if sol.reference_group is not None else ""
    print(
        f"{sol.method}{ref}: KL(ideal || original) = {sol.kl:.6g} nats -> {args.output}\n"
        f"transfer bounds (docs/theory.md section 6): error {b['error']:.4f}, "
        f"DP gap {b['dp_gap']:.4f}, "
        f"EO gap {b['eo_gap']:.4f}, equalized odds {b['equalized_odds_gap']:.4f}"
    )
    return 0


def plugins() -> list[Callable[[Any], None]]:
    """The ``add_parser`` functions of the plugin commands, each once.

    From the entry points of :data:`PLUGIN_GROUP` (sorted by name), then from
    the ``module:function`` list in the environment variable
    :data:`PLUGIN_ENV`. A plugin whose module is not importable is skipped
    (its commands are then unknown, and :data:`PLUGIN_HINTS` names the
    package); any other import error is raised.
    """
    specs = [*_entry_point_specs()]
    specs += [v.strip() for v in os.environ.get(PLUGIN_ENV, "").split(",") if v.strip()]
    found: list[Callable[[Any], None]] = []
    for spec in specs:
        module_name, _, attr = (part.strip() for part in spec.partition(":"))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue  # that plugin is not part of this installation
            raise
        add_parser = getattr(module, attr or "add_parser")
        if add_parser not in found:
            found.append(add_parser)
    return found


@functools.cache
def _entry_point_specs() -> tuple[str, ...]:
    """The installed plugins' ``module:function`` (sorted by name), looked up once per process.

    The lookup reads the metadata of every installed distribution (5-13 ms
    here), and the installed distributions do not change under a running
    process.
    """
    from importlib.metadata import entry_points

    return tuple(ep.value for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    from fairsteer.significance import add_audit_arguments

    parser = Parser(
        prog="fairsteer",
        description="Exact group fairness by optimal steering: fit, audit, solve, steer.",
    )
    parser.add_argument("--version", action="version", version=f"fairsteer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "fit",
        help="fit a Gaussian model per (group, class) cell",
        epilog="example: fairsteer fit data.csv --group sex --label y -o model.json",
    )
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="model JSON to write")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser(
        "audit",
        help="how far a model (or data, with intervals and a test) is from ideal",
        epilog="examples: fairsteer audit model.json --json; "
        "fairsteer audit data.csv --group sex --label y --bootstrap 200 --seed 0",
    )
    p.add_argument("model", help="model JSON (from fit), or a CSV/Parquet data file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of every random draw")
    add_audit_arguments(p)  # the data mode's options (fairsteer.significance)
    p.set_defaults(handler=_cmd_audit)

    p = sub.add_parser(
        "solve",
        help="nearest ideal model in KL divergence",
        epilog="example: fairsteer solve model.json --method all-subgroups -o ideal.json",
    )
    p.add_argument("model", help="model JSON (from fit)")
    p.add_argument("--method", choices=["affirmative", "all-subgroups"], default="affirmative")
    p.add_argument("--reference", help="affirmative: the group that stays (default: best)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the random extra starts")
    p.add_argument("-o", "--output", required=True, help="solution JSON to write")
    p.set_defaults(handler=_cmd_solve)

    for name in EXTENSIONS:
        importlib.import_module(name).add_parser(sub)
    for add_parser in plugins():
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    0 on success, 2 for bad input or usage (one line on stderr), 130 on
    Ctrl-C, and 141 (128 + SIGPIPE, what a shell reports for a program killed
    by a closed pipe) when the reader of stdout goes away, e.g. ``| head``.
    """
    from fairsteer.io import prefer_memory_pool

    prefer_memory_pool("jemalloc")  # applied when a table is read (pyarrow imported)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors
            return exc.code if isinstance(exc.code, int) else 2
        try:
            return int(args.handler(args))
        finally:
            sys.stdout.flush()  # a closed pipe must surface here, not at exit
    except BrokenPipeError:
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except InputError as exc:
        return _fail(str(exc))
    except (OSError, MemoryError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
