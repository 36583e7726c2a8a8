"""The Lloyd step of K-means (``kmeans.hard_stats``), numpy's and the compiled one
(dask_em/families/_kmeans_numba.py), against a row-by-row reference written here;
scikit-learn parity of whole fits with both is in tests/test_kmeans.py, the in-memory
steps from a region in tests/test_kmeans_region.py."""

import dask
import numpy as np
import pytest

from dask_em.families import kmeans

KERNELS = ["numpy", "numba"]


def _reference(X, w, centers, ref):
    """Nearest centres (the first of equally near ones), second-nearest distances and
    the statistics of :func:`dask_em.families.kmeans.hard_stats`, one row at a time."""
    X = X.astype(np.float64)
    K, D = centers.shape
    v = np.cos(np.arange(1, D + 1) * 0.7548776662466927)  # the family's signature vector
    labels, best, second = [], [], []
    nk, s1, s2, sig = np.zeros(K), np.zeros((K, D)), np.zeros(K), np.zeros(K)
    for x, wi in zip(X, w):
        d2 = [float(np.sum((x - c) ** 2)) for c in centers]
        k = min(range(K), key=lambda j: (d2[j], j))
        labels.append(k)
        best.append(d2[k])
        second.append(min(d2[:k] + d2[k + 1:], default=np.inf))
        nk[k] += wi
        s1[k] += wi * (x - centers[k])
        s2[k] += wi * d2[k]
        sig[k] += wi * np.dot(x - ref, v)
    return np.array(labels), np.array(best), np.array(second), nk, s1, s2, sig


def _data(rng, n, D, K, offset=0.0):
    centers = offset + rng.normal(scale=2.0, size=(K, D))
    X = centers[rng.integers(0, K, size=n)] + rng.normal(size=(n, D))
    return X, centers


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])  # the compiled loop's tiles of 256 rows and their edges
@pytest.mark.parametrize("D", [1, 5])  # its sweeps of 4 features and their remainder
@pytest.mark.parametrize("weighted", [False, True])
def test_statistics_match_a_row_by_row_reference(kernels, n, D, weighted):
    rng = np.random.default_rng(n + 3 * D + weighted)
    K = 4
    X, centers = _data(rng, n, D, K)
    centers[3] = centers[1]  # an exact tie: rows go to the first
    X[0] = centers[0]  # a row at a centre (distance 0)
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    with dask.config.set({"dask_em.kernels": kernels}):
        stats = kmeans.hard_stats(X, w, {"means": centers}, cache={}, keep=1.0)
    ref = X.mean(axis=0)  # the block's reference point: the mean of its first rows
    labels, best, second, nk, s1, s2, sig = _reference(X, np.ones(n) if w is None else w, centers, ref)
    assert stats["nk"][3] == 0.0
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-13)
    scale = np.abs(X - ref).max() * nk.sum()  # the sums' size: their rounding is relative to it
    np.testing.assert_allclose(stats["s1"], s1, rtol=1e-11, atol=1e-13 * scale)
    np.testing.assert_allclose(stats["s2"], s2, rtol=1e-11, atol=1e-13 * scale)
    np.testing.assert_allclose(stats["sig"], sig, rtol=1e-11, atol=1e-13 * scale)
    assert stats["loglik"] == pytest.approx(-s2.sum(), rel=1e-12)
    # the K rows farthest from their centre, in decreasing order
    order = np.argsort(-best, kind="stable")[:K]
    np.testing.assert_allclose(stats["far"].d2, best[order], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(stats["far"].labels, labels[order])
    # keep=1.0: the region keeps every row, with its nearest centre and margin
    region = stats["region"]
    np.testing.assert_array_equal(region.labels, labels)
    np.testing.assert_array_equal(region.rows, X)
    finite = np.isfinite(second)
    margin = np.sqrt(second) - np.sqrt(best)
    np.testing.assert_allclose(region.margin[finite], margin[finite], rtol=0, atol=1e-5 * np.abs(X).max())
    assert np.all(region.margin[finite] <= margin[finite])  # less the allowance for rounding


@pytest.mark.parametrize("kernels", KERNELS)
def test_one_centre_far_from_the_origin_and_in_float32(kernels):
    """K = 1 (no second-nearest centre: margins are infinite), float32 rows at +1e6
    computed in float64: the reference takes the same float32 values."""
    rng = np.random.default_rng(3)
    X, centers = _data(rng, 700, 3, 1, offset=1e6)
    X = X.astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=700)
    with dask.config.set({"dask_em.kernels": kernels}):
        stats = kmeans.hard_stats(X, w, {"means": centers}, cache={}, keep=1.0)
    _, _, _, nk, s1, s2, _ = _reference(X, w, centers, X.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-13)
    np.testing.assert_allclose(stats["s1"], s1, rtol=1e-9)
    # numpy's kernel expands the squares about the block's mean: 1e-9 of them here
    np.testing.assert_allclose(stats["s2"], s2, rtol=1e-9 if kernels == "numpy" else 1e-12)
    assert np.all(np.isinf(stats["region"].margin))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_two_kernels_assign_every_row_alike(weighted):
    """On a slab of many tiles, far from the origin, both kernels give the same
    partition, far rows and region, and sums equal to rounding."""
    rng = np.random.default_rng(11)
    X, centers = _data(rng, 20_000, 16, 8, offset=100.0)
    w = rng.uniform(0.1, 3.0, size=len(X)) if weighted else None
    got = {}
    for kernels in KERNELS:
        with dask.config.set({"dask_em.kernels": kernels}):
            got[kernels] = kmeans.hard_stats(X, w, {"means": centers}, cache={}, keep=0.2)
    a, b = got["numpy"], got["numba"]
    np.testing.assert_allclose(a["nk"], b["nk"], rtol=1e-13 if weighted else 0)
    for key in ("s1", "s2", "sig"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10 * np.abs(a[key]).max())
    for x, y in zip(a["far"].arrays(), b["far"].arrays()):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    ra, rb = a["region"], b["region"]
    assert ra.size == rb.size
    np.testing.assert_array_equal(ra.labels, rb.labels)
    np.testing.assert_allclose(ra.margin, rb.margin, rtol=0, atol=1e-9)
