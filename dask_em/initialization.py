"""Seeding kernels of the initialisation, in memory (NumPy only).

The initialisation itself (:mod:`dask_em.sample_init`) draws one sample of rows in
one pass and runs every method on it in memory, with these kernels:

``"kmeans"``
    k-means++ on the sample (at most ``max(10_000, 100 K)`` rows of it), then
    Lloyd iterations on the whole sample; weights and component parameters from
    the hard assignment of the sample.
``"k-means++"``
    k-means++ alone, then the assignment.
``"random_from_data"``
    K distinct rows of the sample, then the assignment.
``"random"``
    Random responsibilities on the sample (as scikit-learn's).

One pass in all, whatever the method, ``n_init`` or the number of candidates of a
selection; no pass when every starting parameter is given.
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dask_em.settings import in_memory_threads

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
#: Rows of the sample k-means++ seeds on (at least; 100 K for large K).
KMEANSPP_SAMPLE = 10_000
#: Elements of k-means++'s (candidates, rows) distances computed at once.
_PLUSPLUS_SLAB_ELEMENTS = 2**16
#: Lloyd iterations of the ``"kmeans"`` method on the sample, in memory.
SAMPLE_LLOYD_MAX_ITER = 100
#: Elements of a slab of rows of Lloyd's iterations (D + 1 per row; its (K, rows) work
#: array at most 4 times as many): measured best among slabs of 256 to 8,192 rows on
#: the digits (D=64: 512-1,024 rows), 1e5 x 16 (2,048-4,096) and china.jpg (D=3: 8,192).
_LLOYD_SLAB_ELEMENTS = 2**16


# --------------------------------------------------------------------------- kernels
def centred(points, ref):
    """Rows about a reference point and their squared norms, computed once for every
    assignment of the same rows (:func:`assign`).

    Parameters
    ----------
    points : ndarray of shape (n, D)
    ref : ndarray of shape (D,)
        A point near the rows (their mean, a centre): distances are computed about
        it, so data far from the origin keep their precision.

    Returns
    -------
    pc : ndarray of shape (n, D)
        ``points - ref``.
    psq : ndarray of shape (n,)
        ``|points - ref|^2``.
    """
    pc = np.subtract(points, ref, dtype=np.float64)
    return pc, np.einsum("ij,ij->i", pc, pc)


def assign(pc, psq, cc):
    """Nearest centre of every row, as a one-hot (K, n) array, and the squared distance.

    One GEMM gives ``|cc_k|^2 - 2 cc_k . pc`` for every centre; the smallest per row
    (the first of equal ones) is the nearest centre, and adding ``|pc|^2`` gives the
    squared distance to it.

    Parameters
    ----------
    pc, psq : ndarray of shape (n, D) and (n,)
        Rows about a reference point and their squared norms (:func:`centred`).
    cc : ndarray of shape (K, D)
        Centres about the same point.

    Returns
    -------
    onehot : ndarray of shape (K, n), float64
        1 at each row's nearest centre, 0 elsewhere.
    d2 : ndarray of shape (n,)
        Squared distance of each row to its nearest centre (at least 0).
    """
    g = np.dot(-2.0 * cc, pc.T)
    g += np.einsum("ij,ij->i", cc, cc)[:, None]
    best = np.min(g, axis=0)
    onehot = np.equal(g, best, out=g)
    if onehot.sum() != pc.shape[0]:  # equally near centres: keep the first
        first = np.argmax(onehot != 0, axis=0)
        onehot[:] = 0.0
        onehot[first, np.arange(pc.shape[0])] = 1.0
    best += psq
    return onehot, np.maximum(best, 0.0, out=best)


def min_sq_dist(X, centers):
    """Squared distance of each row of ``X`` (n, D) to its nearest centre, and its index.

    Both are shifted by ``centers[0]`` first, so data far from the origin keep
    precision; with one centre the distance is exact, ``|x - c|^2``.
    """
    ref = centers[0]
    pc, psq = centred(X, ref)
    if centers.shape[0] == 1:
        return psq, np.zeros(X.shape[0], dtype=np.intp)
    onehot, d2 = assign(pc, psq, centers - ref)
    labels = np.dot(np.arange(centers.shape[0], dtype=np.float64), onehot).astype(np.intp)
    return d2, labels


# --------------------------------------------------------------------------- in memory
def kmeans_plusplus(points, n_clusters, rng, weights=None):
    """Greedy k-means++ seeding of in-memory ``points`` (n, D), optionally weighted.

    Like scikit-learn, each step draws ``2 + log(K)`` candidates and keeps the one that
    lowers the potential most. With fewer distinct points than ``n_clusters``, the
    remaining centres repeat points.

    The points are taken about the first centre once, with their squared norms; a
    step then gives the distances of every row to all its candidates in one GEMM,
    ``|p - c|^2 = |p|^2 - 2 p . c + |c|^2`` about that point (as scikit-learn's,
    which expands about the origin), in slabs of rows.

    Returns
    -------
    centers : ndarray of shape (n_clusters, D)
    """
    n = points.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    trials = 2 + int(np.log(n_clusters))
    chosen = [rng.choice(n, p=w / w.sum())]
    pc, psq = centred(points, points[chosen[0]])
    d2 = psq.copy()  # exact: the distances to the first centre
    step = max(256, _PLUSPLUS_SLAB_ELEMENTS // trials)
    for _ in range(1, n_clusters):
        pot = w * d2
        total = pot.sum()
        if total <= 0:  # every point coincides with a centre
            chosen.append(rng.choice(n))
            continue
        cand = rng.choice(n, size=trials, p=pot / total)
        cand_d2 = np.empty((trials, n))
        cc, ccsq = pc[cand], psq[cand, None]
        for i in range(0, n, step):
            part = np.dot(cc, pc[i : i + step].T)
            part *= -2.0
            part += ccsq
            part += psq[i : i + step]
            np.maximum(part, 0.0, out=part)
            np.minimum(part, d2[i : i + step], out=cand_d2[:, i : i + step])
        best = int(np.argmin(cand_d2 @ w))
        chosen.append(cand[best])
        d2 = cand_d2[best]
    return points[chosen].copy()


def lloyd(points, centers, weights=None, *, max_iter=SAMPLE_LLOYD_MAX_ITER, tol=1e-4, threads=None):
    """Weighted Lloyd iterations on in-memory ``points`` (n, D) from ``centers`` (K, D).

    An empty cluster is moved to the point farthest from its centre (as scikit-learn
    does). Stops when the summed squared shift of the centres is at most ``tol``
    times the mean per-feature variance of ``points`` (scikit-learn's rule).

    The points are taken about their mean once, transposed, with a row of ones below
    them: ``P`` (D + 1, n), in slabs of rows. An iteration is then, per slab, one GEMM
    ``[-2 cc, |cc|^2] P`` for every row's distances to every centre (less ``|p|^2``),
    their minimum, the (K, n) indicator of the nearest centres, and one GEMM of it
    with ``P^T`` for the sums and counts of every cluster at once. Slabs of about
    2**16 elements of ``P`` keep the work in cache: measured on 100,000 x 16 rows,
    K=8, an iteration took 4.1 ms this way against 9.4 ms with (n, D) slabs and
    (K, n) products of 2**16 elements, and scikit-learn's (Cython, one thread) 5.1 ms.
    The slabs are shared among up to ``threads`` threads (default
    :func:`~dask_em.settings.in_memory_threads`; NumPy and BLAS release the GIL; call
    it with BLAS on one thread, as the fit does), and their sums are added in the
    slabs' order: the same bits whatever the number of threads.

    Returns
    -------
    ndarray of shape (K, D)
    """
    n, D = points.shape
    K = centers.shape[0]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.average(points, axis=0, weights=w)
    step = max(256, min(_LLOYD_SLAB_ELEMENTS // (D + 1), 4 * _LLOYD_SLAB_ELEMENTS // K))
    slabs, sq = [], np.empty(n)
    for i in range(0, n, step):
        pc, sq[i : i + step] = centred(points[i : i + step], mean)
        P = np.empty((D + 1, pc.shape[0]))
        P[:D], P[D] = pc.T, 1.0
        slabs.append((i, P))
    tol_abs = tol * float((sq.sum() if w is None else np.dot(w, sq)) / ((n if w is None else w.sum()) * D))
    centers = np.array(centers, dtype=np.float64)
    d2 = np.empty(n)
    coef = np.empty((K, D + 1))
    threads = max(1, min(len(slabs), threads or in_memory_threads()))
    works = [np.empty(K * min(step, n)) for _ in range(threads)]
    parts = [None] * len(slabs)  # each slab's (K, D + 1) sums, added in the slabs' order

    def assign(t):  # every threads-th slab from the t-th
        for j in range(t, len(slabs), threads):
            i, P = slabs[j]
            m = P.shape[1]
            g = np.dot(coef, P, out=works[t][: K * m].reshape(K, m))
            best = np.min(g, axis=0)
            onehot = _nearest_indicator(g, best, None if w is None else w[i : i + m])
            parts[j] = np.dot(onehot, P.T)
            best += sq[i : i + m]
            np.maximum(best, 0.0, out=d2[i : i + m])

    with contextlib.ExitStack() as stack:
        pool = None
        if threads > 1:
            pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="dask-em-lloyd"))
        for _ in range(max_iter):
            cc = centers - mean
            np.multiply(cc, -2.0, out=coef[:, :D])
            coef[:, D] = np.einsum("ij,ij->i", cc, cc)
            if pool is None:
                assign(0)
            else:
                list(pool.map(assign, range(threads)))
            sums = np.zeros((K, D + 1))  # the clusters' sums about the mean, and their weights
            for part in parts:
                sums += part
            nk = sums[:, D]
            new = centers.copy()
            full = nk > 0
            new[full] = mean + sums[full, :D] / nk[full, None]
            empty = np.flatnonzero(~full)
            if empty.size:
                far = -d2 if w is None else -d2 * w
                new[empty] = points[np.argsort(far, kind="stable")[: empty.size]]
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= tol_abs and not empty.size:
                break
    return centers


def _nearest_indicator(g, best, w):
    """``g`` (K, m) turned into the (weighted) indicator of each column's smallest value,
    the first of equal ones, in place."""
    onehot = np.equal(g, best, out=g)
    if np.count_nonzero(onehot) != onehot.shape[1]:  # equally near centres: keep the first
        first = np.argmax(onehot != 0, axis=0)
        onehot[:] = 0.0
        onehot[first, np.arange(onehot.shape[1])] = 1.0
    if w is not None:
        onehot *= w
    return onehot
