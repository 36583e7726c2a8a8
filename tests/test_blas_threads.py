"""Per-row outputs computed by the user limit BLAS to one thread per task on worker threads."""

import time

import dask
import dask.array as da
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from dask_em import GaussianMixture, KMeans
from dask_em.engine import map_rows


def _blas_threads():
    return sorted({lib["num_threads"] for lib in ThreadpoolController().info() if lib["user_api"] == "blas"})


def _probe(block, payload):
    time.sleep(0.002)  # let the tasks overlap
    return np.full(block.shape[0], max(_blas_threads()))


@pytest.mark.parametrize("scheduler, workers, expected", [("threads", 4, 1), ("threads", 1, 2), ("sync", None, 2)])
def test_tasks_run_with_one_blas_thread_and_the_setting_comes_back(scheduler, workers, expected):
    if not _blas_threads():
        pytest.skip("no BLAS library found by threadpoolctl")
    X = da.zeros((6_400, 3), chunks=(100, 3))
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with dask.config.set(scheduler=scheduler, num_workers=workers):
            seen = map_rows(X, _probe, None, name="probe", dtype=np.int64).compute()
        assert _blas_threads() == before  # put back after the last task
    assert set(seen.tolist()) == {expected}


def test_predict_on_threads_equals_predict_in_memory():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4_000, 4)) + rng.integers(0, 3, size=(4_000, 1)) * 5.0
    Xd = da.from_array(X, chunks=(250, -1))
    gm = GaussianMixture(3, random_state=0).fit(X)
    km = KMeans(3, random_state=0).fit(X)
    with dask.config.set(scheduler="threads", num_workers=4):
        np.testing.assert_allclose(gm.predict_proba(Xd).compute(), gm.predict_proba(X), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(gm.score_samples(Xd).compute(), gm.score_samples(X), rtol=1e-12)
        np.testing.assert_array_equal(km.predict(Xd).compute(), km.predict(X))
