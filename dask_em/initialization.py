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

import numpy as np

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
#: Rows of the sample k-means++ seeds on (at least; 100 K for large K).
KMEANSPP_SAMPLE = 10_000


# --------------------------------------------------------------------------- kernels
def min_sq_dist(X, centers):
    """Squared distance of each row of ``X`` (n, D) to its nearest centre, and its index.

    Both are shifted by ``centers[0]`` first, so data far from the origin keep precision.
    """
    ref = centers[0]
    Xc, Cc = X - ref, centers - ref
    d2 = np.einsum("ij,ij->i", Xc, Xc)[:, None] - 2.0 * (Xc @ Cc.T)
    d2 += np.einsum("ij,ij->i", Cc, Cc)[None, :]
    idx = np.argmin(d2, axis=1)
    return np.maximum(d2[np.arange(X.shape[0]), idx], 0.0), idx



# --------------------------------------------------------------------------- in memory
def kmeans_plusplus(points, n_clusters, rng, weights=None):
    """Greedy k-means++ seeding of in-memory ``points`` (n, D), optionally weighted.

    Like scikit-learn, each step draws ``2 + log(K)`` candidates and keeps the one that
    lowers the potential most. With fewer distinct points than ``n_clusters``, the
    remaining centres repeat points.

    Returns
    -------
    centers : ndarray of shape (n_clusters, D)
    """
    n = points.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    trials = 2 + int(np.log(n_clusters))
    chosen = [rng.choice(n, p=w / w.sum())]
    d2, _ = min_sq_dist(points, points[chosen])
    for _ in range(1, n_clusters):
        pot = w * d2
        total = pot.sum()
        if total <= 0:  # every point coincides with a centre
            chosen.append(rng.choice(n))
            continue
        cand = rng.choice(n, size=trials, p=pot / total)
        cand_d2 = np.stack([np.minimum(d2, min_sq_dist(points, points[[c]])[0]) for c in cand])
        best = int(np.argmin(cand_d2 @ w))
        chosen.append(cand[best])
        d2 = cand_d2[best]
    return points[chosen].copy()
