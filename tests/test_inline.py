"""Passes over small in-memory data run in process (engine/inline.py): the graph's
result bit for bit, no ``dask.compute``, and dask input still one compute per pass."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest

from dask_em import GaussianMixture, KMeans
from dask_em.data import numpy_block_rows
from dask_em.engine import MixtureState, estep_block, run_pass
from dask_em.engine.inline import in_process
from dask_em.families import get_family
from dask_em.sampling import sample_rows
from tests._counting import CountComputes
from tests.conftest import make_blobs


def _same(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
        return
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize("rows, split_every", [(5_000, 8), (97, 2), (97, 8), (1_000, 3)])
@pytest.mark.parametrize("weighted", [False, True])
def test_in_process_pass_equals_the_graph_bit_for_bit(scheduler, rows, split_every, weighted):
    Xn = make_blobs(n=3_000, seed=3)
    rng = np.random.default_rng(1)
    X = da.from_array(Xn, chunks=(rows, -1))
    w = da.from_array(rng.uniform(0.5, 2.0, len(Xn)), chunks=rows) if weighted else None
    family = get_family("gaussian-full")
    states = [
        MixtureState(np.full(3, 1 / 3), family.m_step(
            family.suff_stats(Xn, np.eye(3)[rng.integers(0, 3, len(Xn))], {"means": np.zeros((3, Xn.shape[1]))}),
            {"means": np.zeros((3, Xn.shape[1]))}, reg_covar=1e-6))
        for _ in range(2)
    ]
    kw = dict(name="estep-test", extra=w, split_every=split_every, row_wise=True)
    with dask.config.set(scheduler=scheduler):
        with CountComputes() as graph_count:
            expected = run_pass(X, estep_block, (family, states), **kw)
        with CountComputes() as inline_count, in_process():
            got = run_pass(X, estep_block, (family, states), **kw)
            sample = sample_rows(X, 500, 0, w, split_every=split_every)
        expected_sample = sample_rows(X, 500, 0, w, split_every=split_every)
    assert graph_count.count == 1 and inline_count.count == 0
    _same(got, expected)
    for a, b in zip(sample, expected_sample):
        if isinstance(a, dict):
            assert a == b
        elif a is not None:
            np.testing.assert_array_equal(a, b)


def test_large_data_on_several_threads_stay_on_dask():
    """Above INLINE_BYTES, a pass the threaded scheduler splits into tasks stays a graph."""
    Xn = np.random.default_rng(0).standard_normal((40_000, 16))  # 5 MiB, 4 blocks
    X = da.from_array(Xn, chunks=(10_000, -1))
    family = get_family("kmeans")
    state = MixtureState(np.full(2, 0.5), {"means": Xn[:2].copy()})
    with dask.config.set(scheduler="threads", num_workers=2), CountComputes() as counter, in_process():
        run_pass(X, estep_block, (family, [state]), name="estep-test", row_wise=True)
    assert counter.count == 1
    with dask.config.set(scheduler="sync"), CountComputes() as counter, in_process():
        run_pass(X, estep_block, (family, [state]), name="estep-test", row_wise=True)
    assert counter.count == 0  # no threads to gain: in process


class CountTasks(CountComputes):
    """Also counts the tasks dask's local scheduler runs."""

    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _pretask(self, key, dsk, state):
        self.tasks += 1


@pytest.mark.parametrize("per_task, row_wise", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("weighted", [False, True])
def test_in_memory_blocks_on_threads_run_the_graphs_tasks_bit_for_bit(per_task, row_wise, weighted, monkeypatch):
    """Persisted blocks on the threaded scheduler: the pass runs tree_pass's tasks as a
    plain graph (passes._pass_of_in_memory_blocks), one graph on dask's scheduler, whose
    callbacks see every task, with the result of ``dask.compute(tree_pass(...))`` bit
    for bit."""
    from dask_em.engine import passes
    from dask_em.engine.passes import tree_pass

    taken = []
    plain = passes._pass_of_in_memory_blocks

    def watched(*args):  # the plain graph's path, and whether it ran the pass
        result = plain(*args)
        taken.append(result is not passes._NOT_IN_PROCESS)
        return result

    monkeypatch.setattr(passes, "_pass_of_in_memory_blocks", watched)

    Xn = make_blobs(n=40_000, seed=4)  # above INLINE_BYTES with the weights: not in the calling thread
    rng = np.random.default_rng(2)
    X = da.from_array(Xn, chunks=(5_000, -1)).persist()
    w = da.from_array(rng.uniform(0.5, 2.0, len(Xn)), chunks=5_000).persist() if weighted else None
    family = get_family("gaussian-full")
    resp = np.eye(3)[rng.integers(0, 3, len(Xn))]
    zeros = {"means": np.zeros((3, Xn.shape[1]))}
    params = family.m_step(family.suff_stats(Xn, resp, zeros), zeros, reg_covar=1e-6)
    payload = (family, [MixtureState(np.full(3, 1 / 3), params)])
    kw = dict(name="estep-test", extra=w, split_every=3, row_wise=row_wise, blocks_per_task=per_task)
    with dask.config.set(scheduler="threads", num_workers=2):
        (expected,) = dask.compute(tree_pass(X, estep_block, payload, **kw))
        with CountTasks() as counter:
            got = run_pass(X, estep_block, payload, **kw)
    _same(got, expected)
    assert taken == [True]
    tasks = level = 8 // per_task  # the kernels' tasks, then a tree of fan-in 3
    while level > 1:
        level = -(-level // 3)
        tasks += level
    assert counter.count == 1 and counter.tasks == tasks


def test_numpy_input_fits_equal_dask_input_fits_bit_for_bit():
    """The same data as NumPy (passes in process) and as a dask array of the same chunks
    (one compute per pass): the same fit, bit for bit."""
    Xn = make_blobs(n=6_000, seed=7)
    rows = numpy_block_rows(*Xn.shape)
    X = da.from_array(Xn, chunks=(rows, -1))
    assert X.numblocks[0] > 1
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(Xn))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for make in (lambda: KMeans(3, random_state=0), lambda: GaussianMixture(3, random_state=0, n_init=2)):
            with CountComputes() as counter:
                a = make().fit(Xn, sample_weight=w)
            assert counter.count == 0
            with CountComputes() as counter:
                b = make().fit(X, sample_weight=da.from_array(w, chunks=rows))
            assert counter.count >= 1 + b.n_iter_
            assert a.n_iter_ == b.n_iter_ and a.converged_ == b.converged_
            if isinstance(a, KMeans):
                np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
                assert a.inertia_ == b.inertia_
            else:
                np.testing.assert_array_equal(a.means_, b.means_)
                np.testing.assert_array_equal(a.covariances_, b.covariances_)
                assert a.lower_bound_ == b.lower_bound_


@pytest.mark.parametrize("n, d, itemsize", [(1_000_000, 16, 8), (1_000_000, 16, 4), (200_000, 64, 8), (5_000, 4, 8),
                                            (10_000_000, 16, 8), (3_000, 4, 8), (4_097, 2, 8), (1, 3, 8),
                                            (4_097, 4_096, 8), (10_000_003, 1_024, 8), (3, 2_097_153, 8)])
@pytest.mark.parametrize("cores", [1, 2, 3, 8])
def test_numpy_input_blocks_are_equal_and_fill_every_core(n, d, itemsize, cores):
    """Blocks of at most 16 MiB (but about 1,024 rows at least), at least 4 above 4,096 rows,
    about equal (a pass's last round keeps every core busy), their count a multiple of
    the cores where the rows allow it (up to 1,024 blocks: beyond, rounding the rows
    up may leave one block fewer)."""
    rows = numpy_block_rows(n, d, itemsize, cores=cores)
    sizes = [min(rows, n - start) for start in range(0, n, rows)]
    assert sum(sizes) == n
    assert rows * d * itemsize <= 16 * 2**20 or rows < 2_048  # the floor, rounded to the cores, wins
    assert min(sizes) >= 1_000 or len(sizes) == 1
    if n > 4_096 * cores:
        assert len(sizes) >= 4
    assert max(sizes) - min(sizes) < len(sizes)
    if n >= 1_024 * cores and len(sizes) <= 1_024:
        assert len(sizes) % cores == 0


def test_numpy_input_blocks_follow_the_scheduler_threads():
    """By default, as many blocks as a multiple of the threads that will run them
    (dask's num_workers for the local schedulers)."""
    for threads in (3, 5):
        with dask.config.set(num_workers=threads):
            rows = numpy_block_rows(1_000_000, 16)
        assert -(-1_000_000 // rows) % threads == 0
