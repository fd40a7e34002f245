"""The data arguments of the table commands, as the streamed passes use them.

``--family``, ``--dequantize`` and ``--family-sample`` read the same way by a
command on one table (:mod:`fairsteer.cli`, :mod:`fairsteer.steer_cli`) and
on a folder of shards (:mod:`fairsteer.shards`), which both import them
from here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fairsteer.errors import InputError
from fairsteer.sampling import DEFAULT_SAMPLE_ROWS

__all__ = ["RESERVOIR_ROWS", "chunk_features", "families", "family_sample_rows"]

#: Largest number of rows the transform families are fitted on in a streamed fit (default).
RESERVOIR_ROWS = DEFAULT_SAMPLE_ROWS


def families(family: Sequence[str], d: int, features: Sequence[str]) -> Any:
    """``--family`` (one name, one per feature, or COLUMN=FAMILY pairs) as Families."""
    from fairsteer.families import Families

    fam = tuple(family)
    one = len(fam) == 1 and "=" not in fam[0]
    return Families(fam[0] if one else fam, d, features)


def chunk_features(
    chunk: Any, features: Sequence[str], args: argparse.Namespace, offset: int = 0
) -> Any:
    """A chunk's feature columns as floats, the ``--dequantize`` columns dequantised.

    The noise of a value depends only on the seed, the row's index in the table
    (``offset``, the rows of the shards before this one, plus the row's index
    in its file) and the column (:func:`fairsteer.families.dequantize`), so
    every pass and every chunking or sharding of the table, ``fit`` and
    ``steer`` alike, sees the same dequantised values, equal to ``dequantize``
    of the whole table.
    """
    X = chunk.floats(features)
    columns = getattr(args, "dequantize", None)
    if columns:
        import numpy as np

        from fairsteer.families import dequantize

        missing = [c for c in columns if c not in features]
        if missing:
            raise InputError(
                f"--dequantize names {missing}, which are not feature columns (see --features)"
            )
        idx = [list(features).index(c) for c in columns]
        bad = [c for c, j in zip(columns, idx) if not (X[:, j] == np.round(X[:, j])).all()]
        if bad:
            raise InputError(
                f"--dequantize column {bad[0]!r} holds a non-integer value in rows "
                f"{chunk.start + 1}-{chunk.start + chunk.n_rows}; dequantise integer columns only"
            )
        X = dequantize(X, idx, seed=getattr(args, "seed", 0), first_row=offset + chunk.start)
    return X


def family_sample_rows(args: Any) -> int:
    """``--family-sample`` (default :data:`RESERVOIR_ROWS`), checked."""
    from fairsteer.sampling import check_sample_rows

    size = getattr(args, "family_sample", None)
    return check_sample_rows(RESERVOIR_ROWS if size is None else size)
