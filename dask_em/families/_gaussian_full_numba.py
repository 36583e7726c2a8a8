"""The compiled E-step of full-covariance Gaussian mixtures (imports numba: load lazily;
:func:`dask_em.families.gaussian.fused_stats` calls it, :mod:`dask_em.compiled` says
when; a module of its own, so that diagonal fits do not compile it).

numpy's kernel (:func:`~dask_em.families.gaussian.log_prob` and
:func:`~dask_em.families.gaussian.suff_stats`) whitens the rows with one GEMM of inner
dimension D + 1 and sums their squares with one syrk per component, both far from
BLAS's peak for small D, around about eight passes over (K, D, n) and (n, K) arrays.
:func:`full_stats` whitens a tile of rows with each component's Cholesky factor,
keeping only the squares' sums, takes the responsibilities as the diagonal kernel
does (:func:`dask_em.families._gaussian_numba._responsibilities`) and sums the rows
about each mean and their outer products in the same loop: the least work a
full-covariance E-step needs, ``2 K D^2`` flops a row (a triangle each). It whitens
and sums each tile in the data's dtype, float64 or float32 (:func:`full_stats32`,
whose responsibilities are float32 too), the sums over tiles in float64. Per row of a
block, one thread (benchmarks/README.md): on an AMD EPYC (Zen 4), D=16 K=8 161-171 ns
(float32 85-87), D=64 K=16 2,980-3,050, about 85% of a square GEMM's rate on one core
(float32 1,580-1,650); on an Intel Xeon
(AVX-512), before the tiles of 384 rows and the sums about the means, D=16 K=8 213-282
against numpy's 573-697 ns.
"""

import numba
import numpy as np

from dask_em._exp_numba import compiled, exp_rows32
from dask_em.families._gaussian_numba import _normalised, _responsibilities, _scratch, _shifted_tile


#: Most bytes of one tile's rows, (D, rows): the shifted rows and those about one
#: mean, two such arrays, stay in the L2 cache.
FULL_TILE_BYTES = 2**19


def full_tile_rows(n_features: int, itemsize: int = 8) -> int:
    """Rows per tile of :func:`full_stats` for ``n_features`` of ``itemsize`` bytes:
    384 (float64) or 768 (float32), or fewer where (D, rows) would exceed
    :data:`FULL_TILE_BYTES`; a multiple of 48, at least 48. Each tile's sums end in
    horizontal additions, which long tiles amortise; a power of two would put the rows
    ``u[b]`` to ``u[b + 3]`` of the scatter's sweeps in the same L1 sets. On an AMD
    EPYC (Zen 4), D=64 K=16 ran at 4,290 ns a row in tiles of 32 rows, 3,020-3,320 in
    tiles of 192 to 384, 5,490 in tiles of 256; float32 rows 3-5% faster in tiles of
    768 than of 384, slower beyond (benchmarks/README.md)."""
    rows = FULL_TILE_BYTES // (max(n_features, 1) * itemsize) // 48 * 48
    return int(min(3072 // itemsize, max(48, rows)))


_INLINE = dict(inline="always", nogil=True, boundscheck=False, error_model="numpy",
               fastmath={"contract", "reassoc", "nsz"})


@numba.njit(**_INLINE)
def _log_densities(t, PT, f, m, y, q, lp, zero):  # pragma: no cover - compiled
    """Subtract ``|y_k|**2 / 2`` from each component's log-densities ``lp[k, :m]``: the
    tile's rows ``t`` (D, tile) whitened, ``y_kj = sum_l P_k[l, j] t_l + f_kj`` (``P_k``
    upper triangular, so ``l <= j``), four ``j`` at a time, in blocks of four ``l``:
    the first block starts them at ``f``, the diagonal one, the last, adds their
    squares to ``|y_k|**2`` (``q``) instead of storing them (``y``: four rows of
    scratch). ``zero``: 0 in the rows' dtype, in which they are whitened."""
    KG, D = f.shape
    D4 = D - D % 4
    for k in range(KG):
        row = lp[k]
        y0, y1, y2, y3 = y[0], y[1], y[2], y[3]
        for i in range(m):
            q[i] = zero
        for j in range(0, D4, 4):  # four outputs by four features a block: 16 FMAs a row
            f0, f1, f2, f3 = f[k, j], f[k, j + 1], f[k, j + 2], f[k, j + 3]
            if j == 0:  # only a diagonal block: the outputs start at f here
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
                if l == j:  # the diagonal block, the last: the outputs' squares go to q, not the outputs
                    for i in range(m):
                        x0, x1, x2, x3 = t0[i], t1[i], t2[i], t3[i]
                        v0 = y0[i] + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                        v1 = y1[i] + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                        v2 = y2[i] + c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                        v3 = y3[i] + d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
                        q[i] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
                elif l == 0:  # the first block: the outputs start at f
                    for i in range(m):
                        x0, x1, x2, x3 = t0[i], t1[i], t2[i], t3[i]
                        y0[i] = f0 + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                        y1[i] = f1 + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                        y2[i] = f2 + c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                        y3[i] = f3 + d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
                else:
                    for i in range(m):
                        x0, x1, x2, x3 = t0[i], t1[i], t2[i], t3[i]
                        y0[i] = y0[i] + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                        y1[i] = y1[i] + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                        y2[i] = y2[i] + c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                        y3[i] = y3[i] + d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
        for j in range(D4, D):  # the last D % 4 outputs, one at a time
            fj = f[k, j]
            for i in range(m):
                y0[i] = fj
            for l in range(j + 1):
                p = PT[k, j, l]
                tl = t[l]
                for i in range(m):
                    y0[i] += p * tl[i]
            for i in range(m):
                q[i] += y0[i] * y0[i]
        for i in range(m):
            row[i] -= 0.5 * q[i]


@numba.njit(**_INLINE)
def _sums_about_means(R, t, u, mr, m, ry, ry2, W, s1, zero):  # pragma: no cover - compiled
    """Per component, the rows about its mean ``u = t - mr_k`` (``u``: scratch like
    ``t``), and, with its responsibilities ``R[k, :m]`` (the rows' dtype), ``sum_i
    r_ik u_i`` added to ``s1`` and the upper triangle of ``sum_i r_ik u_i u_i^T`` (two
    rows by four columns a sweep) to ``W``, both summed over the tile in the rows' dtype.
    ``ry``, ``ry2``: scratch of a tile."""
    KG, D = mr.shape
    for k in range(KG):
        r = R[k]
        for d in range(D):  # the rows about the component's mean, and their sum
            td = t[d]
            ud = u[d]
            md = mr[k, d]
            total = zero  # per tile in the rows' dtype, as W; across tiles in float64
            for i in range(m):
                v = td[i] - md
                ud[i] = v
                total += r[i] * v
            s1[k, d] += total
        D2 = D - D % 2
        for a in range(0, D2, 2):  # two rows and four columns a sweep: 6 loads for 8 sums
            ua0, ua1 = u[a], u[a + 1]
            for i in range(m):
                ry[i] = r[i] * ua0[i]
                ry2[i] = r[i] * ua1[i]
            B4 = D - (D - a) % 4  # columns a.. in sweeps of four, then the rest
            for b in range(a, B4, 4):
                ub0, ub1, ub2, ub3 = u[b], u[b + 1], u[b + 2], u[b + 3]
                q0 = q1 = q2 = q3 = zero
                z0 = z1 = z2 = z3 = zero
                for i in range(m):
                    v = ry[i]
                    v2 = ry2[i]
                    q0 += v * ub0[i]
                    q1 += v * ub1[i]
                    q2 += v * ub2[i]
                    q3 += v * ub3[i]
                    z0 += v2 * ub0[i]
                    z1 += v2 * ub1[i]
                    z2 += v2 * ub2[i]
                    z3 += v2 * ub3[i]
                W[k, a, b] += q0
                W[k, a, b + 1] += q1
                W[k, a, b + 2] += q2
                W[k, a, b + 3] += q3
                W[k, a + 1, b] += z0  # (a + 1, a): below the diagonal, not read
                W[k, a + 1, b + 1] += z1
                W[k, a + 1, b + 2] += z2
                W[k, a + 1, b + 3] += z3
            for b in range(B4, D):
                ub = u[b]
                q0 = z0 = zero
                for i in range(m):
                    q0 += ry[i] * ub[i]
                    z0 += ry2[i] * ub[i]
                W[k, a, b] += q0
                W[k, a + 1, b] += z0
        for a in range(D2, D):
            ua = u[a]
            for i in range(m):
                ry[i] = r[i] * ua[i]
            for b in range(a, D):
                ub = u[b]
                total = zero
                for i in range(m):
                    total += ry[i] * ub[i]
                W[k, a, b] += total



@numba.njit(**_INLINE)
def _sizes(X, w, PT, groups, rlr):  # pragma: no cover - compiled
    """``n``, ``D``, ``G * K``, ``K``, whether the rows are weighted, whether the entropy
    terms are asked for (the arguments of :func:`full_stats`)."""
    n, D = X.shape
    KG = PT.shape[0]
    return n, D, KG, KG // groups, w.shape[0] == n, rlr.shape[0] == groups


@numba.njit(**_INLINE)
def _tile_scratch(D, tile, KG, dt):  # pragma: no cover - compiled
    """``t``, ``u`` (D, tile), ``y`` (4, tile), ``ry``, ``ry2``, ``q`` (tile,) in the
    rows' dtype ``dt``, ``lp`` (KG, tile) float64, and 0 in ``dt``."""
    return (np.empty((D, tile), dt), np.empty((D, tile), dt), np.empty((4, tile), dt), np.empty(tile, dt),
            np.empty(tile, dt), np.empty(tile, dt), np.empty((KG, tile)), np.zeros(1, dt)[0])


@numba.njit(**_INLINE)
def _mirrored(W):  # pragma: no cover - compiled
    """Each ``W[k]``'s lower triangle, from its upper one."""
    for k in range(W.shape[0]):
        for a in range(W.shape[1]):
            for b in range(a + 1, W.shape[1]):
                W[k, b, a] = W[k, a, b]


@compiled(fastmath={"contract", "reassoc", "nsz"})
def full_stats(X, w, ref, PT, f, mr, c, groups, floor, tile, W, s1, nk, ll, rlr):  # pragma: no cover - compiled
    """Add one slab's full-covariance statistics to ``W``, ``s1``, ``nk``, ``ll`` (and
    ``rlr``), in place; float64 rows (float32 ones: :func:`full_stats32`).

    Per tile of rows: the shifted rows ``t = x - ref``, transposed; each component's
    log-density ``c_k - |y_k|**2 / 2``, ``y_k`` the rows whitened with its Cholesky
    factor (:func:`_log_densities`); the responsibilities (as
    :func:`~dask_em.families._gaussian_numba.diag_stats`); then, per component, the
    sums of the rows about its mean and of their outer products
    (:func:`_sums_about_means`). The sums come out about each mean, as
    :func:`~dask_em.families.gaussian.suff_stats` gives them, with no transform back
    from the whitened coordinates.

    Parameters
    ----------
    X : ndarray (n, D) float64, C-contiguous
        Finite rows.
    w : ndarray (n,) float64, or (0,) for no sample weights
    ref : ndarray (D,) float64
        The shift of the rows.
    PT : ndarray (G * K, D, D) float64
        ``PT[k, j, l] = P_k[l, j]``, the precisions' Cholesky factors transposed (lower
        triangular, exact zeros above the diagonal).
    f : ndarray (G * K, D) float64
        ``-mr_k P_k``.
    mr : ndarray (G * K, D) float64
        The means less ``ref``.
    c : ndarray (G * K,) float64
        Each component's log-density constant, log weight included.
    groups : int
    floor : float
        As for :func:`~dask_em.families._gaussian_numba.diag_stats`.
    tile : int
        Rows per tile (:func:`full_tile_rows`).
    W : ndarray (G * K, D, D) float64
        ``sum_i r_ik u_ik u_ik^T``, weighted by ``w``: added to the upper triangle,
        which is then copied to the lower one.
    s1 : ndarray (G * K, D) float64
        ``sum_i r_ik u_ik``, weighted.
    nk, ll, rlr
        As for :func:`~dask_em.families._gaussian_numba.diag_stats`.
    """
    n, D, KG, K, weighted, entropy = _sizes(X, w, PT, groups, rlr)
    t, u, y, ry, ry2, q, lp, zero = _tile_scratch(D, tile, KG, X.dtype)
    saved, dot, top, scale, bits, red = _scratch(tile, entropy, np.float64)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        _shifted_tile(X, ref, start, m, t, lp, c)
        _log_densities(t, PT, f, m, y, q, lp, zero)
        _responsibilities(lp, groups, K, start, m, w, weighted, floor, top, scale, bits, red, saved, dot, entropy,
                          nk, ll, rlr)
        _sums_about_means(lp, t, u, mr, m, ry, ry2, W, s1, zero)
    _mirrored(W)


@compiled(fastmath={"contract", "reassoc", "nsz"})
def full_stats32(X, w, ref, PT, f, mr, d, c, groups, floor, tile, W, s1, nk, ll, rlr):  # pragma: no cover - compiled
    """:func:`full_stats` for float32 rows (``X``, ``ref``, ``PT``, ``f``, ``mr``
    float32). ``mr`` holds the means rounded to float32, and ``d`` (G * K, D) float64
    that rounding, ``mr - (means - ref)``: the sums, taken about the rounded means, are
    moved exactly to the float64 ones before they are added to ``W`` and ``s1``
    (``W += s1 d^T + d s1^T + nk d d^T``, then ``s1 += nk d``). Left about the rounded
    means, a mean 4e4 from the rows' shift moved by up to 3e-4 of its standard
    deviation every iteration, with no fixed point.

    The responsibilities are float32 too: the log-densities float64, less
    the row's largest, rounded to float32 and exponentiated in float32
    (:func:`dask_em._exp_numba.exp_rows32`; ``floor`` at least
    :data:`dask_em.compiled.LOWEST_FLOOR_32`), normalised in float32 and summed in
    float64. Their error, below 2e-7 of each plus 2.2e-8 (the difference's rounding,
    ``|d| exp(d) 6e-8``), is below that of the log-densities themselves (the whitened
    rows' squares rounded to float32, ``6e-8 |y_k|**2``), and they enter the sums in
    float32 as before. With float64 responsibilities the loop took 92-94 ns a row at
    D=16 K=8, 87-89 with these, 85-87 with ``s1`` summed per tile in float32 too (AMD
    EPYC, Zen 4)."""
    n, D, KG, K, weighted, entropy = _sizes(X, w, PT, groups, rlr)
    t, u, y, ry, ry2, q, lp, zero = _tile_scratch(D, tile, KG, X.dtype)
    sums, firsts, counts = np.zeros((KG, D, D)), np.zeros((KG, D)), np.zeros(KG)  # this call's, to be moved
    R = np.empty((KG, tile), X.dtype)
    saved, dot, top, total, bits, red = _scratch(tile, entropy, X.dtype)
    for start in range(0, n, tile):
        m = min(tile, n - start)
        _shifted_tile(X, ref, start, m, t, lp, c)
        _log_densities(t, PT, f, m, y, q, lp, zero)
        for g in range(groups):
            exp_rows32(lp, R, g * K, K, m, floor, top, total, bits, red, saved, dot)
            _normalised(R, g, K, start, m, w, weighted, top, total, dot, entropy, counts, ll, rlr)
        _sums_about_means(R, t, u, mr, m, ry, ry2, sums, firsts, zero)
    _mirrored(sums)
    for k in range(KG):  # about the float64 means
        for a in range(D):
            for b in range(D):
                W[k, a, b] += sums[k, a, b] + (firsts[k, a] * d[k, b] + d[k, a] * firsts[k, b]
                                                + counts[k] * d[k, a] * d[k, b])
        for a in range(D):
            s1[k, a] += firsts[k, a] + counts[k] * d[k, a]
        nk[k] += counts[k]


def check():
    """Run the kernel once on a few values (compiling it, or loading numba's cache), so
    that a numba that cannot compile it fails here (see :mod:`dask_em.compiled`)."""
    X = np.array([[0.0], [1.0]])
    sums = [np.zeros((2, 1, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    mr = np.array([[0.0], [1.0]])
    full_stats(X, np.empty(0), np.zeros(1), np.ones((2, 1, 1)), -mr, mr, np.array([-0.5, -1.0]), 1, -354.0,
               full_tile_rows(1, X.itemsize), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled full-covariance E-step's responsibilities do not sum to 1 per row: {sums[2]}")
    single = [np.float32(v) for v in (X, np.zeros(1), np.ones((2, 1, 1)), -mr, mr)]
    sums = [np.zeros((2, 1, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros(1), np.zeros(1)]
    full_stats32(*single[:1], np.empty(0), *single[1:], np.zeros((2, 1)), np.array([-0.5, -1.0]), 1, -43.0,
                 full_tile_rows(1, 4), *sums)
    if not np.isclose(sums[2].sum(), 2.0):
        raise RuntimeError(f"the compiled float32 full-covariance E-step's responsibilities do not sum to 1 per row: "
                           f"{sums[2]}")
