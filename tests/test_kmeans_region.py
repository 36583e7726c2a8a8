"""Lloyd steps in memory from the rows near the boundaries (dask_em.families.kmeans_region).

References are computed here directly on all rows with NumPy (distances to every
centre, nearest centre, sums), never from the region's own arithmetic.
"""

import dask
import numpy as np
import pytest
import zarr

from dask_em import KMeans
from dask_em.families.kmeans import FAMILY
from dask_em.families.kmeans_region import Region
from dask_em.testing import CountingStore
# K anisotropic Gaussians about 1 sd apart, on which Lloyd is slow
from tests.test_few_pass import _overlapping as _anisotropic


def _overlapping(n=40_000, D=6, K=4, seed=0, spread=0.7):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    labels = rng.integers(0, K, n)
    return centers[labels] + rng.normal(size=(n, D)), centers


def _direct(X, w, c):
    """Lloyd's statistics at centres ``c`` over all rows, computed directly."""
    d2 = ((X[:, None, :] - c[None]) ** 2).sum(axis=2)
    labels = d2.argmin(axis=1)
    K = c.shape[0]
    nk = np.bincount(labels, weights=w, minlength=K)
    s1 = np.stack([(w[labels == k, None] * (X[labels == k] - c[k])).sum(axis=0) for k in range(K)])
    s2 = np.bincount(labels, weights=w * d2[np.arange(len(X)), labels], minlength=K)
    return labels, d2, nk, s1, s2


def _region(X, w, c0, fraction, blocks, order=None):
    """The region of a pass over ``blocks`` row blocks, summed in ``order``."""
    parts = [FAMILY.hard_stats(Xb, wb, {"means": c0}, keep=fraction)["region"]
             for Xb, wb in zip(np.array_split(X, blocks), np.array_split(w, blocks))]
    order = range(blocks) if order is None else order
    return sum(parts[i] for i in order).trimmed()


# numpy's Lloyd step and the compiled one (dask_em/families/_kmeans_numba.py), for the
# pass that makes the region and for the region's own steps
@pytest.fixture(params=["numpy", "numba"])
def kernels(request):
    with dask.config.set({"dask_em.kernels": request.param}):
        yield request.param


def test_region_statistics_are_those_of_a_pass_at_nearby_centres(kernels):
    X, centers = _overlapping()
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X))
    c0 = centers + np.random.default_rng(2).normal(scale=0.05, size=centers.shape)
    region = _region(X, w, c0, 0.1, blocks=7)
    assert isinstance(region, Region) and region.covered == len(X)
    assert region.rows.shape[0] <= np.ceil(0.1 * len(X))
    # every row left out of region.rows has a margin above thr (margins computed here)
    _, d2, *_ = _direct(X, w, c0)
    d = np.sqrt(np.sort(d2, axis=1))
    margins = d[:, 1] - d[:, 0]
    kept = {tuple(r) for r in region.rows}
    out = np.array([tuple(r) not in kept for r in X])
    assert out.sum() == len(X) - region.rows.shape[0]
    assert margins[out].min() >= region.thr > 0
    assert region.rows.shape[0] >= 0.09 * len(X)  # the smallest margins, about 10% of rows
    # centres moved within the region: a pass's statistics, exactly
    rng = np.random.default_rng(3)
    for scale in (0.0, 0.2, 0.45):
        move = rng.normal(size=c0.shape)
        move *= scale * region.thr / np.linalg.norm(move, axis=1, keepdims=True)
        c = c0 + move
        got = FAMILY.local(region, {"means": c})
        assert got is not None
        labels, _, nk, s1, s2 = _direct(X, w, c)
        np.testing.assert_allclose(got["nk"], nk, rtol=1e-12)
        np.testing.assert_allclose(got["s1"], s1, rtol=1e-9, atol=1e-9 * np.abs(s1).max())
        np.testing.assert_allclose(got["s2"], s2, rtol=1e-11)
        assert got["loglik"] == pytest.approx(-s2.sum(), rel=1e-12)
    # beyond it, no answer: the pass is needed
    move = np.zeros_like(c0)
    move[:2, 0] = 0.51 * region.thr
    assert FAMILY.local(region, {"means": c0 + move}) is None


def test_region_order_of_sums_and_signature(kernels):
    """At the pass's own centres the region gives the pass's statistics; summing the
    blocks in another order keeps every row exactly once. The signature is the same,
    bit for bit, whenever the partition is (strict convergence), and not otherwise."""
    X, centers = _overlapping(n=12_000, seed=4)
    w = np.ones(len(X))
    whole = FAMILY.hard_stats(X, None, {"means": centers}, keep=0.05)
    a = _region(X, w, centers, 0.05, blocks=5)
    b = _region(X, w, centers, 0.05, blocks=5, order=[3, 0, 4, 1, 2])
    for region in (a, b, whole["region"]):
        got = FAMILY.local(region, {"means": centers})
        assert got["nk"].sum() == len(X)
        np.testing.assert_array_equal(got["nk"], whole["nk"])
        np.testing.assert_allclose(got["s2"], whole["s2"], rtol=1e-12)
    at_c0 = FAMILY.local(a, {"means": centers})
    labels0 = _direct(X, w, centers)[0]
    same = different = 0
    rng = np.random.default_rng(5)
    for scale in np.geomspace(1e-10, 1e-1, 19):
        c = centers + rng.normal(scale=scale * a.thr, size=centers.shape)
        got = FAMILY.local(a, {"means": c})
        if np.array_equal(_direct(X, w, c)[0], labels0):
            same += 1
            np.testing.assert_array_equal(got["sig"], at_c0["sig"])
        else:
            different += 1
            assert not np.array_equal(got["sig"], at_c0["sig"])
    assert same and different


def _store(path, X, chunk_rows):
    z = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype)
    z[:] = X
    store = CountingStore(path)
    return store, zarr.open_array(store, mode="r")


def test_stepwise_kmeans_takes_its_lloyd_steps_in_memory(tmp_path, kernels):
    """The same iterates as with a pass per Lloyd step (local_rows=0), in fewer passes."""
    X = _anisotropic(n=60_000, D=16, K=8, seed=1)
    fits = {}
    for rows in (0, 6_000):  # off; 10% of the rows
        store, arr = _store(tmp_path / f"X{rows}.zarr", X, 1_000)
        with dask.config.set({"dask_em.local_rows": rows}):
            km = KMeans(8, random_state=0, persist=False, algorithm="stepwise").fit(arr)
        fits[rows] = (km, store.passes(arr))
    (off, off_passes), (on, on_passes) = fits[0], fits[6_000]
    assert off_passes == 2 + off.n_iter_  # sample, stepwise pass, a pass per Lloyd step
    assert on.n_iter_ == off.n_iter_ >= 4
    assert on_passes < off_passes and on_passes <= 4
    np.testing.assert_allclose(on.cluster_centers_, off.cluster_centers_, rtol=0, atol=1e-6)  # float32 attributes
    assert on.inertia_ == pytest.approx(off.inertia_, rel=1e-9)
    # the kept centres' inertia, checked directly
    X64, c = X.astype(np.float64), on.cluster_centers_.astype(np.float64)
    d2 = ((X64[:, None, :] - c[None]) ** 2).sum(axis=2)
    assert on.inertia_ == pytest.approx(d2.min(axis=1).sum(), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(on.labels_), d2.argmin(axis=1))


def test_local_rows_setting():
    from dask_em.settings import local_fraction, local_rows_default

    assert local_rows_default(8, 16) == 64 * 2**20 // (8 * 16)
    assert local_rows_default(1000, 16) == 1_000_000  # the sample's size when larger
    assert local_fraction(8, 16, 10**9) == pytest.approx(524_288 / 10**9)
    assert local_fraction(8, 16, 1000) == 1.0
    with dask.config.set({"dask_em.local_rows": 0}):
        assert local_fraction(8, 16, 10**6) is None
    with dask.config.set({"dask_em.local_rows": 250}):
        assert local_fraction(8, 16, 1000) == 0.25


def test_weighted_stepwise_kmeans_on_a_process_cluster(tmp_path, cluster_client):
    """The regions travel between worker processes and through the tree sums; with
    sample weights the steps in memory are still a pass's steps."""
    import dask.array as da

    from dask_em.engine.passes import watch_passes

    X = _anisotropic(n=40_000, D=8, K=5, seed=3).astype(np.float64)
    w = np.random.default_rng(4).uniform(0.2, 3.0, len(X))
    path = str(tmp_path / "W.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(2_000, 8), dtype=X.dtype)[:] = X
    fits = {}
    for rows in (0, 8_000):
        blocks = []  # row blocks read by each pass, counted on the client
        with dask.config.set({"dask_em.local_rows": rows}), watch_passes(blocks.append):
            km = KMeans(5, random_state=1, persist=False, algorithm="stepwise", tol=1e-6)
            km.fit(da.from_zarr(path), sample_weight=da.from_array(w, chunks=2_000))
        fits[rows] = (km, sum(blocks) / 20)
    (off, off_passes), (on, on_passes) = fits[0], fits[8_000]
    assert on.n_iter_ == off.n_iter_ >= 4 and on_passes < off_passes
    assert off_passes == 2 + off.n_iter_
    np.testing.assert_allclose(on.cluster_centers_, off.cluster_centers_, rtol=1e-10)
    assert on.inertia_ == pytest.approx(off.inertia_, rel=1e-10)
    d2 = ((X[:, None, :] - on.cluster_centers_[None]) ** 2).sum(axis=2)
    assert on.inertia_ == pytest.approx((w * d2.min(axis=1)).sum(), rel=1e-9)
