"""Streamed fits on workers with little free memory: no worker is killed.

The setting of issue 13 (item 6): a float32 Zarr store in chunks of 1,048,576 rows x
16 features (64 MiB) streamed through a LocalCluster of 2 worker processes with one
thread each, whose free memory is a few chunks. Every kernel that touches rows
(the sampling pass, the E-step, prediction) works in bounded slabs, so a worker
needs little more than what reading one chunk takes.

What reading takes is measured here, not assumed: Zarr 3 holds a compressed chunk,
its decoded copy and the output array at once (about 3x the chunk), and a worker
process idles at a few hundred MiB with dask-em imported. The test measures both
on a first cluster, then gives every worker of a second one a memory limit of
``idle + read + headroom`` (headroom: two chunks, the pause and terminate thresholds
at 1.2 and 1.5 chunks, so a regression fails the peak assertion, at one chunk, instead
of hanging on restarted workers) and fits ``GaussianMixture(4, "diag")`` with
every ``init_params``, then predicts. No worker may restart. Before the kernels
worked in slabs, the sampling pass (about 0.6 chunk of per-row work arrays) and
prediction (the whole chunk converted to float64: 2 chunks) did not fit there.

``distributed.scheduler.worker-saturation`` is 1.0: with the default 1.1 the
scheduler hands a one-thread worker two chunk reads at a time (``ceil(1.1)``), so
a worker may hold two chunks whatever the kernels do (see the README's memory notes).
"""

import os
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import dask
import dask.array as da
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em.exceptions import ConvergenceWarning

MiB = 2**20
ROWS, D, N_CHUNKS = 1_048_576, 16, 4
CHUNK = ROWS * D * 4
INITS = ("kmeans", "k-means++", "random", "random_from_data")


def _write_store(path):
    z = zarr.create_array(str(path), shape=(ROWS * N_CHUNKS, D), chunks=(ROWS, D), dtype="f4")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(4, D))
    for i in range(N_CHUNKS):
        labels = rng.integers(0, 4, ROWS)
        block = centres[labels].astype(np.float32)
        block += rng.standard_normal(size=(ROWS, D), dtype=np.float32)
        z[i * ROWS : (i + 1) * ROWS] = block


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _start_monitor():
    """Record the worker's peak resident memory (polled every 2 ms) in a module global."""
    import builtins

    import psutil

    state = builtins.__dict__.setdefault("_dask_em_test_peak", {"peak": 0})
    proc = psutil.Process()

    def loop():
        while True:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.002)

    threading.Thread(target=loop, daemon=True).start()


def _peak_and_reset():
    import builtins

    state = builtins._dask_em_test_peak
    peak, state["peak"] = state["peak"], 0
    return peak


def _read_chunk(path):
    z = zarr.open_array(path, mode="r")
    before = _rss()
    block = z[:ROWS]
    return int(block.shape[0]), before


@pytest.mark.slow
@pytest.mark.small_workers  # its limits are measured from workers that have not loaded numba
def test_streamed_fit_and_predict_fit_in_a_few_chunks_of_worker_memory(tmp_path):
    store = tmp_path / "pixels.zarr"
    _write_store(store)
    warm = tmp_path / "warm.zarr"
    zw = zarr.create_array(str(warm), shape=(20_000, D), chunks=(5_000, D), dtype="f4")
    zw[:] = np.random.default_rng(1).normal(size=(20_000, D)).astype(np.float32)
    warnings.simplefilter("ignore", ConvergenceWarning)

    # 1. a worker's idle memory with dask-em loaded, and what reading one chunk takes
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        GaussianMixture(2, covariance_type="diag", persist=False, max_iter=2, random_state=0).fit(str(warm))
        client.run(_start_monitor)
        time.sleep(0.2)
        (idle,) = client.run(_rss).values()
        client.run(_peak_and_reset)
        client.submit(_read_chunk, str(store), pure=False).result()
        time.sleep(0.2)
        (peak,) = client.run(_peak_and_reset).values()
        read = peak - idle
    assert CHUNK <= read < 5 * CHUNK, f"reading one chunk took {read / MiB:.0f} MiB"

    # 2. workers with room for that read plus a chunk (a busy machine's allocator and the
    # dashboard move a worker's memory by a fraction of a chunk); thresholds in chunks
    limit = idle + read + 2 * CHUNK
    at = {"pause": idle + read + 1.2 * CHUNK, "terminate": idle + read + 1.5 * CHUNK}
    config = {f"distributed.worker.memory.{k}": v / limit for k, v in at.items()}
    config.update({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                   "distributed.scheduler.worker-saturation": 1.0})
    with dask.config.set(config), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=int(limit), dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        client.run(_start_monitor)
        peaks = {}
        for init in INITS:
            gm = GaussianMixture(4, covariance_type="diag", init_params=init, persist=False, max_iter=4,
                                 random_state=0).fit(str(store))
            counts = da.bincount(gm.predict(str(store)), minlength=4).compute()
            assert counts.sum() == ROWS * N_CHUNKS
            peaks[init] = max(client.run(_peak_and_reset).values())
        assert client.run(os.getpid) == pids, "a worker was restarted (killed for memory)"
    over = {k: round((v - idle - read) / MiB) for k, v in peaks.items()}
    print(f"idle {idle / MiB:.0f} MiB, read {read / MiB:.0f} MiB, peak beyond idle + read (MiB): {over}")
    assert max(peaks.values()) < idle + read + 1.0 * CHUNK
