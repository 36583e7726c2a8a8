"""Non-Gaussian models on a real distributed LocalCluster (processes)."""

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.cluster import KMeans as SkKMeans

from dask_em import KMeans, PoissonMixture


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


def test_poisson_and_kmeans_on_a_process_cluster(client):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.poisson(lam, (500, 3)) for lam in (1.0, 8.0)]).astype(float)
    w = rng.integers(0, 3, len(X)).astype(float)
    Xd, wd = da.from_array(X, chunks=(180, -1)), da.from_array(w, chunks=180)
    start = dict(weights_init=[0.5, 0.5], means_init=[[2.0, 2.0, 2.0], [5.0, 5.0, 5.0]], tol=0, max_iter=10)
    with pytest.warns(Warning):
        remote = PoissonMixture(2, **start).fit(Xd, sample_weight=wd)
    assert client.run(lambda: 1)  # the workers are separate processes and alive
    with pytest.warns(Warning), dask.config.set(scheduler="threads"):
        local = PoissonMixture(2, **start).fit(X, sample_weight=w)  # NumPy input, local threads
    np.testing.assert_allclose(remote.means_, local.means_, rtol=1e-12)
    np.testing.assert_allclose(remote.weights_, local.weights_, rtol=1e-12)
    labels = remote.predict(Xd).compute()
    np.testing.assert_array_equal(labels, local.predict(X))
    # invalid data are found inside the pass, on a worker, and reported by column
    bad = X.copy()
    bad[700, 2] = -3
    with pytest.raises(ValueError, match="column 2 of X holds the value -3"):
        PoissonMixture(2, **start).fit(da.from_array(bad, chunks=(180, -1)))

    init = X[[0, 600, 900]]
    km = KMeans(3, init=init, max_iter=30, tol=0).fit(Xd)
    sk = SkKMeans(3, init=init, n_init=1, max_iter=30, tol=0).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, sk.cluster_centers_, rtol=1e-12)
    assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-12)
    np.testing.assert_array_equal(km.labels_.compute(), sk.labels_)
