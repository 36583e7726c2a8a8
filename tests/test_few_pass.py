"""A converged model in a few passes: stepwise fits and partial_fit, through the estimators.

Passes are counted from the chunk reads of a real Zarr store on disk
(:class:`dask_em.testing.CountingStore`), not estimated.
"""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from scipy import optimize
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import MiniBatchKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import GaussianMixture, KMeans, PoissonMixture
from dask_em.testing import CountingStore


def _blobs(n=24_000, seed=0, spread=6.0, D=3, K=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    X = np.concatenate([rng.normal(c, 1.0, (n // K, D)) for c in centers])
    return X[rng.permutation(len(X))], centers


def _store(tmp_path, X, chunk_rows):
    path = tmp_path / "X.zarr"
    z = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype)
    z[:] = X
    store = CountingStore(path)
    arr = zarr.open_array(store, mode="r")
    return store, arr


def _align(got, want):
    cost = ((got[:, None, :] - want[None, :, :]) ** 2).sum(axis=2)
    _, cols = optimize.linear_sum_assignment(cost)
    return cols.argsort()


def test_stepwise_fit_of_a_streamed_store_takes_few_passes(tmp_path):
    X, centers = _blobs()
    store, arr = _store(tmp_path, X, 500)  # 48 chunks
    gm = GaussianMixture(3, covariance_type="full", random_state=0, persist=False)  # auto -> stepwise
    gm.fit(arr)
    passes = store.passes(arr)
    stepwise = [h for h in gm.history_ if h.get("kind") == "stepwise"]
    batch = [h for h in gm.history_ if h.get("kind") == "batch"]
    assert stepwise and len(batch) == gm.n_iter_
    # one sampling pass, one stepwise pass, then the exact batch finish
    assert passes == 2 + gm.n_iter_
    assert passes <= 4
    assert gm.converged_
    sk = SkGaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    assert gm.score(X) >= sk.score(X) - 1e-3
    np.testing.assert_allclose(gm.means_[_align(gm.means_, centers)], centers, atol=0.05)


def test_batch_em_of_the_same_store_counts_one_pass_per_iteration(tmp_path):
    X, _ = _blobs(n=6_000)
    store, arr = _store(tmp_path, X, 500)
    gm = GaussianMixture(3, random_state=0, persist=False, algorithm="em", tol=1e-6).fit(arr)
    assert store.passes(arr) == 1 + gm.n_iter_  # the sampling pass, then one per iteration
    assert all(h.get("kind", "batch") == "batch" for h in gm.history_)


def test_stepwise_fit_is_reproducible_and_independent_of_the_workers():
    X, _ = _blobs(n=12_000, seed=3)
    Xd = da.from_array(X, chunks=(500, -1))
    kw = dict(n_components=3, random_state=0, algorithm="stepwise", tol=1e-4)
    fits = []
    with dask.config.set({"dask_em.stepwise.batch_chunks": 2}):  # the same mini-batch partition
        fits.append(GaussianMixture(**kw).fit(Xd))
        fits.append(GaussianMixture(**kw).fit(Xd))
        for n_workers in (1, 3):
            with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster):
                fits.append(GaussianMixture(**kw).fit(Xd))
    a, b, one, three = fits
    for x, y in ((a, b), (one, three)):  # bit for bit: the same scheduler, any number of workers
        np.testing.assert_array_equal(x.means_, y.means_)
        np.testing.assert_array_equal(x.covariances_, y.covariances_)
        assert x.n_iter_ == y.n_iter_
    # the threaded scheduler joins small blocks into larger tasks: sums in another order
    np.testing.assert_allclose(a.means_, one.means_, rtol=1e-12)
    np.testing.assert_allclose(a.covariances_, one.covariances_, rtol=1e-12)


def test_stepwise_reaches_batch_em_on_overlapping_clusters():
    X, _ = _blobs(n=30_000, seed=5, spread=1.6, D=4, K=4)
    Xd = da.from_array(X.astype(np.float32), chunks=(250, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = GaussianMixture(4, random_state=0, algorithm="em", tol=1e-6, max_iter=500).fit(Xd)
        sw = GaussianMixture(4, random_state=0, algorithm="stepwise", tol=1e-3).fit(Xd)
    assert sw.score(Xd) >= em.score(Xd) - 1e-3
    assert sw.n_iter_ < em.n_iter_


def test_partial_fit_chunk_by_chunk_reaches_batch_em():
    X, _ = _blobs(n=30_000, seed=1)
    sk = SkGaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    gm = GaussianMixture(3, random_state=0)
    for block in da.from_array(X, chunks=(1_500, -1)).blocks:
        gm.partial_fit(block.compute())
    assert gm.n_iter_ == 20
    assert abs(gm.score(X) - sk.score(X)) < 1e-3
    np.testing.assert_allclose(gm.means_[_align(gm.means_, sk.means_)], sk.means_, atol=0.05)


def test_partial_fit_of_a_discrete_model_and_after_fit():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.poisson(lam, (4_000, 3)) for lam in (1.0, 9.0)])[rng.permutation(8_000)]
    pm = PoissonMixture(2, random_state=0)
    for i in range(0, len(X), 1_000):
        pm.partial_fit(X[i:i + 1_000])
    np.testing.assert_allclose(np.sort(pm.means_[:, 0]), [1.0, 9.0], atol=0.15)
    fitted = PoissonMixture(2, random_state=0).fit(X)
    before = fitted.means_.copy()
    fitted.partial_fit(X[:1_000])  # continues from the fitted parameters
    np.testing.assert_allclose(np.sort(fitted.means_[:, 0]), np.sort(before[:, 0]), atol=0.2)


def test_partial_fit_bad_input_is_a_clear_error():
    X, _ = _blobs(n=3_000)
    gm = GaussianMixture(3, random_state=0).partial_fit(X[:1_000])
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        gm.partial_fit(X[1_000:2_000, :2])
    bad = X[1_000:2_000].copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite.*nan_policy='omit'"):
        gm.partial_fit(bad)
    with pytest.raises(ValueError, match="NaN or infinite.*nan_policy='omit'"):
        gm.partial_fit(da.from_array(bad, chunks=(250, -1)))
    assert gm.n_iter_ == 1  # the refused batches changed nothing
    gm.set_params(nan_policy="omit").partial_fit(bad)
    assert gm.n_iter_ == 2


def test_stepwise_kmeans_is_mini_batch_kmeans_quality():
    X, _ = _blobs(n=30_000, seed=4, D=2, K=5, spread=5.0)
    Xd = da.from_array(X, chunks=(500, -1))
    km = KMeans(5, random_state=0, algorithm="stepwise").fit(Xd)
    lloyd = KMeans(5, random_state=0, algorithm="lloyd").fit(Xd)
    full = SkKMeans(5, random_state=0, n_init=3).fit(X)
    mini = MiniBatchKMeans(5, random_state=0, n_init=3, batch_size=1024).fit(X)
    assert km.inertia_ <= mini.inertia_ * (1 + 1e-6)
    assert km.inertia_ <= full.inertia_ * (1 + 1e-6)
    assert lloyd.inertia_ <= full.inertia_ * (1 + 1e-6)
    # mini-batch k-means one batch at a time, against scikit-learn's (both with 3 starts)
    km2 = KMeans(5, random_state=0, n_init=3)
    for block in Xd.blocks:
        km2.partial_fit(block.compute())
    assert -km2.score(X) <= mini.inertia_ * 1.02


def test_algorithm_is_validated_before_any_pass():
    calls = []

    class Count(dask.callbacks.Callback):
        def _start(self, dsk):
            calls.append(1)

    Xd = da.from_array(_blobs(n=3_000)[0], chunks=(500, -1))
    with Count(), pytest.raises(ValueError, match=r"'algorithm' parameter of GaussianMixture must be a str among"):
        GaussianMixture(3, algorithm="online").fit(Xd)
    with Count(), pytest.raises(ValueError, match=r"'algorithm' parameter of KMeans must be a str among"):
        KMeans(3, algorithm="elkan").fit(Xd)
    assert calls == []



def _overlapping(n=60_000, D=8, K=4, seed=1, spread=0.6):
    """K anisotropic Gaussians whose centres are about one standard deviation apart."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    mixers = np.stack([rng.normal(size=(D, D)) * 0.5 + np.eye(D) * 0.5 for _ in range(K)])
    labels = rng.integers(0, K, n)
    rows = np.einsum("nd,nde->ne", rng.normal(size=(n, D)), mixers[labels]) + centers[labels]
    return rows.astype(np.float32)


def test_averaged_stepwise_finishes_overlapping_clusters_in_four_passes(tmp_path):
    """Full covariances on overlapping clusters: the averaged stepwise estimate lands
    close enough to the EM fixed point that 2 finish passes meet tol (4 in all); the
    last iterate alone needs one more."""
    X = _overlapping()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = GaussianMixture(4, random_state=0, algorithm="em", tol=1e-6, max_iter=1000).fit(X)
    passes = {}
    for average in (0.0, 0.5):
        store, arr = _store(tmp_path / str(average), X, 1_000)
        # mini-batches of 2 chunks whatever the machine's thread count (the default):
        # with larger ones, the last iterate alone may land close enough too
        with dask.config.set({"dask_em.stepwise.average": average, "dask_em.stepwise.batch_chunks": 2}):
            gm = GaussianMixture(4, random_state=0, persist=False).fit(arr)  # auto -> stepwise
        passes[average] = store.passes(arr)
        assert gm.converged_ and passes[average] == 2 + gm.n_iter_
        assert gm.score(X) >= em.score(X) - 1e-3
    assert passes[0.5] == 4  # the default (dask_em.stepwise.average = 0.5)
    assert passes[0.0] > passes[0.5]


def test_stepwise_kmeans_keeps_the_centres_its_last_pass_scored(tmp_path):
    """No scoring pass: the finish keeps the centres its last pass evaluated, so
    inertia_ and labels_ are exactly theirs (checked against NumPy), at
    scikit-learn's quality."""
    X = _overlapping(seed=2)
    store, arr = _store(tmp_path, X, 1_000)
    km = KMeans(4, random_state=0, persist=False).fit(arr)  # auto -> stepwise
    # sample, stepwise pass, Lloyd steps (those near the last pass's centres in memory,
    # tests/test_kmeans_region.py): nothing more
    assert 3 <= store.passes(arr) <= 2 + km.n_iter_
    assert store.passes(arr) <= 4 and km.converged_
    X64 = X.astype(np.float64)
    d2 = ((X64[:, None, :] - km.cluster_centers_.astype(np.float64)[None]) ** 2).sum(axis=2)
    assert km.inertia_ == pytest.approx(d2.min(axis=1).sum(), rel=1e-6)  # float32 centres
    np.testing.assert_array_equal(np.asarray(km.labels_), d2.argmin(axis=1))
    # the finish is Anderson-accelerated Lloyd: the kept centres pass Lloyd's test
    labels, centres = d2.argmin(axis=1), km.cluster_centers_.astype(np.float64)
    step = np.stack([X64[labels == k].mean(axis=0) for k in range(4)])
    assert ((step - centres) ** 2).sum() <= km.tol * X64.var(axis=0).mean()
    sk = SkKMeans(4, random_state=0, n_init=3).fit(X64)
    assert km.inertia_ <= sk.inertia_ * (1 + 1e-3)
