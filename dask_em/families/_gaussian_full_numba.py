"""The compiled E-step of full-covariance Gaussian mixtures (imports numba: load lazily;
:func:`dask_em.families.gaussian.fused_stats` calls it, :mod:`dask_em.compiled` says
when; a module of its own, so that diagonal fits do not compile it).

numpy's kernel (:func:`~dask_em.families.gaussian.log_prob` and
:func:`~dask_em.families.gaussian.suff_stats`) whitens the rows with one GEMM of inner
dimension D + 1 and sums their squares with one syrk per component, both far from
BLAS's peak for small D, around about eight passes over (K, D, n) and (n, K) arrays.
:func:`full_stats` whitens a tile of rows with each component's Cholesky factor (the
whitened rows stay in L2), takes the responsibilities as the diagonal kernel does
(:func:`dask_em.families._gaussian_numba._responsibilities`) and sums the whitened
rows' squares in the same loop: the least work a full-covariance E-step needs, ``2 K
D^2`` flops a row. It whitens and sums each tile in the data's dtype (float32 or
float64), the responsibilities and the sums over tiles in float64. Measured on an
Intel Xeon (AVX-512, one thread; benchmarks/README.md), per row of a block for D=16,
K=8: 213-282 against numpy's 573-697 ns (float32: 174).
"""

import numpy as np

from dask_em._exp_numba import compiled
from dask_em.families._gaussian_numba import _responsibilities, _scratch, _shifted_tile


#: Whitened rows of one tile, (G * K, D, rows), values: they stay in the L2 cache.
FULL_TILE_VALUES = 32768


def full_tile_rows(n_components: int, n_features: int) -> int:
    """Rows per tile of :func:`full_stats` for ``n_components`` (all mixtures) and
    ``n_features``: 16 to 256."""
    return int(min(256, max(16, FULL_TILE_VALUES // max(n_components * n_features, 1))))


@compiled(fastmath={"contract", "reassoc", "nsz"})
def full_stats(X, w, ref, PT, f, c, groups, floor, tile, W, s1, nk, ll, rlr):  # pragma: no cover - compiled
    """Add one slab's full-covariance statistics to ``W``, ``s1``, ``nk``, ``ll`` (and
    ``rlr``), in place.

    Per tile of rows: the shifted rows ``t = x - ref``, transposed; every component's
    whitened rows ``y_kj = sum_l P_k[l, j] t_l + f_kj`` (``P_k`` upper triangular, so
    ``l <= j``; four ``l`` a sweep) and log-density ``c_k - |y_k|**2 / 2``; the
    responsibilities (as :func:`diag_stats`); then ``sum_i r_ik t_i`` and the upper
    triangle of ``sum_i r_ik y_ik y_ik^T``, four columns a sweep.

    Parameters
    ----------
    X : ndarray (n, D), float64 or float32, C-contiguous
        Finite rows. Each tile is whitened and summed in this dtype.
    w : ndarray (n,) float64, or (0,) for no sample weights
    ref : ndarray (D,), X's dtype
        The shift of the rows.
    PT : ndarray (G * K, D, D), X's dtype
        ``PT[k, j, l] = P_k[l, j]``, the precisions' Cholesky factors transposed (lower
        triangular, exact zeros above the diagonal).
    f : ndarray (G * K, D), X's dtype
        ``-(mu_k - ref) P_k``.
    c : ndarray (G * K,) float64
        Each component's log-density constant, log weight included.
    groups : int
    floor : float
        As for :func:`diag_stats`.
    tile : int
        Rows per tile (:func:`full_tile_rows`).
    W : ndarray (G * K, D, D) float64
        ``sum_i r_ik y_ik y_ik^T``, weighted by ``w``: the upper triangle only.
    s1 : ndarray (G * K, D) float64
        ``sum_i r_ik t_i``, weighted.
    nk, ll, rlr
        As for :func:`diag_stats`.
    """
    n, D = X.shape
    KG = PT.shape[0]
    K = KG // groups
    weighted = w.shape[0] == n
    entropy = rlr.shape[0] == groups
    dt = X.dtype  # the tile's rows, whitened rows and their sums per tile: in the data's dtype
    zero = np.zeros(1, dt)[0]
    t = np.empty((D, tile), dt)
    y = np.empty((KG, D, tile), dt)
    ry = np.empty(tile, dt)
    ry2 = np.empty(tile, dt)
    lp = np.empty((KG, tile))
    saved, dot, top, scale, bits, red = _scratch(tile, entropy)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        _shifted_tile(X, ref, start, m, t, lp, c)
        for k in range(KG):
            row = lp[k]
            D4 = D - D % 4
            for j in range(0, D4, 4):  # four outputs by four features a sweep: 8 loads, 4 stores, 16 FMAs
                y0, y1, y2, y3 = y[k, j], y[k, j + 1], y[k, j + 2], y[k, j + 3]
                f0, f1, f2, f3 = f[k, j], f[k, j + 1], f[k, j + 2], f[k, j + 3]
                for i in range(m):
                    y0[i] = f0
                    y1[i] = f1
                    y2[i] = f2
                    y3[i] = f3
                for l in range(0, j + 4, 4):  # P_k[l, j] is 0 for l > j: PT's zeros above its diagonal
                    t0, t1, t2, t3 = t[l], t[l + 1], t[l + 2], t[l + 3]
                    a0, a1, a2, a3 = PT[k, j, l], PT[k, j, l + 1], PT[k, j, l + 2], PT[k, j, l + 3]
                    b0, b1, b2, b3 = PT[k, j + 1, l], PT[k, j + 1, l + 1], PT[k, j + 1, l + 2], PT[k, j + 1, l + 3]
                    c0, c1, c2, c3 = PT[k, j + 2, l], PT[k, j + 2, l + 1], PT[k, j + 2, l + 2], PT[k, j + 2, l + 3]
                    d0, d1, d2, d3 = PT[k, j + 3, l], PT[k, j + 3, l + 1], PT[k, j + 3, l + 2], PT[k, j + 3, l + 3]
                    for i in range(m):
                        x0, x1, x2, x3 = t0[i], t1[i], t2[i], t3[i]
                        y0[i] = y0[i] + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                        y1[i] = y1[i] + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                        y2[i] = y2[i] + c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                        y3[i] = y3[i] + d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
                for i in range(m):
                    row[i] -= 0.5 * ((y0[i] * y0[i] + y1[i] * y1[i]) + (y2[i] * y2[i] + y3[i] * y3[i]))
            for j in range(D4, D):  # the last D % 4 outputs, one at a time
                yj = y[k, j]
                fj = f[k, j]
                for i in range(m):
                    yj[i] = fj
                for l in range(j + 1):
                    p = PT[k, j, l]
                    tl = t[l]
                    for i in range(m):
                        yj[i] += p * tl[i]
                for i in range(m):
                    row[i] -= 0.5 * yj[i] * yj[i]
        _responsibilities(lp, groups, K, start, m, w, weighted, floor, top, scale, bits, red, saved, dot, entropy,
                          nk, ll, rlr)
        for k in range(KG):
            r = lp[k]
            for d in range(D):
                td = t[d]
                total = 0.0
                for i in range(m):
                    total += r[i] * td[i]
                s1[k, d] += total
            D2 = D - D % 2
            for a in range(0, D2, 2):  # two rows and four columns a sweep: 6 loads for 8 sums
                ya0, ya1 = y[k, a], y[k, a + 1]
                for i in range(m):
                    ry[i] = r[i] * ya0[i]
                    ry2[i] = r[i] * ya1[i]
                B4 = D - (D - a) % 4  # columns a.. in sweeps of four, then the rest
                for b in range(a, B4, 4):
                    y0, y1, y2, y3 = y[k, b], y[k, b + 1], y[k, b + 2], y[k, b + 3]
                    q0 = q1 = q2 = q3 = zero
                    u0 = u1 = u2 = u3 = zero
                    for i in range(m):
                        v = ry[i]
                        u = ry2[i]
                        q0 += v * y0[i]
                        q1 += v * y1[i]
                        q2 += v * y2[i]
                        q3 += v * y3[i]
                        u0 += u * y0[i]
                        u1 += u * y1[i]
                        u2 += u * y2[i]
                        u3 += u * y3[i]
                    W[k, a, b] += q0
                    W[k, a, b + 1] += q1
                    W[k, a, b + 2] += q2
                    W[k, a, b + 3] += q3
                    W[k, a + 1, b] += u0  # (a + 1, a): below the diagonal, not read
                    W[k, a + 1, b + 1] += u1
                    W[k, a + 1, b + 2] += u2
                    W[k, a + 1, b + 3] += u3
                for b in range(B4, D):
                    yb = y[k, b]
                    q0 = u0 = zero
                    for i in range(m):
                        q0 += ry[i] * yb[i]
                        u0 += ry2[i] * yb[i]
                    W[k, a, b] += q0
                    W[k, a + 1, b] += u0
            for a in range(D2, D):
                ya = y[k, a]
                for i in range(m):
                    ry[i] = r[i] * ya[i]
                for b in range(a, D):
                    yb = y[k, b]
                    total = zero
                    for i in range(m):
                        total += ry[i] * yb[i]
                    W[k, a, b] += total


def check():
    """Run the kernel once on a few values (compiling it, or loading numba's cache), so
    that a numba that cannot compile it fails here (see :mod:`dask_em.compiled`)."""
    X = np.array([[0.0], [1.0]])
    sums = [np.zeros((2, 1, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    full_stats(X, np.empty(0), np.zeros(1), np.ones((2, 1, 1)), np.array([[0.0], [-1.0]]), np.array([-0.5, -1.0]), 1,
               -354.0, full_tile_rows(2, 1), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled full-covariance E-step's responsibilities do not sum to 1 per row: {sums[2]}")
