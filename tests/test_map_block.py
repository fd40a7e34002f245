"""The per-class map block: the two-class kernel against independent computations,
and the covariance of every start of the multi-start search (THEORY 4a, 4d)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy.linalg import expm

_maps = importlib.import_module("fairsteer.solve._maps")


def _pair(K, d, seed):
    """Reference (pi, nu, Om) and group (mu, S) with per-class covariances."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.full(K, 3.0))
    nu, mu = rng.normal(size=(2, K, d)) * 1.5
    A, B = rng.normal(size=(2, K, d, d))
    Om = A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(d)
    S = B @ np.swapaxes(B, -1, -2) + 0.3 * np.eye(d)
    return pi, nu, Om, mu, S


def _kl(m1, S1, m2, S2):
    P2 = np.linalg.inv(S2)
    diff = m2 - m1
    return 0.5 * (
        np.trace(P2 @ S1)
        + diff @ P2 @ diff
        - len(m1)
        + np.linalg.slogdet(S2)[1]
        - np.linalg.slogdet(S1)[1]
    )


@pytest.mark.parametrize("d", [1, 3, 6])
def test_two_class_kernel_value_gradient_and_hessian(d):
    pi, nu, Om, mu, S = _pair(2, d, seed=d)
    block = _maps.MapBlock(pi, nu, Om, mu, S)
    kernel = block._two_class()
    rng = np.random.default_rng(0)
    g = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    Y = kernel.to_y(g)
    np.testing.assert_allclose(kernel.to_g(Y), g, atol=1e-12)
    value, grad = kernel.value_grad(Y)
    # The value is f(G, t) at the optimal shift: explicit Gaussian KLs in the
    # caller's coordinates (its own inverse and slogdet).
    G, t = block.to_original(g)
    direct = sum(pi[i] * _kl(G @ nu[i] + t, G @ Om[i] @ G.T, mu[i], S[i]) for i in range(2))
    # Two evaluations of the same sum of KLs: round-off only.
    assert value == pytest.approx(direct, rel=1e-10, abs=1e-12)
    # Central differences (step 1e-6: truncation ~1e-12, round-off ~1e-10).
    h = 1e-6
    E = rng.normal(size=(d, d))
    fd = (kernel.value_grad(Y + h * E)[0] - kernel.value_grad(Y - h * E)[0]) / (2 * h)
    assert float(np.sum(grad * E)) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    fd_grad = (kernel.value_grad(Y + h * E)[1] - kernel.value_grad(Y - h * E)[1]) / (2 * h)
    np.testing.assert_allclose(kernel.hessp(Y, E), fd_grad, rtol=1e-5, atol=1e-7)
    # The gradient norm that convergence is judged on is the standardised one.
    assert kernel.standard_grad_norm(grad) == pytest.approx(
        np.linalg.norm(block.value_grad(g)[1]), rel=1e-10
    )


@pytest.mark.parametrize("d", [1, 3, 6])
def test_two_class_local_models(d):
    """The Newton models of the two-class kernel: the plain one in Y, the one in X = Y^-1 E
    with its preconditioner (exact inverse of a positive definite approximation)."""
    pi, nu, Om, mu, S = _pair(2, d, seed=d)
    kernel = _maps.MapBlock(pi, nu, Om, mu, S)._two_class()
    rng = np.random.default_rng(1)
    Y = kernel.to_y(np.eye(d) + 0.3 * rng.normal(size=(d, d)))
    grad = kernel.value_grad(Y)[1]
    E = rng.normal(size=(d, d))
    # Two algebraic forms of the same products: round-off only (1e-10 relative).
    g_plain, hv_plain, solve = kernel.plain(Y, grad)
    assert solve is None and g_plain is grad
    np.testing.assert_allclose(hv_plain(E), kernel.hessp(Y, E), rtol=1e-10, atol=1e-12)
    g_local, hv_local, solve = kernel.local(Y, grad)
    np.testing.assert_allclose(g_local, Y.T @ grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hv_local(E), Y.T @ kernel.hessp(Y, Y @ E), rtol=1e-10, atol=1e-12)
    # The preconditioner as a dense matrix: symmetric positive definite (to
    # round-off of its entries, ~1e-12 of their scale).
    n = d * d
    inv = np.stack([solve(e.reshape(d, d)).ravel() for e in np.eye(n)], axis=1)
    np.testing.assert_allclose(inv, inv.T, rtol=1e-9, atol=1e-12 * np.abs(inv).max())
    assert np.linalg.eigvalsh(0.5 * (inv + inv.T))[0] > 0


def test_steihaug_preconditioned_steps():
    """Preconditioned truncated CG: the Newton step inside ||p||_M <= radius, else the boundary."""
    rng = np.random.default_rng(6)
    n = 30
    A = rng.normal(size=(n, n))
    H = A @ A.T / n + 0.5 * np.eye(n)
    Mdiag = rng.uniform(0.5, 2.0, n)  # an SPD (diagonal) preconditioner M
    g = rng.normal(size=n)
    newton = -np.linalg.solve(H, g)
    m_norm = float(np.sqrt(newton @ (Mdiag * newton)))

    def hv(v):
        return H @ v

    def solve(r):
        return r / Mdiag

    p, pred, norm = _maps._steihaug_prec(hv, g, 2 * m_norm, 1e-12, solve, 0.0)
    # Residual 1e-12 of ||g|| on a system of condition ~10: ~1e-11 relative.
    np.testing.assert_allclose(p, newton, rtol=1e-9, atol=1e-11)
    # pred is the model decrease at p, from the CG residual (round-off, 1e-12).
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-12)
    # The M-norm from the CG recurrences against the direct one (round-off).
    assert norm == pytest.approx(m_norm, rel=1e-9)
    p, pred, norm = _maps._steihaug_prec(hv, g, 0.1 * m_norm, 1e-12, solve, 0.0)
    assert norm == pytest.approx(0.1 * m_norm, rel=1e-9)
    assert float(np.sqrt(p @ (Mdiag * p))) == pytest.approx(0.1 * m_norm, rel=1e-9)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-12) and pred > 0
    # Negative curvature: to the boundary, and the model still decreases.
    Hneg = H - 2 * np.linalg.eigvalsh(H)[-1] * np.eye(n)
    p, pred, norm = _maps._steihaug_prec(lambda v: Hneg @ v, g, 1.0, 1e-12, solve, 0.0)
    assert float(np.sqrt(p @ (Mdiag * p))) == pytest.approx(1.0, rel=1e-9)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ Hneg @ p), rel=1e-12) and pred > 0


def _moved(pi, nu, Om, mu, S, seed):
    """The same pair after affine maps x -> M x + b of the reference and of the group."""
    rng = np.random.default_rng(seed)
    d = nu.shape[1]
    Mr, Mt = (10.0 ** rng.uniform(-2, 2, size=(2, d)))[:, :, None] * rng.normal(size=(2, d, d))
    br, bt = rng.normal(size=(2, d)) * 100
    moved = (pi, nu @ Mr.T + br, Mr @ Om @ Mr.T, mu @ Mt.T + bt, Mt @ S @ Mt.T)
    return moved, Mr, Mt


@pytest.mark.parametrize(("K", "d"), [(2, 3), (3, 5), (4, 2)])
def test_every_start_is_covariant(K, d):
    """Starts of equivalent problems are the same maps seen in other coordinates.

    With the reference moved by M_r and the group by M_t, a map G becomes
    M_t G M_r^-1; the search then follows the same path to the same optimum.
    """
    pair = _pair(K, d, seed=10 * K + d)
    moved, Mr, Mt = _moved(*pair, seed=1)
    blocks = [_maps.MapBlock(*p) for p in (pair, moved)]

    def original(block, g):
        return block.to_original(g)[0]

    def covariant(G0, G1):
        # Round-off of the scales 10^+-2 of the maps (condition ~1e4 or so).
        np.testing.assert_allclose(Mt @ G0 @ np.linalg.inv(Mr), G1, rtol=1e-7, atol=1e-7)

    eig = [b.eigen_starts() for b in blocks]
    covariant(original(blocks[0], eig[0][0]), original(blocks[1], eig[1][0]))
    # The other sign patterns are covariant as a set (their order follows
    # the arbitrary signs of the eigenvectors): the same values.
    values = [sorted(b.value_grad(g)[0] for g in e) for b, e in zip(blocks, eig, strict=True)]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-9)
    covariant(*(original(b, b.pooled_start()) for b in blocks))
    covariant(*(original(b, b.spd_start()[0]) for b in blocks))
    frames = [b.frame for b in blocks]
    R = np.random.default_rng(2).normal(size=(d, d))
    covariant(*(original(b, F[0] @ R @ F[1].T) for b, F in zip(blocks, frames, strict=True)))
    results = [_maps.best_map(*p, rng=np.random.default_rng(0)) for p in (pair, moved)]
    assert all(r.converged for r in results)
    # The same local minimum: converged values agree to the solver tolerance.
    assert results[0].value == pytest.approx(results[1].value, rel=1e-8, abs=1e-12)


def test_steihaug_steps():
    """Truncated CG: Newton step inside the region, boundary step otherwise."""
    rng = np.random.default_rng(5)
    n = 30
    A = rng.normal(size=(n, n))
    H = A @ A.T / n + 0.5 * np.eye(n)  # condition ~10: CG converges well within n steps
    g = rng.normal(size=n)
    newton = -np.linalg.solve(H, g)
    radius = 2 * np.linalg.norm(newton)
    p, pred, norm = _maps._steihaug_plain(lambda v: H @ v, g, radius, 1e-12, 0.0)
    # Residual 1e-12 of ||g|| on a system of condition ~10: ~1e-11 relative.
    np.testing.assert_allclose(p, newton, rtol=1e-9, atol=1e-11)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-12)
    assert norm == pytest.approx(np.linalg.norm(p), rel=1e-12)
    small = 0.1 * np.linalg.norm(newton)
    p, pred, norm = _maps._steihaug_plain(lambda v: H @ v, g, small, 1e-12, 0.0)
    assert norm == pytest.approx(small, rel=1e-9)
    assert pred > 0
    # Negative curvature: the step goes to the boundary and still lowers the model.
    Hneg = H - 2 * np.linalg.eigvalsh(H)[-1] * np.eye(n)
    p, pred, norm = _maps._steihaug_plain(lambda v: Hneg @ v, g, 1.0, 1e-12, 0.0)
    assert norm == pytest.approx(1.0, rel=1e-9)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ Hneg @ p), rel=1e-12) and pred > 0


def test_preconditioned_steihaug_steps_in_the_m_norm():
    """Truncated CG with a preconditioner M (given by its solve only): the Newton step
    inside the region, a boundary step of M-norm equal to the radius otherwise, and the
    predicted decrease equal to the model's, also at negative curvature."""
    rng = np.random.default_rng(6)
    n = 30
    A = rng.normal(size=(n, n))
    m = np.exp(rng.uniform(-3, 3, size=n))  # badly scaled: diagonal spread e^6
    H = np.sqrt(m)[:, None] * (A @ A.T / n + 0.5 * np.eye(n)) * np.sqrt(m)[None, :]
    g = rng.normal(size=n)
    solve = lambda r: r / m  # noqa: E731  (M = diag(m), Jacobi-like)

    def m_norm(p):
        return float(np.sqrt(p @ (m * p)))

    newton = -np.linalg.solve(H, g)
    p, pred, norm = _maps._steihaug_prec(lambda v: H @ v, g, 2 * m_norm(newton), 1e-12, solve, 0.0)
    # preconditioned, the system has condition ~10: residual 1e-12 of ||g|| gives ~1e-10
    np.testing.assert_allclose(p, newton, rtol=1e-8, atol=1e-10 * np.abs(newton).max())
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-10)
    assert norm == pytest.approx(m_norm(p), rel=1e-10)
    small = 0.1 * m_norm(newton)
    p, pred, norm = _maps._steihaug_prec(lambda v: H @ v, g, small, 1e-12, solve, 0.0)
    assert norm == pytest.approx(small, rel=1e-9) and m_norm(p) == pytest.approx(small, rel=1e-9)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-10) and pred > 0
    Hneg = H - 2 * np.linalg.eigvalsh(H)[-1] * np.eye(n)
    p, pred, norm = _maps._steihaug_prec(lambda v: Hneg @ v, g, 1.0, 1e-12, solve, 0.0)
    assert m_norm(p) == pytest.approx(1.0, rel=1e-9)
    assert pred == pytest.approx(-(g @ p + 0.5 * p @ Hneg @ p), rel=1e-10) and pred > 0


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_newton_from_badly_scaled_starts(K, scale):
    """Steps that would overflow are rejected (no warning: warnings are errors here)."""
    pi, nu, Om, mu, S = _pair(K, 3, seed=K)
    block = _maps.MapBlock(pi, nu, Om, mu, S)
    g, value, gnorm, _ = block.newton(scale * np.eye(3))
    assert gnorm <= _maps.GTOL and np.isfinite(value)
    assert np.isfinite(g).all() and abs(np.linalg.det(g)) > 0


def test_joined_path_test():
    """The basin test of the search: a path from g to a minimum below a level."""
    pi, nu, Om, mu, S = _pair(2, 4, seed=7)
    block = _maps.MapBlock(pi, nu, Om, mu, S)
    best = _maps.best_map(pi, nu, Om, mu, S, rng=np.random.default_rng(0))
    g1 = block.to_standard(best.G)
    rng = np.random.default_rng(1)
    skew = rng.normal(size=(4, 4))
    g = g1 @ expm(0.2 * (skew - skew.T)) * 1.1
    # Below the level of every path point (phi >= its minimum there): not joined.
    assert not _maps._joined(block, g, best.value - 1e-3, g1)
    # A level above phi everywhere on the path: joined.
    assert _maps._joined(block, g, block.value_grad(g)[0] + 1e3, g1)
    # The other component of GL(d) (det < 0): no path through invertible maps.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert not _maps._joined(block, g @ flip, np.inf, g1)
