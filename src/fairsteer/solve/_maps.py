"""The map block of every solver: the best affine map from a reference to one group.

For a reference (pi~, nu_i, Om_i) and a group with parameters (mu_i, S_i) this
minimises (:ref:`theory-4a`)

    f(G, t) = sum_i pi~_i KL(N(G nu_i + t, G Om_i G^T) || N(mu_i, S_i))

over invertible G and vectors t.

Everything runs in *standardised coordinates* (:ref:`theory-4d`): the reference is
centred and whitened by its prior-pooled total covariance, the group likewise,
so that ``G = L_t g L_r^-1`` and ``t = mbar_t + L_t tau - G mbar_r``. The
objective is exactly invariant under this change of variables, and in these
coordinates the problem no longer depends on the units (or offsets) of the
features: a year-like column with mean 2000 and a column in units of 10^-5
give the same g. The shift tau is eliminated in closed form,

    tau*(g) = Pbar^-1 sum_i pi_i P_i (mu_i - g nu_i),  Pbar = sum_i pi_i P_i,

and the reduced objective phi(g) = f(g, tau*(g)) is minimised by a
trust-region Newton method (Steihaug-Toint truncated conjugate gradients) with
the exact gradient and Hessian-vector products:

    grad phi = sum_i pi_i (P_i g Om_i - P_i r_i nu_i^T) - g^-T,   r_i = mu_i - g nu_i - tau*,
    H[D]     = sum_i pi_i (P_i D Om_i + P_i (D nu_i + delta) nu_i^T) + g^-T D^T g^-T,
    delta    = -Pbar^-1 sum_i pi_i P_i D nu_i.

Convergence means ``||grad phi||_F <= gtol`` in standardised coordinates; as
these are dimensionless, the tolerance is relative to the problem's own scale.

Speed (per-class covariances at d ~ 100): phi is nearly flat along right
rotations g -> g R (exactly flat when all classes share a covariance and a
mean), so

- a Newton step p is taken along the group's own curve, g -> g exp(g^-1 p),
  on which those soft directions are straight (an additive step leaves the
  curved valley and is cut back by the trust region: 100+ iterations
  become about 15);
- with two classes the run is made in coordinates Y = V^-1 g W^-T that
  diagonalise both class precisions and both reference covariances
  (:class:`_TwoClassKernel`), where a Hessian product costs two d x d
  products instead of six;
- the multi-start search screens every start to a loose gradient norm and
  refines only the best distinct basins (:func:`best_map`);
- two classes, refinement: the Newton system is solved for X = Y^-1 E,
  where the -ln|det| part of the Hessian is the plain transposition, with
  a preconditioner of 2 x 2 blocks (X_jk, X_kj) plus the rank-d class-mean
  part by Woodbury (:meth:`_TwoClassKernel.local`). The Hessian is
  ill-conditioned (the soft directions' curvature spans several decades:
  ~7,000 conjugate-gradient products per refinement at d = 100 without a
  preconditioner); the preconditioned spectrum spans about two decades
  less, and a refinement takes a few hundred products.

The screening runs keep the unpreconditioned steps: the preconditioner's
trust region (in its own norm) moves further along the soft directions
early on, and from the same starts it was seen to settle in other, slightly
worse, basins. Every start of the search is covariant under
per-group affine maps of the model, so equivalent models give the same
answer to solver tolerance (:ref:`theory-4d`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fairsteer.errors import InputError
from fairsteer.linalg import solve_triangular, symmetrize

Array = NDArray[np.float64]

# Dimensionless gradient norm. Near a minimum the KL is within about
# ||grad||^2 / (2 lambda_min) of the local minimum's value; in standardised
# coordinates lambda_min is rarely below 1e-4, so 1e-7 leaves < 1e-10 nats.
GTOL = 1e-7
MAX_ITER = 1000  # trust-region iterations for a refined start
SCREEN_ITER = 15  # iterations per start before the best are refined
SCREEN_GTOL = 3e-2  # gradient norm at which a screened start has found its basin
SCREEN_PRECOND = False  # screening runs take unpreconditioned steps (see the module notes)
REFINE = 2  # starts refined to convergence
EIGEN_STARTS = 8  # covariant eigenvector-alignment starts screened (lowest f first)
SAME_BASIN = 1e-2  # relative distance at which a run has reached a refined minimum
ZERO_KL = 1e-14  # a start this close to KL = 0 is a global minimum (KL >= 0)


# Per-class searches at d <= SMALL_BLAS_D run their d x d products on one BLAS thread.
SMALL_BLAS_D = 200

# Smallest ratio of the two eigenvalues of a 2 x 2 block of the pair
# preconditioner (:meth:`_TwoClassKernel.local`); at the minima of the
# d = 100 benchmark the blocks' own ratios go down to ~1e-4.
PAIR_FLOOR = 1e-6


def small_blas(d: int) -> AbstractContextManager:
    """One BLAS thread while a per-class search on d x d matrices runs, if d is small.

    The searches make tens of thousands of d x d products; for d up to a few
    hundred, waking BLAS threads for each costs more than it saves (several
    times slower on a loaded two-core machine).
    """
    if d > SMALL_BLAS_D:
        return nullcontext()
    from fairsteer._threads import one_blas_thread

    return one_blas_thread()  # safe when solves in several threads overlap


def parallel_map(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on threads when there are several items and cores.

    The per-class searches are independent across reference groups and map
    blocks, and spend their time in NumPy/BLAS calls that release the GIL.
    Results do not depend on the scheduling (each task owns its state).
    """
    import os

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def cholesky(S: Array, what: str = "covariance") -> Array:
    """Lower Cholesky factor, with an :class:`InputError` naming ``what`` on failure."""
    try:
        return np.linalg.cholesky(symmetrize(S))
    except np.linalg.LinAlgError:
        raise InputError(
            f"a {what} is not positive definite (a feature is constant or collinear "
            "with others in a (group, class) cell); drop that feature or fit with shrinkage"
        ) from None


def logdet_chol(L: Array) -> Array:
    """``ln det (L L^T)`` from a Cholesky factor (stacks allowed)."""
    return 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)


def closed_form_standard(
    pi: Array, nu: Array, C_chol: Array, mu: Array, S_chol: Array, align: Array | None = None
) -> tuple[Array, Array, Array, Array]:
    r"""The shared-covariance closed form of :ref:`theory-4a` from Cholesky factors.

    ``nu`` and ``mu`` are the class means of reference and group *centred*
    at their pi-weighted means; ``C_chol`` is a Cholesky factor of
    :math:`C = \Omega + \sum_i \pi_i \nu_i \nu_i^T`, ``S_chol`` of the group's
    (shared) covariance S. Any factors work: with G = R g L^-1 the objective is
    1/2 ||g||_F^2 - tr(g E) - ln|det g| + const, E = L^-1 B R^-T, minimised by
    g = U diag((s + sqrt(s^2 + 4)) / 2) V^T from the SVD E^T = U diag(s) V^T
    (von Neumann's trace inequality, then g - s = 1/g per singular value).

    Returns
    -------
    G : ndarray (d, d)
        The optimal linear part (the shift is mbar_a - G mbar_r).
    s, sigma : ndarray
        Singular values of E and of g on span(E) (the rest of g's singular
        values are 1).
    Q : ndarray (d, K)
        ``R^-1 (mu_i sqrt(pi_i))``, whose squared norm enters the optimal value.
    """
    d = nu.shape[1]
    root_pi = np.sqrt(pi)[:, None]
    P = solve_triangular(C_chol, (nu * root_pi).T, lower=True)
    Q = solve_triangular(S_chol, (mu * root_pi).T, lower=True)
    K = P.shape[1]
    if d > K:
        # E = P Q^T has rank <= K: thin QRs and a K x K SVD.
        Qp, Rp = np.linalg.qr(P)
        Qq, Rq = np.linalg.qr(Q)
        Um, s, Vmt = np.linalg.svd(Rq @ Rp.T)
        U, V = Qq @ Um, Qp @ Vmt.T
    else:
        U, s, Vt = np.linalg.svd(Q @ P.T)
        V = Vt.T
    sigma = (s + np.sqrt(s**2 + 4.0)) / 2.0
    # Singular pairs with s ~ 0 (E has rank <= K - 1 < K columns) are
    # arbitrary within their null spaces: they join the complements, which
    # are paired deterministically below (sigma = 1 there either way).
    keep = s > 1e-12 * max(float(s[0]) if s.size else 0.0, 1.0)
    U, V = U[:, keep], V[:, keep]
    # g = I + U diag(sigma) V^T - (pairing of the complements): we pair the
    # complement of span(V) with that of span(U) through the orthogonal map
    # that is closest to the identity (polar factor), so that g is the
    # identity on directions no class mean touches.
    if align is not None:
        # The complement pairing closest to a given map G_align, seen in g's coordinates.
        align = solve_triangular(S_chol, align @ C_chol, lower=True)
    g = (U * sigma[keep]) @ V.T + _complement_map(U, V, align)
    G = solve_triangular(C_chol, (S_chol @ g).T, lower=True, trans="T").T
    return G, s, sigma, Q


def _complement_map(U: Array, V: Array, align: Array | None = None) -> Array:
    """An isometry from span(V)^perp onto span(U)^perp, as a d x d matrix.

    Zero singular values of E leave g orthogonal but otherwise free between
    the complements; every choice gives the same ideal model (shared
    covariance). We take the polar factor of (I - U U^T) X (I - V V^T) with
    X = ``align`` (default I), the isometry closest to X between the
    complements, completed on the rest by complete-QR bases. With X the
    identity, g is the identity where both complements agree; a covariant X
    makes the choice covariant under per-group affine maps.
    """
    d, k = U.shape
    if k >= d:
        return np.zeros((d, d))
    Pu = np.eye(d) - U @ U.T
    Pv = np.eye(d) - V @ V.T
    W, s, Zt = np.linalg.svd(Pu @ Pv if align is None else Pu @ align @ Pv)
    # Pu Pv has rank d - k generically; its top d - k singular pairs span the
    # two complements (left: span(U)^perp, right: span(V)^perp).
    r = d - k
    if s[r - 1] > 1e-8:
        return W[:, :r] @ Zt[:r]
    U_perp = np.linalg.qr(U, mode="complete")[0][:, k:]
    V_perp = np.linalg.qr(V, mode="complete")[0][:, k:]
    return U_perp @ V_perp.T


def _sign_patterns(best: Array) -> list[Array]:
    """``best`` first, then all patterns (d <= 6) or all single flips (d <= 24)."""
    d = best.size
    out = [best]
    if d <= 6:
        import itertools

        out += [
            np.array(p) for p in itertools.product((-1.0, 1.0), repeat=d) if not np.all(p == best)
        ]
    elif d <= 24:
        for j in range(d):
            flip = best.copy()
            flip[j] = -flip[j]
            out.append(flip)
    return out


@dataclass
class MapResult:
    """The best map found and how it was found."""

    G: Array
    t: Array
    value: float
    grad_norm: float
    converged: bool
    iterations: int
    starts: int
    start_values: list[float]
    products: int = 0  # Hessian products of all Newton runs (SPD restriction included)


class MapBlock:
    """phi(g) of one reference -> group pair in standardised coordinates (per-class).

    Parameters
    ----------
    pi : (K,) reference priors; nu : (K, d) reference means; Om : (K, d, d)
    reference covariances; mu : (K, d) and S : (K, d, d) the group's cells.
    """

    def __init__(self, pi: Array, nu: Array, Om: Array, mu: Array, S: Array) -> None:
        K, d = nu.shape
        self.pi, self.K, self.d = pi, K, d
        self.nbar = pi @ nu
        self.mbar = pi @ mu
        dn, dm = nu - self.nbar, mu - self.mbar
        Om = np.broadcast_to(Om, (K, d, d))
        S = np.broadcast_to(S, (K, d, d))
        self.Lr = cholesky(np.einsum("k,kde->de", pi, Om) + (dn.T * pi) @ dn, "covariance")
        self.Lt = cholesky(np.einsum("k,kde->de", pi, S) + (dm.T * pi) @ dm, "covariance")
        Lr_inv = solve_triangular(self.Lr, np.eye(d), lower=True)
        Lt_inv = solve_triangular(self.Lt, np.eye(d), lower=True)
        self.nu = dn @ Lr_inv.T
        self.Om = symmetrize(Lr_inv @ Om @ Lr_inv.T)
        self.mu = dm @ Lt_inv.T
        S_std = symmetrize(Lt_inv @ S @ Lt_inv.T)
        chol_S = cholesky(S_std, "covariance")
        chol_Om = cholesky(self.Om, "reference covariance")
        inv_chol = np.linalg.inv(chol_S)
        self.P = np.swapaxes(inv_chol, -1, -2) @ inv_chol
        self.Pbar_inv = np.linalg.inv(symmetrize(np.einsum("k,kde->de", pi, self.P)))
        self.const = 0.5 * float(pi @ (logdet_chol(chol_S) - logdet_chol(chol_Om))) - 0.5 * d
        self.S_std = S_std
        self._cache_key: bytes | None = None
        self._cache: tuple | None = None
        self._kernel: _TwoClassKernel | None = None
        self.frame: tuple[Array, Array] | None = None  # set by eigen_starts
        self._eigen: list[Array] | None = None
        self.products = 0  # Hessian products of the Newton runs (diagnostics)

    # ---------------------------------------------------------- coordinates
    def to_standard(self, G: Array) -> Array:
        """g = L_t^-1 G L_r."""
        return solve_triangular(self.Lt, G @ self.Lr, lower=True)

    def to_original(self, g: Array) -> tuple[Array, Array]:
        """(G, t) in the caller's coordinates, t from the eliminated shift."""
        tau = self.tau(g)
        G = solve_triangular(self.Lr, (self.Lt @ g).T, lower=True, trans="T").T
        t = self.mbar + self.Lt @ tau - G @ self.nbar
        return G, t

    def tau(self, g: Array) -> Array:
        a = self.mu - self.nu @ g.T
        return self.Pbar_inv @ (self.pi @ np.einsum("kde,ke->kd", self.P, a))

    # ------------------------------------------------------------ objective
    def _state(self, g: Array) -> tuple | None:
        key = g.tobytes()
        if key != self._cache_key:
            self._cache_key = key
            sign, logabsdet = np.linalg.slogdet(g)
            if sign == 0 or not np.isfinite(logabsdet):
                self._cache = None
            else:
                self._cache = (logabsdet, np.linalg.inv(g))
        return self._cache

    def value_grad(self, g: Array) -> tuple[float, Array | None]:
        """phi(g) and its gradient (None where g is singular, value inf)."""
        state = self._state(g)
        if state is None:
            return np.inf, None
        logabsdet, g_inv = state
        pi = self.pi
        r = self.mu - self.nu @ g.T
        r = r - self.Pbar_inv @ (pi @ np.einsum("kde,ke->kd", self.P, r))
        Pr = np.einsum("kde,ke->kd", self.P, r)
        PgOm = self.P @ (g @ self.Om)
        trace = np.einsum("kde,de->k", PgOm, g)
        maha = np.einsum("kd,kd->k", r, Pr)
        value = 0.5 * float(pi @ (trace + maha)) + self.const - logabsdet
        grad = np.einsum("k,kde->de", pi, PgOm) - (Pr.T * pi) @ self.nu - g_inv.T
        return value, grad

    def hessp(self, g: Array, D: Array) -> Array:
        """Hessian of phi at g applied to the direction D."""
        state = self._state(g)
        assert state is not None
        g_inv = state[1]
        pi = self.pi
        Dnu = self.nu @ D.T  # (K, d): row i = D nu_i
        delta = -self.Pbar_inv @ (pi @ np.einsum("kde,ke->kd", self.P, Dnu))
        PDnu = np.einsum("kde,ke->kd", self.P, Dnu + delta)
        out = np.einsum("k,kde->de", pi, self.P @ D @ self.Om) + (PDnu.T * pi) @ self.nu
        return out + g_inv.T @ D.T @ g_inv.T

    # --------------------------------------------------------------- starts
    def pooled_start(self) -> Array:
        """Closed form of :ref:`theory-4a` with the pi-pooled covariances (global if shared).

        The closed form leaves the map free (any isometry) between the
        directions no class mean touches; there it is taken closest to the
        first eigenvector alignment, which makes this start covariant under
        per-group affine maps (the identity of the standardised coordinates
        is not).
        """
        Om_pool = np.einsum("k,kde->de", self.pi, self.Om)
        S_pool = np.einsum("k,kde->de", self.pi, self.S_std)
        C = Om_pool + (self.nu.T * self.pi) @ self.nu
        if self._eigen is None:
            self.eigen_starts()
        G, *_ = closed_form_standard(
            self.pi,
            self.nu,
            cholesky(C),
            self.mu,
            cholesky(S_pool, "covariance"),
            align=self._eigen[0],
        )
        return G

    def eigen_starts(self) -> list[Array]:
        r"""Align generalised eigenvectors of reference and group (exact if equivalent).

        With pooled within-class covariances :math:`W_r, W_t` and probe
        matrices :math:`B = \sum_i c_i \pi_i (\Omega_i + f \nu_i \nu_i^T)`, the
        pencils (B_r, W_r) and (B_t, W_t) have eigenvectors V, U normalised by
        V^T W_r V = I = U^T W_t U. If group = g(reference) exactly,
        U = g^-T V D for a sign matrix D, hence g = W_t U D V^T. The
        construction is covariant under per-group affine maps (so an ideal model
        is recovered exactly, and the starts do not depend on units). Probes:
        class weights c = 1 + i/K and 1 + 4 e_k, with and without the means
        (f = 1, 0). Signs: the pattern that best matches the class means first,
        then every pattern for d <= 6, every single flip for d <= 24. Local
        minima of f are largely such sign and axis choices, so these covariant
        starts find the global minimum where random rotations do not.
        """
        from scipy.linalg import eigh

        K, _d = self.K, self.d
        Wr = np.einsum("k,kde->de", self.pi, self.Om)
        Wt = np.einsum("k,kde->de", self.pi, self.S_std)
        probes = [1.0 + np.arange(K) / K] + [1.0 + 4.0 * np.eye(K)[k] for k in range(K)]
        outer_r = self.nu[:, :, None] * self.nu[:, None]
        outer_t = self.mu[:, :, None] * self.mu[:, None]
        out: list[Array] = []
        for f in (1.0, 0.0):
            for c in probes:
                Br = np.einsum("k,kde->de", c * self.pi, self.Om + f * outer_r)
                Bt = np.einsum("k,kde->de", c * self.pi, self.S_std + f * outer_t)
                _, V = eigh(symmetrize(Br), symmetrize(Wr))
                _, U = eigh(symmetrize(Bt), symmetrize(Wt))
                alpha = self.nu @ Wr @ V  # centred means in the eigenbases
                beta = self.mu @ Wt @ U
                best = np.where(self.pi @ (alpha * beta) < 0, -1.0, 1.0)
                if not out:
                    # A covariant frame for random starts: each eigenvector's
                    # sign fixed by the (odd) third moment of the means along it.
                    sv = np.where(self.pi @ alpha**3 < 0, -1.0, 1.0)
                    su = np.where(self.pi @ beta**3 < 0, -1.0, 1.0)
                    self.frame = (Wt @ (U * su), V * sv)
                for signs in _sign_patterns(best):
                    out.append(Wt @ (U * signs) @ V.T)
        self._eigen = out
        return out

    def spd_start(self, max_iter: int = MAX_ITER) -> tuple[Array, float]:
        """Global optimum of the convex restriction to symmetric positive definite maps.

        The restriction is g = X B with X symmetric positive definite (in the
        group's standardised coordinates) and B the first eigenvector
        alignment of :meth:`eigen_starts`, so identical groups give X = I.
        As B is covariant under per-group affine maps and the standardised
        coordinates of a group are defined up to a rotation (which keeps X
        SPD), the restriction and its optimum are covariant too (an SPD
        restriction in fixed coordinates would not be). phi(X B) is convex in
        X on the SPD cone (a convex quadratic of X plus -ln det X), so the
        trust-region Newton run from X = I, with steps leaving the cone
        rejected, converges to its global minimum.
        """
        d = self.d
        if self._eigen is None:
            self.eigen_starts()
        B = self._eigen[0]

        def to_g(X: Array) -> Array:
            return X @ B

        def fun(x: Array) -> tuple[float, Array]:
            X = symmetrize(x.reshape(d, d))
            try:
                np.linalg.cholesky(X)
            except np.linalg.LinAlgError:
                return np.inf, np.zeros_like(x)
            value, grad = self.value_grad(to_g(X))
            if grad is None:
                return np.inf, np.zeros_like(x)
            return value, symmetrize(grad @ B.T).ravel()

        def hessp(x: Array, p: Array) -> Array:
            X = symmetrize(x.reshape(d, d))
            D = symmetrize(p.reshape(d, d))
            return symmetrize(self.hessp(to_g(X), to_g(D)) @ B.T).ravel()

        res = _trust_region(fun, hessp, np.eye(d).ravel(), max_iter, GTOL)
        self.products += res.products
        g = to_g(symmetrize(res.x.reshape(d, d)))
        return g, float(res.fun)

    # --------------------------------------------------------------- Newton
    def newton(
        self,
        g0: Array,
        max_iter: int = MAX_ITER,
        gtol: float = GTOL,
        stop=None,
        precondition: bool = True,
    ):
        """Trust-region Newton on phi from g0; returns (g, value, grad norm, iterations).

        A step p moves x to x exp(x^-1 p) (see the module notes). Two classes:
        the run is made in the coordinates of :class:`_TwoClassKernel`
        (the same phi, Hessian products three times cheaper); convergence
        is judged on the gradient in standardised coordinates all the same.
        ``stop(g, value, gnorm)``, if given, ends the run early when it returns True.
        """
        from scipy.linalg import expm

        d = self.d
        kernel = self._two_class()
        if kernel is None:
            to_x, to_g = (lambda g: g), (lambda y: y)
            value_grad, hess, measure = self.value_grad, self.hessp, None
        else:
            to_x, to_g = kernel.to_y, kernel.to_g
            value_grad, hess = kernel.value_grad, kernel.hessp

            def measure(x: Array, grad: Array) -> float:
                return kernel.standard_grad_norm(grad.reshape(d, d))

        def fun(x: Array) -> tuple[float, Array]:
            value, grad = value_grad(x.reshape(d, d))
            if grad is None:
                return np.inf, np.zeros_like(x)
            return value, grad.ravel()

        def hessp(x: Array, p: Array) -> Array:
            return hess(x.reshape(d, d), p.reshape(d, d)).ravel()

        stop_flat = None
        if stop is not None:

            def stop_flat(x: Array, f: float, gnorm: float) -> bool:
                return stop(to_g(x.reshape(d, d)), f, gnorm)

        inverse = self._state if kernel is None else kernel._inverse

        def retract(x: Array, step: Array) -> Array:
            # x exp(x^-1 step): the step along the group's own curves, on
            # which the soft directions (x -> x R, R a rotation) are straight.
            X = x.reshape(d, d)
            state = inverse(X)
            if state is None:
                return x + step
            x_inv = state[1] if kernel is None else state[1].T
            E = x_inv @ step.reshape(d, d)
            if not np.isfinite(E).all() or np.abs(E).sum(axis=0).max() > 50.0:
                # exp would overflow (e^50 ~ 5e21): no sensible step; rejected.
                return np.full_like(x, np.nan)
            return (X @ expm(E)).ravel()

        local = None
        if kernel is not None:

            def local(x: Array, grad: Array):
                X = x.reshape(d, d)
                if precondition:
                    grad_l, hv, solve = kernel.local(X, grad.reshape(d, d))
                else:
                    grad_l, hv, solve = kernel.plain(X, grad.reshape(d, d))

                def move(P: Array) -> Array:
                    # X exp(P) (preconditioned: P is already relative to X)
                    # or X exp(X^-1 P), as in ``retract``.
                    if not precondition:
                        P = kernel._inverse(X)[1].T @ P
                    if not np.isfinite(P).all() or np.abs(P).sum(axis=0).max() > 50.0:
                        return np.full_like(x, np.nan)
                    return (X @ expm(P)).ravel()

                return grad_l, hv, solve, move

        res = _trust_region(
            fun,
            hessp,
            to_x(g0).ravel(),
            max_iter,
            gtol,
            stop=stop_flat,
            measure=measure,
            retract=retract,
            local=local,
        )
        self.products += res.products
        g = to_g(res.x.reshape(d, d))
        value, grad = self.value_grad(g)
        gnorm = float(np.linalg.norm(grad)) if grad is not None else np.inf
        return g, value, gnorm, int(res.nit)

    def _two_class(self) -> _TwoClassKernel | None:
        """The diagonalised two-class form of phi (None unless K = 2), built once."""
        if self.K != 2:
            return None
        if self._kernel is None:
            self._kernel = _TwoClassKernel(self)
        return self._kernel


class _TwoClassKernel:
    r"""phi of a two-class :class:`MapBlock` where both covariance pairs are diagonal.

    With two classes the pencils (P_1, Pbar) and (Om_1, Obar) (Pbar, Obar the
    pi-pooled precisions and covariances) have eigenvectors V, W with
    V^T Pbar V = I = W^T Obar W; as Pbar and Obar are the pooled pairs, V
    diagonalises P_2 too and W diagonalises Om_2. In the variable
    Y = V^-1 g W^-T (g = V Y W^T; the group's coordinates change by V^-1,
    the reference's by W^T) phi is the same function with diagonal class
    precisions l_i and reference covariances o_i, identity pooled
    precision, and ln|det g| = ln|det Y| + ln|det V| + ln|det W|:

        phi = 1/2 sum_jk c_jk Y_jk^2 + 1/2 sum_i pi_i r_i^T diag(l_i) r_i
              - ln|det Y| + const,   c = sum_i pi_i l_i o_i^T,
        r_i = z_i - Y w_i - tau*,   tau* = sum_i pi_i l_i * (z_i - Y w_i),

    with z_i = V^-1 mu_i and w_i = W^T nu_i. The trace part of the Hessian
    is then elementwise, and a Hessian product costs the two d x d products
    of the -ln|det Y| term plus O(d^2).
    """

    def __init__(self, block: MapBlock) -> None:
        from scipy.linalg import eigh

        pi = block.pi
        Pbar = symmetrize(np.einsum("k,kde->de", pi, block.P))
        Obar = symmetrize(np.einsum("k,kde->de", pi, block.Om))
        _, V = eigh(symmetrize(block.P[0]), Pbar)
        _, W = eigh(symmetrize(block.Om[0]), Obar)
        self.V, self.W = V, W
        self.A = V.T @ Pbar  # V^-1 (V^T Pbar V = I)
        self.C = Obar @ W  # W^-T
        self.l = np.einsum("kdj,dj->kj", block.P @ V, V)  # (K, d) diagonals of V^T P_i V
        self.o = np.einsum("kdj,dj->kj", block.Om @ W, W)
        self.coef = np.einsum("k,kj,kl->jl", pi, self.l, self.o)
        self.z = block.mu @ self.A.T  # rows V^-1 mu_i
        self.w = block.nu @ W  # rows W^T nu_i
        self.pi = pi
        # The class-mean part of the Hessian: E -> diag(s) E u u^T (see :meth:`local`).
        self._s = pi[0] * pi[1] * self.l[0] * self.l[1]
        self._u = self.w[0] - self.w[1]
        logdet_vw = np.linalg.slogdet(V)[1] + np.linalg.slogdet(W)[1]
        self.const = block.const - logdet_vw
        self._key: bytes | None = None
        self._state: tuple | None = None

    def to_y(self, g: Array) -> Array:
        return self.A @ g @ self.C

    def to_g(self, Y: Array) -> Array:
        return self.V @ Y @ self.W.T

    def standard_grad_norm(self, grad_y: Array) -> float:
        """||d phi / d g||_F from d phi / d Y (chain rule: A^T grad_Y C^T)."""
        return float(np.linalg.norm(self.A.T @ grad_y @ self.C.T))

    def _inverse(self, Y: Array) -> tuple | None:
        key = Y.tobytes()
        if key != self._key:
            self._key = key
            sign, logabsdet = np.linalg.slogdet(Y)
            if sign == 0 or not np.isfinite(logabsdet):
                self._state = None
            else:
                self._state = (logabsdet, np.ascontiguousarray(np.linalg.inv(Y).T))
        return self._state

    def value_grad(self, Y: Array) -> tuple[float, Array | None]:
        state = self._inverse(Y)
        if state is None:
            return np.inf, None
        logabsdet, Y_inv_t = state
        pi, l = self.pi, self.l
        r = self.z - self.w @ Y.T
        r = r - pi @ (l * r)  # the pooled precision is I here
        lr = l * r
        value = 0.5 * float(np.sum(self.coef * Y * Y) + pi @ np.sum(r * lr, axis=1))
        value += self.const - logabsdet
        grad = self.coef * Y - (lr.T * pi) @ self.w - Y_inv_t
        return value, grad

    def local(self, Y: Array, grad: Array):
        """Newton model at Y in the right-relative coordinates X = Y^-1 E, with a preconditioner.

        A step E = Y X (taken as Y exp(X)) turns the -ln|det Y| term of the
        Hessian into the plain transposition X -> X^T, whatever Y is:

            H_X[X] = Y^T (c o (Y X) + diag(s) Y X u u^T) + X^T,

        where the class-mean part of phi is the rank-one s, u form of two
        classes (s = pi_1 pi_2 l_1 l_2, u = w_1 - w_2). A product still costs
        two d x d products. The preconditioner is this Hessian with the
        matrices Y^T diag(l_i) Y of the first part replaced by their
        diagonals, 2 x 2 blocks pairing X_jk with X_kj, and the class-mean
        part kept exact (Woodbury, rank d): O(d^3) once per Newton step,
        O(d^2) per use. The soft directions are near-skew X, whose
        curvature is the small difference of the two parts. At a minimum of
        a d = 30 instance the preconditioned spectrum spans 7e2 against
        8e4 for the Hessian's; a refinement at d = 100 takes 100-400
        conjugate gradient products instead of ~7,000. Returns the gradient
        in X, the Hessian product and the preconditioner's solve.
        """
        coef, s, u = self.coef, self._s, self._u
        Yt = np.ascontiguousarray(Y.T)

        def hv(P: Array) -> Array:
            E = Y @ P
            out = coef * E
            out += np.outer(s * (E @ u), u)
            out = Yt @ out
            out += P.T
            return out

        diag = (Y * Y).T @ coef
        # 2 x 2 blocks [[A, 1], [1, B]] (the 1 from the transposition; A, B > 0),
        # = m I + h R with R a reflection: eigenvalues m + h > 0 and m - h.
        # Away from a minimum m - h can be negative: the block is replaced by
        # its absolute value (m - h -> |m - h|), and the small eigenvalue is
        # kept at least PAIR_FLOOR (m + h), so the preconditioner is positive
        # definite and never near-singular where the Hessian is not.
        A, B = diag, diag.T
        m = 0.5 * (A + B)
        half = 0.5 * (A - B)
        h = np.sqrt(half * half + 1.0)
        big = m + h
        small = np.maximum(np.abs(m - h), PAIR_FLOOR * big)
        m2, h2 = 0.5 * (big + small), 0.5 * (big - small) / h
        det = big * small
        idx = np.arange(len(Y))
        # Inverse of [[m2 + h2 half, h2], [h2, m2 - h2 half]] on the pair (jk, kj).
        inv_b, inv_r = (m2 - h2 * half) / det, h2 / det
        inv_diag = 1.0 / np.maximum(np.diagonal(diag) + 1.0, 1e-12)
        inv_b[idx, idx] = inv_diag
        inv_r[idx, idx] = 0.0

        def pairs(R: Array) -> Array:
            out = inv_b * R
            out -= inv_r * R.T
            return out

        # The class-mean part X -> Ms X u u^T (Ms = Y^T diag(s) Y) is added
        # exactly, by Woodbury: it has rank d, and its diagonal alone would
        # overstate the curvature of every X with X u = 0 (the soft
        # directions among them). With V y = y u^T and C = V^T P0^-1 V,
        # (P0 + V Ms V^T)^-1 = P0^-1 - P0^-1 V (Ms^-1 + C)^-1 V^T P0^-1.
        Ms = Yt @ (Y * s[:, None])
        C = np.diag(inv_b @ (u * u)) - u[:, None] * inv_r * u
        cap = Ms @ np.linalg.solve(np.eye(len(Y)) + C @ Ms, np.eye(len(Y)))  # (Ms^-1 + C)^-1

        def solve(R: Array) -> Array:
            out = pairs(R)
            z = cap @ (out @ u)
            out -= inv_b * np.outer(z, u)
            out += inv_r * np.outer(u, z)
            return out

        return Yt @ grad, hv, solve

    def plain(self, Y: Array, grad: Array):
        """The Newton model at Y in Y itself: ``(grad, hv, None)`` (no preconditioner).

        ``hv`` is :meth:`hessp` at a fixed Y, with the class-mean part in
        its rank-one form (see :meth:`local`) and Y^-T computed once.
        """
        state = self._inverse(Y)
        assert state is not None
        Zt = state[1]
        coef, s, u = self.coef, self._s, self._u

        def hv(E: Array) -> Array:
            out = coef * E
            out += np.outer(s * (E @ u), u)
            out += Zt @ (E.T @ Zt)
            return out

        return grad, hv, None

    def hessp(self, Y: Array, E: Array) -> Array:
        state = self._inverse(Y)
        assert state is not None
        Y_inv_t = state[1]
        pi, l = self.pi, self.l
        Ew = self.w @ E.T  # rows E w_i
        Ew = Ew - pi @ (l * Ew)
        out = self.coef * E + ((l * Ew).T * pi) @ self.w
        return out + Y_inv_t @ (E.T @ Y_inv_t)


def _trust_region(
    fun,
    hessp,
    x0: Array,
    max_iter: int,
    gtol: float = GTOL,
    stop=None,
    measure=None,
    retract=None,
    local=None,
):
    """Trust-region Newton with truncated preconditioned conjugate gradients (Steihaug-Toint).

    Minimises ``fun`` (returning value and gradient; value inf where
    undefined) with exact Hessian-vector products ``hessp``. The CG forcing
    term min(1/2, sqrt(||grad||)) ||grad|| gives superlinear local
    convergence; CG never solves for a residual below 0.3 gtol (in the
    measured norm), which would only refine a step past the requested
    accuracy. Near the optimum the decrease of f falls below the round-off
    of f itself (|f| eps), where the usual ratio test is noise: a step is
    then accepted when it lowers the gradient norm instead, which keeps
    Newton's fast convergence down to ``gtol`` on the (accurately computed)
    gradient. ``measure(x, grad)``, if given, is the gradient norm that
    convergence is judged on (default: the Euclidean norm of ``grad``; a
    change of variables makes them differ). ``stop(x, f, gnorm)``, if given,
    is asked after every accepted step and ends the run early when it
    returns True. ``local(x, grad)``, if given, returns the model at x in
    other coordinates: ``(grad_local, hv, solve, step)``, with ``solve`` a
    preconditioner M (``z = M^-1 r``; None for none; the trust region is
    then ||p||_M <= radius) and ``step(p)`` the point reached by the local
    step p (``hessp`` and ``retract`` are then not used).
    """
    measure = measure or (lambda x, grad: float(np.linalg.norm(grad)))
    x = np.array(x0, dtype=np.float64)
    f, grad = fun(x)
    if not np.isfinite(f):
        return _TRResult(x, f, np.inf, 0, 0)
    gnorm = measure(x, grad)
    radius = 1.0
    it = 0
    products = 0

    def counted(hv):
        def hv_counted(p):
            nonlocal products
            products += 1
            return hv(p)

        return hv_counted

    for it in range(1, max_iter + 1):
        if gnorm <= gtol:
            it -= 1
            break
        eta = min(0.5, np.sqrt(gnorm))
        if local is not None:
            grad_l, hv, solve, move = local(x, grad)
            hv = counted(hv)
            inner = float(np.linalg.norm(grad_l))
            floor = 0.3 * gtol * inner / gnorm if gnorm > 0 else 0.0
            if solve is None:
                step, pred, step_norm = _steihaug_plain(hv, grad_l, radius, eta, floor)
            else:
                step, pred, step_norm = _steihaug_prec(hv, grad_l, radius, eta, solve, floor)
        else:
            inner = float(np.linalg.norm(grad))
            floor = 0.3 * gtol * inner / gnorm if gnorm > 0 else 0.0
            step, pred, step_norm = _steihaug_plain(
                counted(lambda p, x=x: hessp(x, p)), grad, radius, eta, floor
            )
        with np.errstate(all="ignore"):  # a trial point may overflow: it is rejected
            if local is not None:
                x_new = move(step)
            else:
                x_new = x + step if retract is None else retract(x, step)
            f_new, grad_new = fun(x_new)
        if not (np.isfinite(f_new) and np.isfinite(grad_new).all()):
            radius = 0.25 * step_norm
            continue
        gnorm_new = measure(x_new, grad_new)
        actual = f - f_new
        noise = 64.0 * np.finfo(float).eps * max(abs(f), 1.0)
        if abs(actual) <= noise and abs(pred) <= noise:
            accept, rho = gnorm_new < gnorm, 1.0
        else:
            rho = actual / pred if pred > 0 else -1.0
            accept = rho > 1e-4
        if rho < 0.25:
            radius = 0.25 * step_norm
        elif rho > 0.75 and step_norm >= 0.99 * radius:
            radius = 2.0 * radius
        if accept:
            x, f, grad, gnorm = x_new, f_new, grad_new, gnorm_new
            if stop is not None and gnorm > gtol and stop(x, f, gnorm):
                break
        if radius < 1e-14:
            break
    return _TRResult(x, f, gnorm, it, products)


@dataclass
class _TRResult:
    x: Array
    fun: float
    gnorm: float
    nit: int
    products: int = 0  # Hessian products


def _steihaug_plain(hv, grad: Array, radius: float, eta: float, floor: float):
    """Approximate argmin of m(p) = g.p + p.Hp / 2 on ||p|| <= radius (Steihaug's truncated CG).

    CG stops at a residual of max(eta ||grad||, floor), at negative
    curvature or at the boundary (then on it). Returns p, the predicted
    decrease m(0) - m(p) and ||p||. The norms ||p||^2, p.d and ||d||^2 follow
    the CG recurrences (p_k is orthogonal to r_k and d_{k-1} to r_k):
    ||p + a d||^2 = pp + 2 a pd + a^2 dd, pd' = beta (pd + a dd),
    dd' = r'.r' + beta^2 dd. Vectors are updated in place.
    """
    p = np.zeros_like(grad)
    r = grad.copy()
    d = -r
    rr = float(np.vdot(r, r))
    tol2 = max(eta * np.sqrt(rr), floor) ** 2
    pp = pd = 0.0
    dd = rr
    radius2 = radius * radius
    Hd = None
    tau = None
    for _ in range(grad.size + 1):
        Hd = hv(d)
        curv = float(np.vdot(d, Hd))
        if curv > 0:
            alpha = rr / curv
            pp_next = pp + 2.0 * alpha * pd + alpha * alpha * dd
        if curv <= 0 or pp_next >= radius2:
            tau = (-pd + np.sqrt(max(pd * pd - dd * (pp - radius2), 0.0))) / dd
            p += tau * d
            break
        p += alpha * d
        Hd *= alpha
        r += Hd
        rr_new = float(np.vdot(r, r))
        if rr_new <= tol2:
            break
        beta = rr_new / rr
        pd = beta * (pd + alpha * dd)
        dd = rr_new + beta * beta * dd
        pp = pp_next
        rr = rr_new
        d *= beta
        d -= r
    # H p = r - grad (r = grad + H p along CG), plus the boundary step's share.
    Hp = r - grad
    if tau is not None:
        Hp += tau * Hd
    pred = -(float(np.vdot(grad, p)) + 0.5 * float(np.vdot(p, Hp)))
    return p, pred, float(np.sqrt(float(np.vdot(p, p))))


def _steihaug_prec(hv, grad: Array, radius: float, eta: float, solve, floor: float):
    """:func:`_steihaug_plain` with a preconditioner M given by its ``solve`` (z = M^-1 r) only.

    The trust region is ||p||_M <= radius; the M-norms follow the
    preconditioned CG recurrences (Steihaug 1983; Conn, Gould and Toint,
    Trust-Region Methods, 7.5.1): with z = M^-1 r, d'Md' = r'z' + beta^2 dMd,
    pMd' = beta (pMd + alpha dMd), so M itself is never applied. CG stops
    at a residual (Euclidean) of max(eta ||grad||, floor).
    """
    p = np.zeros_like(grad)
    r = grad.copy()
    z = solve(r)
    d = -z
    rz = float(np.vdot(r, z))
    tol2 = max(eta * np.sqrt(float(np.vdot(r, r))), floor) ** 2
    pp = pd = 0.0
    dd = rz
    radius2 = radius * radius
    Hd = None
    tau = None
    for _ in range(grad.size + 1):
        Hd = hv(d)
        curv = float(np.vdot(d, Hd))
        if curv > 0:
            alpha = rz / curv
            pp_next = pp + 2.0 * alpha * pd + alpha * alpha * dd
        if curv <= 0 or pp_next >= radius2:
            tau = (-pd + np.sqrt(max(pd * pd - dd * (pp - radius2), 0.0))) / dd
            p += tau * d
            pp = radius2
            break
        p += alpha * d
        r += alpha * Hd
        pp = pp_next
        if float(np.vdot(r, r)) <= tol2:
            break
        z = solve(r)
        rz_new = float(np.vdot(r, z))
        beta = rz_new / rz
        pd = beta * (pd + alpha * dd)
        dd = rz_new + beta * beta * dd
        rz = rz_new
        d *= beta
        d -= z
    # H p = r - grad (r = grad + H p along CG), plus the boundary step's share.
    Hp = r - grad
    if tau is not None:
        Hp = Hp + tau * Hd
    pred = -(float(np.vdot(grad, p)) + 0.5 * float(np.vdot(p, Hp)))
    return p, pred, float(np.sqrt(max(pp, 0.0)))


def _near_any(g: Array, others: list[Array], rel: float = 1e-8) -> bool:
    """Whether g equals one of ``others`` up to ``rel`` (relative Frobenius distance)."""
    scale = np.linalg.norm(g)
    return any(np.linalg.norm(g - h) <= rel * scale for h in others)


def _same_basin(g: Array, value: float, ref_value: float, ref_g: Array) -> bool:
    """Whether a run at (g, value) has reached the converged local minimum ref_g.

    Within ``SAME_BASIN`` relative distance of a converged minimum and not
    below its value, Newton can only converge to that minimum (the minima
    found are strict: the Hessian there is positive definite), so refining
    further would repeat work already done.
    """
    return value >= ref_value and bool(
        np.linalg.norm(g - ref_g) <= SAME_BASIN * np.linalg.norm(ref_g)
    )


def _joined(block: MapBlock, g: Array, value: float, ref_g: Array, samples: int = 7) -> bool:
    """Whether phi stays at or below ``value`` on a path from g to a refined minimum.

    With the polar decomposition g^-1 ref_g = R P (R orthogonal, P SPD), the
    path is g C(s) P^s, 0 < s < 1, where C(s) = (I - s A / 2)^-1 (I + s A / 2)
    is the Cayley curve of rotations from I to R (A = 2 (R - I)(R + I)^-1 is
    skew): it follows the soft, rotational valleys of phi, which a straight
    segment would cut across. ``samples`` interior points are checked.
    Joined this way, g and ref_g lie in one basin of phi at the level
    ``value``, and a descent from g is taken to end at ref_g (screened starts
    of one valley often lie far apart along it, where a distance test
    cannot tell). False when there is no such path (R has the eigenvalue
    -1, e.g. det g and det ref_g differ in sign).
    """
    d = g.shape[0]
    eye = np.eye(d)
    with np.errstate(all="ignore"):
        try:
            U, sv, Vt = np.linalg.svd(np.linalg.solve(g, ref_g))
            R = U @ Vt
            A = 2.0 * np.linalg.solve((R + eye).T, (R - eye).T).T
        except np.linalg.LinAlgError:
            return False
        if not np.isfinite(A).all() or np.abs(A).max() > 1e8:
            return False
        # Round-off of phi (a sum of O(1) terms in standardised coordinates).
        tol = 1e-12 * (1.0 + abs(value))
        for s in np.arange(1, samples + 1) / (samples + 1):
            C = np.linalg.solve(eye - 0.5 * s * A, eye + 0.5 * s * A)
            point = g @ C @ ((Vt.T * sv**s) @ Vt)
            if not block.value_grad(point)[0] <= value + tol:
                return False
    return True


def best_map(
    pi: Array,
    nu: Array,
    Om: Array,
    mu: Array,
    S: Array,
    *,
    rng: np.random.Generator,
    n_random: int = 2,
    warm: Array | None = None,
    gtol: float = GTOL,
    max_iter: int = MAX_ITER,
) -> MapResult:
    """argmin f over invertible G for per-class covariances: a multi-start Newton search.

    Starts (all in standardised coordinates): the pooled-covariance closed
    form, the generalised-eigenvector alignments (exact for an equivalent
    pair; several probes and sign patterns, the ``EIGEN_STARTS`` lowest kept),
    the global optimum of the convex SPD restriction (so the result is never
    worse than that restriction), each reflected along its weakest singular
    direction (the other component of GL(d)), ``warm`` if given (a G in the
    caller's coordinates), and ``n_random`` seeded perturbations of the best
    of those, drawn in a covariant eigenvector frame (all starts are
    covariant under per-group affine maps of the model, ``warm`` aside).
    Every distinct start gets a short Newton run to a gradient norm of
    ``SCREEN_GTOL`` (its basin is found by then); the best ``REFINE``
    distinct basins are refined to ``gtol`` (a later one only if it can
    plausibly win, and it stops once it reaches an earlier minimum); the
    best is kept, and it is never worse than the SPD optimum.
    """
    block = MapBlock(pi, nu, Om, mu, S)
    d = block.d
    eigen = block.eigen_starts()
    first = [eigen[0], block.pooled_start()]
    if warm is not None:
        first.insert(0, block.to_standard(warm))
    for g0 in first:
        # An (almost) equivalent pair is solved exactly by the eigenvector
        # alignment; KL >= 0, so a start at ~0 is a global minimum.
        value, grad = block.value_grad(g0)
        if value <= ZERO_KL and grad is not None and np.linalg.norm(grad) <= gtol:
            G, t = block.to_original(g0)
            gnorm = float(np.linalg.norm(grad))
            return MapResult(G, t, value, gnorm, True, 0, 1, [value])
    # The covariant eigenvector starts with the lowest f join the others
    # (distinct ones only: for K = 2 every probe pencil has the same eigenvectors).
    eigen_values = np.array([block.value_grad(g)[0] for g in eigen[1:]])
    starts = list(first)
    for k in np.argsort(eigen_values):
        if len(starts) >= len(first) + EIGEN_STARTS:
            break
        if not _near_any(eigen[1 + k], starts):
            starts.append(eigen[1 + k])
    spd, spd_value = block.spd_start(max_iter)
    starts.append(spd)
    for g in [*first, spd]:
        U, s, Vt = np.linalg.svd(g)
        starts.append((U * np.r_[s[:-1], -s[-1]]) @ Vt)
    values = [block.value_grad(g)[0] for g in starts]
    base = starts[int(np.argmin(values))]
    # Random perturbations drawn in the covariant eigenvector frame, so that
    # per-group affine reparametrisations of the model get the same starts.
    Fu, Fv = block.frame
    for _ in range(n_random):
        starts.append(base + 0.5 * Fu @ rng.standard_normal((d, d)) @ Fv.T / np.sqrt(d))
    # Phase 1: a short Newton run from every start, to a loose tolerance (the
    # basin is found by then); the KL is >= 0, so a start that reaches ~0 is
    # a global minimum and ends the search.
    runs = []
    total_it = 0
    for g0 in starts:
        g, value, gnorm, nit = block.newton(
            g0, SCREEN_ITER, max(gtol, SCREEN_GTOL), precondition=SCREEN_PRECOND
        )
        total_it += nit
        runs.append((value, gnorm, g))
        if value <= ZERO_KL:
            break
    # Phase 2: the best distinct local minima are refined to convergence. A
    # run screened next to a better one is the same basin; a later run that
    # enters the neighbourhood of a refined minimum (without being below it)
    # would only converge to that same minimum: it stops. A later run whose
    # screened value is above the refined minimum by much more than the first
    # refinement gained (10x, plus its own squared gradient norm: the decrease
    # still possible near a minimum with O(1) curvature) is not refined.
    runs.sort(key=lambda run: run[0])
    distinct: list[tuple[float, float, Array]] = []
    for run in runs:
        if not _near_any(run[2], [other[2] for other in distinct], SAME_BASIN):
            distinct.append(run)
    refined: list[tuple[float, float, Array]] = []
    gain = 0.0
    for value, gnorm, g in distinct[:REFINE]:
        minima = [(v, h) for v, gn, h in refined if gn <= gtol]
        if minima:
            best_value = min(v for v, _ in minima)
            if value - best_value > 10.0 * gain + gnorm**2:
                continue
            if any(_same_basin(g, value, *run) for run in minima):
                continue
            if any(_joined(block, g, value, h) for _, h in minima):
                continue
        if gnorm > gtol:

            def stop(x: Array, f: float, gn: float, minima=minima) -> bool:
                return any(_same_basin(x, f, *run) for run in minima)

            screened = value
            g, value, gnorm, nit = block.newton(g, max_iter, gtol, stop=stop)
            total_it += nit
            if not refined:
                gain = screened - value
        refined.append((value, gnorm, g))
    value, gnorm, g = min(refined, key=lambda run: (run[0], run[1]))
    if value > spd_value:
        # Cannot happen (the SPD optimum is a start and Newton only descends);
        # guard against round-off all the same.
        g, value = spd, spd_value
        gnorm = float(np.linalg.norm(block.value_grad(g)[1]))
    G, t = block.to_original(g)
    return MapResult(
        G=G,
        t=t,
        value=value,
        grad_norm=gnorm,
        converged=bool(gnorm <= gtol),
        iterations=total_it,
        starts=len(runs),
        start_values=[run[0] for run in runs],
        products=block.products,
    )
