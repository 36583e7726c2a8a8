"""Shared fixtures: seeded data sets and a real distributed cluster."""

import os

import dask
import numpy as np
import pytest

# The kernels are numpy's in every test unless a test asks for dask-em's compiled ones
# (dask_em/compiled.py; tests/test_vector_exp.py, tests/test_fused_gaussian.py and the
# scikit-learn parity tests test both): the test extra installs numba, and the default
# ("auto") would load it in every process that fits a diagonal Gaussian mixture,
# LocalCluster workers included (+100 MB each, above what the suite's small worker
# memory limits allow). Set here and in the environment, so
# worker processes and the command line's subprocesses see it too; a run started with
# DASK_DASK_EM__KERNELS=numba takes the compiled kernels everywhere (.ci/run does, with
# -m "not small_workers": workers of 400 MiB or less pause, numba loaded, and the fit waits).
os.environ.setdefault("DASK_DASK_EM__KERNELS", "numpy")
dask.config.set({"dask_em.kernels": os.environ["DASK_DASK_EM__KERNELS"]})


def make_blobs(n=3000, n_features=4, n_components=3, seed=0, shift=0.0, spread=5.0):
    """Seeded Gaussian blobs with random (anisotropic) covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(n_components, n_features))
    sizes = rng.multinomial(n, np.full(n_components, 1.0 / n_components))
    parts = []
    for c, m in zip(centers, sizes):
        A = rng.normal(size=(n_features, n_features)) * 0.6
        parts.append(rng.normal(size=(m, n_features)) @ A + c)
    X = np.concatenate(parts)
    return X[rng.permutation(n)] + shift


@pytest.fixture
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def cluster_client():
    """A real LocalCluster with two worker processes, one thread each."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="2GiB"
    ) as cluster, Client(cluster) as client:
        yield client
