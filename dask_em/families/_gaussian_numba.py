"""The compiled E-step of diagonal and spherical Gaussian mixtures (imports numba: load
lazily; :func:`dask_em.families.gaussian.fused_stats` calls it, :mod:`dask_em.compiled`
says when); that of full covariances is :mod:`dask_em.families._gaussian_full_numba`.

numpy's kernel (:func:`~dask_em.families.gaussian.log_prob`, the engine's
responsibilities, :func:`~dask_em.families.gaussian.suff_stats`) makes about ten
passes over (n, K) and (n, 2D + 1) arrays of a slab of 8,192 rows, each from L2 or
memory, and GEMMs whose short dimension (K, or D + 1) keeps BLAS far from its peak.
:func:`diag_stats` does the same arithmetic per tile of rows small enough for the L1
cache, every loop running along the tile's rows (so LLVM vectorises them): the
shifted rows ``t = x - ref`` transposed into the tile, the log-densities
``sum_d (a_kd t_d + b_kd) t_d + c_k``, the responsibilities with dask-em's own
``exp`` (:func:`dask_em._exp_numba.exp_rows`), and the weighted sums of ``t`` and
``t**2``. It computes in float64 whatever the data's dtype. Measured on an Intel Xeon
(AVX-512, one thread; benchmarks/README.md), per row of a block for D=16, K=8: 78-89
against numpy's 139-161 ns (the loop alone: 60-70).
"""

import math

import numba
import numpy as np

from dask_em._exp_numba import compiled, exp_rows, tile_rows

@numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _scratch(tile, entropy, dt):  # pragma: no cover - compiled
    """The responsibilities' scratch arrays of a tile (:func:`_responsibilities`), in the
    responsibilities' dtype ``dt`` but ``top`` (float64): ``saved``, ``dot`` (empty
    without the entropy sums), ``top``, ``scale``, ``bits``, ``red``."""
    dot = np.zeros(tile if entropy else 0, dt)
    return np.empty(tile, dt), dot, np.empty(tile), np.empty(tile, dt), np.empty(tile, dt), np.empty(tile, dt)


@numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
def _shifted_tile(X, ref, start, m, t, lp, c):  # pragma: no cover - compiled
    """The tile's rows ``X[start : start + m] - ref`` into ``t`` (D, tile), transposed;
    every component's log-density ``lp[k, :m]`` starts at its constant ``c[k]``."""
    D = X.shape[1]
    for i in range(m):
        for d in range(D):
            t[d, i] = X[start + i, d] - ref[d]
    for k in range(lp.shape[0]):
        row = lp[k]
        ck = c[k]
        for i in range(m):
            row[i] = ck


@numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy",
            fastmath={"contract", "reassoc", "nsz"})
def _responsibilities(lp, groups, K, start, m, w, weighted, floor, top, scale, bits, red, saved, dot, entropy, nk, ll,
                      rlr):  # pragma: no cover - compiled
    """A tile's log-densities ``lp[:, :m]`` (``groups`` mixtures of K components, log
    weights included) become the rows' responsibilities times their weights, in place;
    adds their sums to ``nk``, the rows' log-likelihoods to ``ll`` and the entropy terms
    to ``rlr`` (see :func:`diag_stats`). Inlined into :func:`diag_stats` and
    :func:`dask_em.families._gaussian_full_numba.full_stats` (numba caches each kernel
    per source file: after editing this one in a source checkout, delete the other's
    ``__pycache__`` entries too)."""
    for g in range(groups):
        exp_rows(lp, g * K, K, 0, m, floor, top, scale, bits, red, saved, dot)
        _normalised(lp, g, K, start, m, w, weighted, top, scale, dot, entropy, nk, ll, rlr)


@numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy",
            fastmath={"contract", "reassoc", "nsz"})
def _normalised(r, g, K, start, m, w, weighted, top, scale, dot, entropy, nk, ll, rlr):  # pragma: no cover - compiled
    """Mixture ``g``'s floored exps ``r[g * K : (g + 1) * K, :m]`` (float64, or float32:
    :func:`dask_em._exp_numba.exp_rows32`), their column sums ``scale`` and largest
    log-densities ``top``, become responsibilities times the rows' weights, in place;
    adds their sums to ``nk``, the rows' log-likelihoods to ``ll[g]`` and the entropy
    terms to ``rlr[g]`` (``dot``: see :func:`dask_em._exp_numba._exp_rows`). The sums
    are float64 whatever ``r``'s dtype. Inlined into the full-covariance kernels too
    (after editing it in a source checkout, delete their ``__pycache__`` entries, as
    for :func:`_responsibilities`)."""
    first = g * K
    total = 0.0
    logs = 0.0  # sum_i w_i log(scale_i)
    if weighted or K >= 2**31:
        for i in range(m):
            wi = w[start + i] if weighted else 1.0
            log_scale = math.log(float(scale[i])) * wi  # in float64 for float32 sums too
            logs += log_scale
            total += top[i] * wi
            scale[i] = wi / scale[i]
    else:  # one log per 32 rows: each sum is 1 to K, their product below 2**992
        for i in range(m):
            total += top[i]
        for j in range(0, m, 32):
            product = 1.0
            for i in range(j, min(j + 32, m)):
                product *= scale[i]
            logs += math.log(product)
        for i in range(m):
            scale[i] = np.float32(1.0) / scale[i]  # in float32 for float32 sums: 1 is exact in either
    total += logs
    if entropy:  # sum_k r_k log r_k = sum_k r_k d_k - log(scale), r_k = exp(d_k) / scale; times w
        entropy_sum = 0.0
        for i in range(m):
            entropy_sum += dot[i] * scale[i]
        rlr[g] += entropy_sum - logs
    ll[g] += total
    for k in range(first, first + K):
        row = r[k]
        total = 0.0
        for i in range(m):
            row[i] *= scale[i]
            total += row[i]
        nk[k] += total


# reassoc lets LLVM vectorise the sums over a tile's rows (their order changes by
# tile, not between runs); the exp is compiled apart, without it (see exp_rows).
@compiled(fastmath={"contract", "reassoc", "nsz"})
def diag_stats(X, w, ref, A, B, c, groups, floor, tile, s2, s1, nk, ll, rlr):  # pragma: no cover - compiled
    """Add one slab's statistics to ``s2``, ``s1``, ``nk``, ``ll`` (and ``rlr``), in place.

    Parameters
    ----------
    X : ndarray (n, D), float64 or float32, C-contiguous
        Finite rows.
    w : ndarray (n,) float64, or (0,) for no sample weights
    ref : ndarray (D,) float64
        The shift of the rows.
    A, B : ndarray (G * K, D) float64
    c : ndarray (G * K,) float64
        The log-density of component ``k`` at ``x`` is
        ``sum_d (A[k, d] t_d + B[k, d]) t_d + c[k]``, ``t = x - ref``, log weight
        included; ``groups`` mixtures of K components side by side.
    groups : int
    floor : float
        Responsibilities whose log relative to the row's largest is at or below it
        are exactly 0; at least -708.
    tile : int
        Rows per tile (:func:`dask_em._exp_numba.tile_rows`).
    s2, s1 : ndarray (G * K, D) float64
        ``sum_i r_ik t_id**2`` and ``sum_i r_ik t_id``, weighted by ``w``.
    nk : ndarray (G * K,) float64
        ``sum_i r_ik``, weighted.
    ll : ndarray (G,) float64
        Per mixture, the weighted sum of the rows' log-likelihoods.
    rlr : ndarray (G,) float64, or (0,) not to compute it
        Per mixture, ``sum_i w_i sum_k r_ik log r_ik`` (a variational bound's entropy
        term), ``log r_ik`` taken as the log-density's difference from the row's
        normaliser (0 where ``r_ik`` is).
    """
    n, D = X.shape
    KG = A.shape[0]
    K = KG // groups
    weighted = w.shape[0] == n
    entropy = rlr.shape[0] == groups
    t = np.empty((D, tile))
    lp = np.empty((KG, tile))
    saved, dot, top, scale, bits, red = _scratch(tile, entropy, np.float64)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        _shifted_tile(X, ref, start, m, t, lp, c)
        for k in range(KG):
            row = lp[k]
            D4 = D - D % 4
            for d in range(0, D4, 4):  # four features a sweep: a quarter of the row's loads and stores
                a0, a1, a2, a3 = A[k, d], A[k, d + 1], A[k, d + 2], A[k, d + 3]
                b0, b1, b2, b3 = B[k, d], B[k, d + 1], B[k, d + 2], B[k, d + 3]
                t0, t1, t2, t3 = t[d], t[d + 1], t[d + 2], t[d + 3]
                for i in range(m):
                    x0, x1, x2, x3 = t0[i], t1[i], t2[i], t3[i]
                    row[i] += ((a0 * x0 + b0) * x0 + (a1 * x1 + b1) * x1) + ((a2 * x2 + b2) * x2 + (a3 * x3 + b3) * x3)
            for d in range(D4, D):
                a = A[k, d]
                b = B[k, d]
                td = t[d]
                for i in range(m):
                    x = td[i]
                    row[i] += (a * x + b) * x
        _responsibilities(lp, groups, K, start, m, w, weighted, floor, top, scale, bits, red, saved, dot, entropy,
                          nk, ll, rlr)
        for k in range(KG):
            row = lp[k]
            D2 = D - D % 2
            for d in range(0, D2, 2):  # two features a sweep: half the loads of the responsibilities
                t0, t1 = t[d], t[d + 1]
                p1 = p2 = q1 = q2 = 0.0
                for i in range(m):
                    r = row[i]
                    x0, x1 = t0[i], t1[i]
                    rx0, rx1 = r * x0, r * x1
                    p1 += rx0
                    p2 += rx0 * x0
                    q1 += rx1
                    q2 += rx1 * x1
                s1[k, d] += p1
                s2[k, d] += p2
                s1[k, d + 1] += q1
                s2[k, d + 1] += q2
            for d in range(D2, D):
                td = t[d]
                sum1 = 0.0
                sum2 = 0.0
                for i in range(m):
                    rt = row[i] * td[i]
                    sum1 += rt
                    sum2 += rt * td[i]
                s1[k, d] += sum1
                s2[k, d] += sum2


def check():
    """Run the kernel once on a few values (compiling it, or loading numba's cache), so
    that a numba that cannot compile it fails here (see :mod:`dask_em.compiled`)."""
    X = np.array([[0.0], [1.0]])
    sums = [np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    A, B, c = np.full((2, 1), -0.5), np.array([[0.0], [1.0]]), np.array([-0.5, -1.0])
    diag_stats(X, np.empty(0), np.zeros(1), A, B, c, 1, -354.0, tile_rows(1), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled E-step's responsibilities do not sum to 1 per row: {sums[2]}")
