"""A pass that makes no progress on a cluster says so, and why (issue 13, item 12).

A real LocalCluster whose only worker is paused for memory by distributed's own
memory monitor (its pause threshold, ``distributed.worker.memory.pause``, set below
what the idle process uses): the fit's first pass waits, a warning names the cause
after ``dask_em.stall_warning``, and once the threshold is raised on the worker (the
monitor then resumes it) the fit finishes.
"""

import logging
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

import dask
import dask.array as da
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em.engine.passes import stall_cause, stall_warning_seconds


def _set_pause_fraction(fraction, dask_worker=None):
    dask_worker.memory_manager.memory_pause_fraction = fraction


def _statuses(dask_scheduler=None):
    return [ws.status.name for ws in dask_scheduler.workers.values()]


def _wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_stalled_pass_warns_with_its_cause_then_finishes(caplog):
    rng = np.random.default_rng(0)
    Xn = np.concatenate([rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + 6.0])
    X = da.from_array(Xn, chunks=(1000, -1))
    paused = {"distributed.worker.memory.pause": 0.01}  # of 4 GiB: below any Python process
    with dask.config.set(paused), LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="4GiB"
    ) as cluster, Client(cluster) as client:
        assert _wait_for(lambda: client.run_on_scheduler(_statuses) == ["paused"])
        out = {}

        def fit():
            try:
                out["model"] = GaussianMixture(2, random_state=0, persist=False).fit(X)
            except Exception as exc:  # reported below  # noqa: BLE001
                out["error"] = exc

        with dask.config.set({"dask_em.stall_warning": "1s"}), caplog.at_level(logging.WARNING, logger="dask_em"):
            worker = threading.Thread(target=fit)
            worker.start()
            warned = _wait_for(lambda: "has made no progress" in caplog.text)
            client.run(_set_pause_fraction, 0.9)
            worker.join(120)
        assert warned, caplog.text
        assert not worker.is_alive(), "the fit did not finish once the worker ran again"
        assert "error" not in out, out.get("error")
    message = next(r.getMessage() for r in caplog.records if "has made no progress" in r.getMessage())
    assert "sample-rows" in message and "all 1 workers are paused for memory" in message
    assert "distributed.worker.memory.pause" in message and "dask_em.stall_warning" in message
    model = out["model"]
    assert model.converged_
    np.testing.assert_allclose(np.sort(model.means_[:, 0]), [0.0, 6.0], atol=0.15)


def test_stall_warning_setting():
    assert stall_warning_seconds() == 60.0
    with dask.config.set({"dask_em.stall_warning": "2 minutes"}):
        assert stall_warning_seconds() == 120.0
    with dask.config.set({"dask_em.stall_warning": None}):
        assert stall_warning_seconds() is None
    with dask.config.set({"dask_em.stall_warning": "soon"}), pytest.raises(
        ValueError, match=r"dask_em.stall_warning must be a positive time such as '60s'"
    ):
        stall_warning_seconds()
    assert "no workers" in stall_cause({"workers": 0, "paused": 0})
    assert "1 of 3 workers are paused" in stall_cause({"workers": 3, "paused": 1})
