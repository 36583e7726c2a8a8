"""The command line as a subprocess, and out-of-core fits on a real LocalCluster
(worker processes with memory limits)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import dask_em
from dask_em import GaussianMixture
from dask_em.data import decide_persist

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.small_workers]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB", dashboard_address=":0"
    ) as c:
        yield c


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(size=(1500, 3)) + c for c in ([0, 0, 0], [6, 0, 6])])
    path = tmp_path_factory.mktemp("cli") / "cube.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("refl", shape=X.shape, chunks=(500, 3), dtype="f4")[:] = X
    group.create_array("two", shape=(X.shape[0], 2), chunks=(500, 2), dtype="f4")[:] = X[:, :2]
    return path, X.astype(np.float32)


def dask_em_cli(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "dask_em", *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _reference_log_prob(model, X):
    """Weighted log-densities (n, K) with scipy.stats, independent of dask-em's kernels."""
    X = X.astype(np.float64)
    return np.column_stack(
        [np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(model.weights_, model.means_, model.covariances_)]
    )


def test_persist_policy_on_cluster(cluster, store, caplog):
    path, X = store
    with Client(cluster), caplog.at_level(logging.INFO, logger="dask_em"):
        gm = GaussianMixture(2, random_state=0).fit(path, array="refl")
        assert "keeping the data in cluster memory" in caplog.text and "GiB of cluster memory free" in caplog.text
        caplog.clear()
        with dask.config.set(scheduler="threads"):  # the client computes nothing: local memory counts
            GaussianMixture(2, random_state=0).fit(path, array="refl")
        assert "keeping the data in local memory" in caplog.text and "GiB of local memory free" in caplog.text
        caplog.clear()
        GaussianMixture(2, random_state=0, persist=False).fit(path, array="refl")
        assert "streaming the data from its source every iteration (persist=False)" in caplog.text
        caplog.clear()
        big = da.zeros((2**27, 8), chunks=(2**20, 8))  # 8 GiB, never computed
        assert decide_persist(big, "auto") is False
        assert "streaming the data from its source every iteration (8 GiB of data" in caplog.text
        with pytest.raises(ValueError, match="The 'persist' parameter of GaussianMixture must be a str among"):
            GaussianMixture(2, persist="yes").fit(path, array="refl")
        workers = cluster.scheduler_info["workers"].values()
    assert len(workers) == 2  # no worker was lost
    np.testing.assert_array_equal(gm.predict(X), np.argmax(_reference_log_prob(gm, X), axis=1))


def test_cli_fit_predict_score(cluster, store, tmp_path):
    path, X = store
    addr = cluster.scheduler_address
    model = tmp_path / "model.npz"
    fit = dask_em_cli("fit", path, "--array", "refl", "-k", 2, "--covariance-type", "diag", "--scheduler", addr, "--output", model)
    assert fit.returncode == 0, fit.stderr
    assert "converged after" in fit.stdout and f"model written to {model}" in fit.stdout
    assert "dashboard: http" in fit.stderr and "[dask-em] iteration 1: mean log-likelihood" in fit.stderr
    gm = dask_em.load(model)
    assert gm.covariance_type == "diag" and gm.n_components == 2
    order = np.argsort(gm.means_[:, 0])
    np.testing.assert_allclose(gm.means_[order], [[0, 0, 0], [6, 0, 6]], atol=0.1)

    out = tmp_path / "labels.zarr"
    pred = dask_em_cli("predict", model, path, "--array", "refl", "--scheduler", addr, "--output", out, "--quiet")
    assert pred.returncode == 0, pred.stderr
    assert pred.stderr == ""  # --quiet
    labels = zarr.open_group(str(out), mode="r")["labels"][:]
    np.testing.assert_array_equal(labels, np.argmax(_reference_log_prob(gm, X), axis=1))

    score = dask_em_cli("score", model, path, "--array", "refl", "--scheduler", addr)
    assert score.returncode == 0, score.stderr
    ref = logsumexp(_reference_log_prob(gm, X), axis=1).mean()
    # the store is float32, and float32 data are evaluated in float32 (issue 5)
    assert float(score.stdout.split()[-1]) == pytest.approx(ref, rel=1e-6)

    # bad input: one clear line, exit status 2, and the good output is left alone
    bad = [
        (("predict", model, path, "--array", "two", "--output", out), "X has 2 features, but GaussianMixture is expecting 3"),
        (("predict", model, path, "--array", "nope", "--output", out), "has no array 'nope'; its arrays are: refl, two"),
        (("predict", path, path, "--array", "refl", "--output", out), "No dask-em file"),
        (("score", model, tmp_path / "missing.zarr"), "Could not open a Zarr store"),
        (("fit", tmp_path / "missing.zarr", "-k", 2, "--output", model), "Could not open a Zarr store"),
    ]
    for args, message in bad:
        res = dask_em_cli(*args, "--scheduler", addr)
        assert res.returncode == 2, res
        lines = [line for line in res.stderr.splitlines() if line.startswith("dask-em: error:")]
        assert len(lines) == 1 and message in lines[0], res.stderr
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels"][:], labels)
    assert dask_em.load(model).n_components == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "model.npz"]  # no leftovers


def test_cli_starts_a_local_cluster_without_scheduler(store, tmp_path):
    path, X = store
    gm = GaussianMixture(2, random_state=0).fit(X)
    model = gm.save(tmp_path / "m.npz")
    res = dask_em_cli("score", model, path, "--array", "refl")
    assert res.returncode == 0, res.stderr
    assert "local cluster:" in res.stderr and "dashboard: http" in res.stderr
    # float32 store: evaluated in float32 (issue 5)
    assert float(res.stdout.split()[-1]) == pytest.approx(logsumexp(_reference_log_prob(gm, X), axis=1).mean(), rel=1e-6)


def test_cli_usage_errors():
    res = dask_em_cli("fit", "x.zarr", "--output", "m.npz")  # no -k
    assert res.returncode == 2 and "required: -k/--n-components" in res.stderr


@pytest.mark.slow
def test_demo_fits_data_larger_than_cluster_memory():
    res = dask_em_cli("demo", "--memory-limit", "300MiB", "--size-factor", "1.05", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "dashboard: http" in res.stderr and "streaming the data from its source" in res.stderr
    assert "[dask-em] iteration 1:" in res.stderr and "fitted in" in res.stdout
    err = float(res.stdout.split("against the true one:")[1].split()[0])
    assert err < 0.05
