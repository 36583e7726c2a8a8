"""The compiled Lloyd step of K-means (imports numba: load lazily;
:func:`dask_em.families.kmeans.hard_stats` calls it, :mod:`dask_em.compiled` says when).

numpy's kernel (:func:`~dask_em.families.kmeans.hard_stats`) takes a slab's distances
in one GEMM (K, n), their minimum, the (K, n) indicator of each row's nearest centre
and three more GEMMs with it: about eight passes over (K, n) and (n, D) arrays, and
GEMMs whose short dimension K keeps BLAS far from its peak. :func:`lloyd_stats` does
the same per tile of rows small enough for the L1 cache: the rows transposed into the
tile, every squared distance ``sum_d (x_d - c_kd)**2`` (taken from the differences,
not expanded: no cancellation, never below 0) in loops along the tile's rows (so LLVM
vectorises them), the nearest and second-nearest centre of each row, then each row's
terms added to its centre's sums in row order. It computes in float64 whatever the
data's dtype.

The sums of a cluster are taken in the order of its rows, one row after another:
within a block, the same partition gives the same sums, bit for bit, as strict
convergence needs (:class:`dask_em.estimators.kmeans.CentreShift`).
"""

import numpy as np

from dask_em._exp_numba import compiled, tile_rows

# reassoc lets LLVM vectorise the distances' sums over the features (their order is
# fixed by the code, the same in every run); the clusters' sums are not reordered
@compiled(fastmath={"contract", "reassoc", "nsz"})
def lloyd_stats(X, w, centers, ref, v, tile, labels, best, second, sv, nk, s1, s2, sig):  # pragma: no cover - compiled
    """Assign every row of a slab to its nearest centre and add its terms to the
    centre's sums, in place; returns the largest ``|x - ref|**2`` of the slab (the
    scale of the distances' rounding, for :mod:`~dask_em.families.kmeans_region`).

    Parameters
    ----------
    X : ndarray (n, D), float64 or float32, C-contiguous
        Finite rows.
    w : ndarray (n,) float64, or (0,) for no sample weights
    centers : ndarray (K, D) float64
    ref : ndarray (D,) float64
        The block's reference point: ``sig`` sums ``(x - ref) . v``.
    v : ndarray (D,) float64
        The signature vector.
    tile : int
        Rows per tile (:func:`dask_em._exp_numba.tile_rows`).
    labels : ndarray (n,) int64
        Out: each row's nearest centre (the first of equally near ones).
    best, second : ndarray (n,) float64
        Out: the squared distance to the nearest and to the second-nearest centre
        (``inf`` for K = 1).
    sv : ndarray (n,) float64
        Out: ``(x - ref) . v``. ``second`` and ``sv`` may both be of size 0: then
        neither is written and the largest ``|x - ref|**2`` is not computed (0 returned).
    nk, s2, sig : ndarray (K,) float64
        In and out: each cluster's (weighted) row count, sum of squared distances to
        its centre, and sum of ``sv``.
    s1 : ndarray (K, D) float64
        In and out: each cluster's (weighted) sum of ``x - c_k``.
    """
    n, D = X.shape
    K = centers.shape[0]
    weighted = w.shape[0] == n
    region = second.shape[0] == n
    t = np.empty((D, tile))
    acc = np.empty(tile)
    near = np.empty(tile)
    next_near = np.empty(tile)
    lab = np.empty(tile)  # float: the nearest centre's choice then vectorises with the distances'
    span = np.empty(tile)
    largest = 0.0
    D4 = D - D % 4
    for start in range(0, n, tile):
        m = min(tile, n - start)
        for i in range(m):
            for d in range(D):
                t[d, i] = X[start + i, d]
        for i in range(m):
            near[i] = np.inf
            next_near[i] = np.inf
            lab[i] = 0.0
        for k in range(K):
            for i in range(m):
                acc[i] = 0.0
            for d in range(0, D4, 4):  # four features a sweep: a quarter of acc's loads and stores
                c0, c1, c2, c3 = centers[k, d], centers[k, d + 1], centers[k, d + 2], centers[k, d + 3]
                t0, t1, t2, t3 = t[d], t[d + 1], t[d + 2], t[d + 3]
                for i in range(m):
                    e0, e1, e2, e3 = t0[i] - c0, t1[i] - c1, t2[i] - c2, t3[i] - c3
                    acc[i] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)
            for d in range(D4, D):
                c = centers[k, d]
                td = t[d]
                for i in range(m):
                    e = td[i] - c
                    acc[i] += e * e
            fk = float(k)
            for i in range(m):  # strictly nearer: the first of equally near centres stays
                a, b = acc[i], near[i]
                next_near[i] = min(next_near[i], max(a, b))
                lab[i] = fk if a < b else lab[i]
                near[i] = min(a, b)
        for i in range(m):
            acc[i] = 0.0
            span[i] = 0.0
        for d in range(D):
            r, vd = ref[d], v[d]
            td = t[d]
            if region:
                for i in range(m):
                    e = td[i] - r
                    acc[i] += e * vd
                    span[i] += e * e
            else:
                for i in range(m):
                    acc[i] += (td[i] - r) * vd
        for i in range(m):
            row = start + i
            k = int(lab[i])
            labels[row], best[row] = k, near[i]
            if region:
                second[row], sv[row] = next_near[i], acc[i]
                largest = max(largest, span[i])
            wi = w[row] if weighted else 1.0
            nk[k] += wi
            s2[k] += wi * near[i]
            sig[k] += wi * acc[i]
            s1k, ck, x = s1[k], centers[k], X[row]
            for d in range(D):
                s1k[d] += wi * (x[d] - ck[d])
    return largest


def check():
    """Run the kernel once on a few values (compiling it, or loading numba's cache), so
    that a numba that cannot compile it fails here (see :mod:`dask_em.compiled`)."""
    X = np.array([[0.0], [1.0], [3.0]])
    centers = np.array([[0.0], [2.0]])
    out = [np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros(3), np.zeros(3)]
    sums = [np.zeros(2), np.zeros((2, 1)), np.zeros(2), np.zeros(2)]
    lloyd_stats(X, np.empty(0), centers, np.zeros(1), np.ones(1), tile_rows(1), *out, *sums)
    if out[0].tolist() != [0, 0, 1] or sums[0].tolist() != [2.0, 1.0] or sums[2].tolist() != [1.0, 1.0]:
        raise RuntimeError(f"the compiled Lloyd step assigned {out[0]} with counts {sums[0]}, not [0, 0, 1], [2, 1]")
