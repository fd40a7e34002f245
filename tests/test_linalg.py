"""linalg helpers against scipy, POT and Monte Carlo."""

import numpy as np
import ot
import pytest
import scipy.linalg

from fairsteer.errors import InputError
from fairsteer.linalg import (
    check_spd,
    gaussian_ot_matrix,
    inv_sqrtm_spd,
    kl_gaussian,
    logdet_spd,
    sqrtm_psd,
    tv_bound_from_kl,
)


def random_spd(rng, d, cond=10.0):
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (Q * np.geomspace(1.0, cond, d)) @ Q.T


@pytest.mark.parametrize("d", [1, 2, 5])
def test_square_roots_match_scipy(d):
    rng = np.random.default_rng(d)
    S = random_spd(rng, d)
    # Both are backward-stable eigen/Schur computations of a matrix with
    # condition number 10: agreement to ~1e-12 relative is expected.
    np.testing.assert_allclose(sqrtm_psd(S), scipy.linalg.sqrtm(S).real, atol=1e-12)
    np.testing.assert_allclose(
        inv_sqrtm_spd(S), np.linalg.inv(scipy.linalg.sqrtm(S).real), atol=1e-11
    )
    np.testing.assert_allclose(logdet_spd(S), np.linalg.slogdet(S)[1], atol=1e-12)


def independent_kl(m1, S1, m2, S2):
    d = len(m1)
    P2 = np.linalg.inv(S2)
    diff = m2 - m1
    return 0.5 * (
        np.trace(P2 @ S1)
        + diff @ P2 @ diff
        - d
        + np.linalg.slogdet(S2)[1]
        - np.linalg.slogdet(S1)[1]
    )


def test_kl_matches_inverse_formula_and_broadcasts():
    rng = np.random.default_rng(0)
    d = 4
    ms = rng.normal(size=(3, 2, d))
    Ss = np.array([[random_spd(rng, d) for _ in range(2)] for _ in range(3)])
    got = kl_gaussian(ms[:, 0], Ss[:, 0], ms[:, 1], Ss[:, 1])
    want = [independent_kl(ms[k, 0], Ss[k, 0], ms[k, 1], Ss[k, 1]) for k in range(3)]
    # Cholesky solve vs explicit inverse on condition-10 matrices: round-off ~1e-13.
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert kl_gaussian(ms[0, 0], Ss[0, 0], ms[0, 0], Ss[0, 0]) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_monte_carlo():
    rng = np.random.default_rng(1)
    d = 3
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    S1, S2 = random_spd(rng, d, 3.0), random_spd(rng, d, 3.0)
    from scipy.stats import multivariate_normal as mvn

    x = mvn(m1, S1).rvs(size=400_000, random_state=rng)
    ratio = mvn(m1, S1).logpdf(x) - mvn(m2, S2).logpdf(x)
    se = ratio.std() / np.sqrt(ratio.size)
    # 5 standard errors: a false failure has probability below 1e-6.
    assert abs(kl_gaussian(m1, S1, m2, S2) - ratio.mean()) < 5 * se


def test_gaussian_ot_matrix_pushes_covariance_and_matches_pot():
    rng = np.random.default_rng(2)
    d = 4
    S, T = random_spd(rng, d), random_spd(rng, d, 50.0)
    A = gaussian_ot_matrix(S, T)
    np.testing.assert_allclose(A, A.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(A) > 0)
    # A S A = T is an identity of the closed form; round-off of three products.
    np.testing.assert_allclose(A @ S @ A, T, rtol=1e-9, atol=1e-10)
    A_pot, _ = ot.gaussian.bures_wasserstein_mapping(np.zeros(d), np.zeros(d), S, T)
    # POT computes the same closed form through scipy's sqrtm (Schur): ~1e-10.
    np.testing.assert_allclose(A, A_pot, rtol=1e-8, atol=1e-9)


def test_check_spd_rejects_bad_matrices():
    with pytest.raises(InputError, match="not positive definite"):
        check_spd(np.diag([1.0, -1.0]))
    with pytest.raises(InputError, match="not symmetric"):
        check_spd(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(InputError, match="NaN or inf"):
        check_spd(np.array([[np.nan]]))
    with pytest.raises(InputError, match="square"):
        check_spd(np.ones((2, 3)))
    with pytest.raises(InputError, match="singular"):
        inv_sqrtm_spd(np.zeros((2, 2)))


def test_tv_bound_is_pinsker_or_bretagnolle_huber_and_bounds_true_tv():
    kl = np.array([0.0, 0.01, 1.0, 10.0])
    got = tv_bound_from_kl(kl)
    np.testing.assert_allclose(got, np.minimum(np.sqrt(kl / 2), np.sqrt(1 - np.exp(-kl))))
    # True TV between N(0,1) and N(mu,1) is 2 Phi(mu/2) - 1 with KL = mu^2/2.
    from scipy.stats import norm

    for mu in (0.1, 1.0, 3.0):
        assert 2 * norm.cdf(mu / 2) - 1 <= tv_bound_from_kl(mu**2 / 2) + 1e-15
