"""The synthetic "bias in, bias out" case study (Gaussian data).

An IDEAL ground truth: two groups, two classes, shared covariance within each
group, the disadvantaged group an affine image of the advantaged one, equal
base rates. The BIASED training law distorts the disadvantaged group only:

- its positives look less qualified: their mean moves 40% of the way towards
  the negatives' mean;
- its features are noisier: the covariance is inflated by 1.5x;
- its base rate drops from 0.4 to 0.25 (positives under-recorded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.model import GaussianModel

__all__ = ["GROUPS", "CaseStudy", "case_study", "sample_model"]

GROUPS = ("advantaged", "disadvantaged")
BASE_RATE, BIASED_BASE_RATE = 0.4, 0.25
GROUP_WEIGHTS = (0.6, 0.4)
MEAN_SHRINK, VARIANCE_INFLATION = 0.6, 1.5


@dataclass(frozen=True)
class CaseStudy:
    """Ground truth (ideal) and biased training law of one variant."""

    variant: str
    truth: GaussianModel
    biased: GaussianModel


def _truth_parameters(
    variant: str,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    if variant == "univariate":
        mu = np.array([[0.0], [2.0]])
        S = np.array([[1.0]])
        G = np.array([[1.5]])
        t = np.array([1.0])
        return mu, S, G, t
    if variant == "multivariate":
        rng = np.random.default_rng(20240601)  # fixed: the case study is one law
        d = 5
        mu = np.stack([np.zeros(d), 1.2 * np.array([1.0, 0.8, 0.6, 0.4, 0.2])])
        B = rng.normal(size=(d, d)) / np.sqrt(d)
        S = B @ B.T + 0.5 * np.eye(d)
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        G = Q @ np.diag(np.linspace(0.8, 1.6, d))
        t = rng.normal(size=d)
        return mu, S, G, t
    raise InputError(f"variant must be 'univariate' or 'multivariate', got {variant!r}")


def case_study(variant: str = "univariate") -> CaseStudy:
    """The ground truth and the biased law of the case study."""
    mu, S, G, t = _truth_parameters(variant)
    means = np.stack([mu, mu @ G.T + t])
    cov_dis = G @ S @ G.T
    covs = np.stack([np.stack([S, S]), np.stack([cov_dis, cov_dis])])
    w = np.asarray(GROUP_WEIGHTS)[:, None]
    truth = GaussianModel(w * np.array([1 - BASE_RATE, BASE_RATE]), means, covs, GROUPS, (0, 1))
    biased_means = means.copy()
    biased_means[1, 1] = means[1, 0] + MEAN_SHRINK * (means[1, 1] - means[1, 0])
    biased_covs = covs.copy()
    biased_covs[1] = VARIANCE_INFLATION * covs[1]
    priors = w * np.array([[1 - BASE_RATE, BASE_RATE], [1 - BIASED_BASE_RATE, BIASED_BASE_RATE]])
    biased = GaussianModel(priors, biased_means, biased_covs, GROUPS, (0, 1))
    return CaseStudy(variant, truth, biased)


def sample_model(
    model: GaussianModel, n: int, rng: np.random.Generator
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.object_]]:
    """n draws (X, y, group) from a normal-family model (cells by multinomial)."""
    m, K, d = model.means.shape
    cells = rng.choice(m * K, size=n, p=model.priors.ravel())
    a, y = np.divmod(cells, K)
    X = np.empty((n, d))
    L = np.linalg.cholesky(model.covariances)
    for c in range(m * K):
        rows = np.flatnonzero(cells == c)
        i, j = divmod(c, K)
        X[rows] = model.means[i, j] + rng.standard_normal((rows.size, d)) @ L[i, j].T
    return X, y, np.asarray(model.groups, dtype=object)[a]


def main(argv: list[str] | None = None) -> int:
    """``python -m fairsteer.data.synthetic -o train.csv``: a biased training sample as CSV."""
    import argparse

    from fairsteer.io import Table, write_table

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--variant", choices=["univariate", "multivariate"], default="multivariate")
    p.add_argument("--law", choices=["biased", "truth"], default="biased")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    study = case_study(args.variant)
    X, y, g = sample_model(getattr(study, args.law), args.n, np.random.default_rng(args.seed))
    names = [f"x{j + 1}" for j in range(X.shape[1])]
    columns = {name: [repr(float(v)) for v in X[:, j]] for j, name in enumerate(names)}
    columns["group"] = [str(v) for v in g]
    columns["label"] = [str(v) for v in y]
    write_table(Table([*names, "group", "label"], columns, len(y)), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
