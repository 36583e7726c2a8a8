"""The compiled E-step of diagonal, spherical and full-covariance Gaussian mixtures
(imports numba: load lazily; :func:`dask_em.families.gaussian.fused_stats` calls it,
:mod:`dask_em.compiled` says when).

numpy's kernel (:func:`~dask_em.families.gaussian.log_prob`, the engine's
responsibilities, :func:`~dask_em.families.gaussian.suff_stats`) makes about ten
passes over (n, K) and (n, 2D + 1) arrays of a slab of 8,192 rows, each from L2 or
memory, and GEMMs whose short dimension (K, or D + 1) keeps BLAS far from its peak.
:func:`diag_stats` does the same arithmetic per tile of rows small enough for the L1
cache, every loop running along the tile's rows (so LLVM vectorises them): the
shifted rows ``t = x - ref`` transposed into the tile, the log-densities
``sum_d (a_kd t_d + b_kd) t_d + c_k``, the responsibilities with dask-em's own
``exp`` (:func:`dask_em._exp_numba.exp_rows`), and the weighted sums of ``t`` and
``t**2``. :func:`full_stats` whitens the tile's rows with each component's Cholesky
factor instead (the whitened rows stay in L2 for the sums of their squares), the
least work a full-covariance E-step needs: ``2 K D^2`` flops a row. Both compute in
float64 whatever the data's dtype. Measured on an Intel Xeon (AVX-512, one thread;
benchmarks/README.md), per row of a block for D=16, K=8: diag 78-89 against numpy's
139-161 ns (the loop alone: 60-70); full 213-282 against 573-697 ns.
"""

import math

import numba
import numpy as np

from dask_em._exp_numba import compiled, exp_rows

#: Values of one tile: its shifted rows, (D, rows), stay in the L1 cache (48 KiB on the
#: Xeon measured: tiles of 128 to 256 rows of D=16 ran as fast, 384 slower).
TILE_VALUES = 4096


def tile_rows(n_features: int) -> int:
    """Rows per tile for ``n_features`` columns: 32 to 256."""
    return int(min(256, max(32, TILE_VALUES // max(n_features, 1))))


@numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract", "reassoc", "nsz"})
def _responsibilities(lp, groups, K, start, m, w, weighted, floor, top, scale, bits, red, saved, dot, entropy, nk, ll,
                      rlr):  # pragma: no cover - compiled
    """A tile's log-densities ``lp[:, :m]`` (``groups`` mixtures of K components, log
    weights included) become the rows' responsibilities times their weights, in place;
    adds their sums to ``nk``, the rows' log-likelihoods to ``ll`` and the entropy terms
    to ``rlr`` (see :func:`diag_stats`). Inlined into the kernels below."""
    for g in range(groups):
        first = g * K
        exp_rows(lp, first, K, 0, m, floor, top, scale, bits, red, saved, dot)
        total = 0.0
        logs = 0.0  # sum_i w_i log(scale_i)
        if weighted or K >= 2**31:
            for i in range(m):
                wi = w[start + i] if weighted else 1.0
                log_scale = math.log(scale[i]) * wi
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
                scale[i] = 1.0 / scale[i]
        total += logs
        if entropy:  # sum_k r_k log r_k = sum_k r_k d_k - log(scale), r_k = exp(d_k) / scale; times w
            entropy_sum = 0.0
            for i in range(m):
                entropy_sum += dot[i] * scale[i]
            rlr[g] += entropy_sum - logs
        ll[g] += total
        for k in range(first, first + K):
            row = lp[k]
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
        Rows per tile (:func:`tile_rows`).
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
    saved = np.empty(tile)
    dot = np.zeros(tile if entropy else 0)  # empty: exp_rows skips the entropy sums
    lp = np.empty((KG, tile))
    top = np.empty(tile)
    scale = np.empty(tile)
    bits = np.empty(tile)
    red = np.empty(tile)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        for i in range(m):
            for d in range(D):
                t[d, i] = X[start + i, d] - ref[d]
        for k in range(KG):
            row = lp[k]
            ck = c[k]
            for i in range(m):
                row[i] = ck
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
    X : ndarray (n, D), float64, C-contiguous
        Finite rows.
    w : ndarray (n,) float64, or (0,) for no sample weights
    ref : ndarray (D,) float64
        The shift of the rows.
    PT : ndarray (G * K, D, D) float64
        ``PT[k, j, l] = P_k[l, j]``, the precisions' Cholesky factors transposed (lower
        triangular).
    f : ndarray (G * K, D) float64
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
    t = np.empty((D, tile))
    y = np.empty((KG, D, tile))
    ry = np.empty(tile)
    ry2 = np.empty(tile)
    saved = np.empty(tile)
    dot = np.zeros(tile if entropy else 0)
    lp = np.empty((KG, tile))
    top = np.empty(tile)
    scale = np.empty(tile)
    bits = np.empty(tile)
    red = np.empty(tile)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        for i in range(m):
            for d in range(D):
                t[d, i] = X[start + i, d] - ref[d]
        for k in range(KG):
            row = lp[k]
            ck = c[k]
            for i in range(m):
                row[i] = ck
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
                B4 = a + (D - a) - (D - a) % 4
                for b in range(a, B4, 4):
                    y0, y1, y2, y3 = y[k, b], y[k, b + 1], y[k, b + 2], y[k, b + 3]
                    q0 = q1 = q2 = q3 = 0.0
                    u0 = u1 = u2 = u3 = 0.0
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
                    q0 = u0 = 0.0
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
                    total = 0.0
                    for i in range(m):
                        total += ry[i] * yb[i]
                    W[k, a, b] += total


def check():
    """Run the kernel once on a few values (compiling it, or loading numba's cache), so
    that a numba that cannot compile it fails here (see :mod:`dask_em.compiled`)."""
    X = np.array([[0.0], [1.0]])
    sums = [np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    A, B, c = np.full((2, 1), -0.5), np.array([[0.0], [1.0]]), np.array([-0.5, -1.0])
    diag_stats(X, np.empty(0), np.zeros(1), A, B, c, 1, -354.0, tile_rows(1), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled E-step's responsibilities do not sum to 1 per row: {sums[2]}")
    sums = [np.zeros((2, 1, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    full_stats(X, np.empty(0), np.zeros(1), np.ones((2, 1, 1)), np.array([[0.0], [-1.0]]), c, 1, -354.0,
               full_tile_rows(2, 1), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled full-covariance E-step's responsibilities do not sum to 1 per row: {sums[2]}")
