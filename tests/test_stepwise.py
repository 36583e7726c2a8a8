"""Stepwise (online) EM: exact re-centring, closeness to batch EM, reproducibility,
scheduler independence and one compute per mini-batch."""

import logging

import dask
import dask.array as da
import numpy as np
import pytest
from dask.utils import key_split

from dask_em.engine import (
    MixtureState,
    estep_block,
    finish_with_em,
    run_em,
    run_pass,
    run_stepwise,
)
from dask_em.engine.stepwise import blend_stats, scale_stats
from dask_em.families import get_family
from dask_em.families.gaussian import COVARIANCE_TYPES
from tests._counting import CountComputes
from tests.conftest import make_blobs

OPTIONS = {"reg_covar": 1e-6}


# --------------------------------------------------------------------------- re-centring
def _direct_stats(X, resp, centres, kind):
    """Shifted statistics about ``centres`` (K, D), written out with plain NumPy."""
    K, D = centres.shape
    nk = resp.sum(axis=0)
    s1 = np.stack([resp[:, k] @ (X - centres[k]) for k in range(K)])
    outer = np.stack([(X - centres[k]).T @ ((X - centres[k]) * resp[:, k:k + 1]) for k in range(K)])
    if kind == "full":
        s2 = outer
    elif kind == "tied":
        s2 = outer.sum(axis=0)
    elif kind == "diag":
        s2 = np.stack([resp[:, k] @ (X - centres[k]) ** 2 for k in range(K)])
    else:  # spherical; kmeans: each cluster's inertia
        s2 = np.array([resp[:, k] @ np.sum((X - centres[k]) ** 2, axis=1) for k in range(K)])
    return {"nk": nk, "s1": s1, "s2": s2}


@pytest.mark.parametrize("kind", list(COVARIANCE_TYPES) + ["kmeans"])
def test_recentre_is_exact(kind):
    rng = np.random.default_rng(1)
    n, D, K = 500, 4, 3
    X = rng.normal(size=(n, D)) * 2.0 + 1.5
    resp = rng.dirichlet(np.ones(K), size=n)
    family = get_family("kmeans" if kind == "kmeans" else f"gaussian-{kind}")
    for trial in range(5):
        old = {"means": rng.normal(scale=3.0, size=(K, D))}
        new = {"means": rng.normal(scale=3.0, size=(K, D))}
        stats = _direct_stats(X, resp, old["means"], kind)
        stats["sig"] = np.arange(K, dtype=float)  # a key recentre must pass through
        moved = family.recentre(stats, old, new)
        want = _direct_stats(X, resp, new["means"], kind)
        for key in ("nk", "s1", "s2"):
            np.testing.assert_allclose(moved[key], want[key], rtol=1e-12, err_msg=f"{kind} {key} trial {trial}")
        np.testing.assert_array_equal(moved["sig"], stats["sig"])
        np.testing.assert_array_equal(stats["s1"], _direct_stats(X, resp, old["means"], kind)["s1"])  # input kept


@pytest.mark.parametrize("kind", list(COVARIANCE_TYPES) + ["kmeans"])
def test_recentre_matches_the_family_statistics(kind):
    """The family's own suff_stats about old means, moved, equal its stats about new means."""
    rng = np.random.default_rng(2)
    n, D, K = 400, 3, 4
    X = rng.normal(size=(n, D)) + 10.0
    family = get_family("kmeans" if kind == "kmeans" else f"gaussian-{kind}")
    resp = np.eye(K)[rng.integers(K, size=n)] if family.hard else rng.dirichlet(np.ones(K), size=n)
    params = [{"means": X[rng.choice(n, K, replace=False)] + rng.normal(size=(K, D))} for _ in range(2)]
    if not family.hard:
        for p in params:
            p["precisions_cholesky"] = _identity_factor(kind, K, D)
    old, new = params
    stats = {**family.suff_stats(X, resp, old), "nk": resp.sum(axis=0)}  # the engine adds nk if missing
    moved = family.recentre(stats, old, new)
    want = family.suff_stats(X, resp, new)
    for key in ("s1", "s2"):
        np.testing.assert_allclose(moved[key], want[key], rtol=1e-9, atol=1e-9 * np.abs(want[key]).max())


def _identity_factor(kind, K, D):
    return {"full": np.repeat(np.eye(D)[None], K, axis=0), "tied": np.eye(D), "diag": np.ones((K, D)),
            "spherical": np.ones(K)}[kind]


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
def test_unshifted_families_need_no_recentring(name):
    assert get_family(name).recentre is None


def test_scale_and_blend_leave_counts_and_objects():
    a = {"nk": np.array([1.0, 3.0]), "loglik": -2.0, "n_rows": 4, "far": object()}
    b = {"nk": np.array([3.0, 1.0]), "loglik": -4.0, "n_rows": 2, "far": object()}
    scaled = scale_stats(a, 2.5)
    np.testing.assert_array_equal(scaled["nk"], [2.5, 7.5])
    assert scaled["loglik"] == -5.0 and scaled["n_rows"] == 4 and scaled["far"] is a["far"]
    mixed = blend_stats(a, b, 0.25)
    np.testing.assert_allclose(mixed["nk"], [1.5, 2.5])
    assert mixed["loglik"] == -2.5 and mixed["n_rows"] == 2 and mixed["far"] is b["far"]


# --------------------------------------------------------------------------- stepwise EM
def _blobs(n=8000, chunk=200, seed=1):
    Xn = make_blobs(n=n, seed=seed)
    return Xn, da.from_array(Xn, chunks=(chunk, -1))


def _init(Xn, K=3, seed=0, covariance_type="full"):
    rng = np.random.default_rng(seed)
    D = Xn.shape[1]
    means = Xn[rng.choice(len(Xn), K, replace=False)]
    params = {"means": means, "precisions_cholesky": _identity_factor(covariance_type, K, D)}
    return MixtureState(np.full(K, 1.0 / K), params)


def _mean_loglik(X, family, state):
    stats = run_pass(X, estep_block, (family, [state]), name="score", row_wise=True)[0]
    return stats["loglik"] / stats["weight"]


def test_stepwise_then_batch_finish_reaches_batch_em():
    Xn, X = _blobs()
    assert X.numblocks[0] == 40
    family = get_family("gaussian-full")
    init = _init(Xn)
    (batch,) = run_em(X, family, [init], tol=1e-10, max_iter=500, options=OPTIONS, log_level=logging.DEBUG)
    assert batch.converged
    results = run_stepwise(X, family, [init], options=OPTIONS, passes=3, seed=0, batch_chunks=2,
                           log_level=logging.DEBUG)
    (res,) = results
    assert res.n_iter == 3 * 20 and len(res.history) == 60
    assert all(h["kind"] == "stepwise" for h in res.history)
    assert _mean_loglik(X, family, res.state) > _mean_loglik(X, family, init) + 1.0  # it learnt
    (fin,) = finish_with_em(X, family, results, tol=1e-8, max_iter=200, options=OPTIONS, log_level=logging.DEBUG)
    assert fin.converged
    assert abs(fin.lower_bound - batch.lower_bound) < 1e-3
    assert abs(_mean_loglik(X, family, fin.state) - batch.lower_bound) < 1e-3
    assert fin.n_iter < batch.n_iter  # the stepwise passes saved batch iterations
    assert [h["kind"] for h in fin.history] == ["stepwise"] * 60 + ["batch"] * fin.n_iter


def test_stepwise_stays_at_an_em_fixed_point():
    """From batch EM's converged state, with the whole data as one mini-batch, the
    re-centred, blended statistics give back the same parameters."""
    Xn, X = _blobs(n=2000, chunk=250)
    family = get_family("gaussian-full")
    (batch,) = run_em(X, family, [_init(Xn)], tol=1e-14, max_iter=1000, options=OPTIONS, log_level=logging.DEBUG)
    (res,) = run_stepwise(X, family, [batch.state], options=OPTIONS, passes=4, seed=0, batch_chunks=X.numblocks[0],
                          log_level=logging.DEBUG)
    for key in ("means", "covariances"):
        np.testing.assert_allclose(res.state.params[key], batch.state.params[key], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.state.weights, batch.state.weights, rtol=1e-7)


def test_same_seed_same_results_and_inits_in_lock_step():
    Xn, X = _blobs(n=4000)
    family = get_family("gaussian-diag")
    inits = [_init(Xn, seed=s, covariance_type="diag") for s in (0, 1)]
    kw = dict(options=OPTIONS, passes=2, seed=7, batch_chunks=3, log_level=logging.DEBUG)
    with CountComputes() as counter:
        one = run_stepwise(X, family, inits, **kw)
    n_steps = 2 * (X.numblocks[0] // 3)
    assert counter.count == n_steps  # both starts share every mini-batch's compute
    two = run_stepwise(X, family, inits, **kw)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.state.weights, b.state.weights)
        for key in a.state.params:
            np.testing.assert_array_equal(a.state.params[key], b.state.params[key])
        assert [h["mean_loglik"] for h in a.history] == [h["mean_loglik"] for h in b.history]
    # each start advances as it would alone (the stacked GEMMs round differently)
    (alone,) = run_stepwise(X, family, inits[1:], **kw)
    np.testing.assert_allclose(alone.state.params["means"], one[1].state.params["means"], rtol=1e-9)
    other = run_stepwise(X, family, inits, **{**kw, "seed": 8})
    assert not np.array_equal(other[0].state.params["means"], one[0].state.params["means"])


def test_one_compute_per_mini_batch():
    Xn, X = _blobs(n=8000)
    family = get_family("gaussian-full")
    with CountComputes() as counter:
        (res,) = run_stepwise(X, family, [_init(Xn)], options=OPTIONS, passes=3, seed=0, batch_chunks=6,
                              log_level=logging.DEBUG)
    n_batches = 40 // 6
    assert counter.count == 3 * n_batches == res.n_iter
    assert res.last_stats["nk"].sum() == pytest.approx(8000, rel=1e-12)  # full-data scale
    assert {h["n_blocks"] for h in res.history} == {6, 7}  # 40 blocks in 6 mini-batches
    assert sum(h["n_blocks"] for h in res.history if h["pass"] == 1) == 40


def test_default_mini_batch_has_a_block_per_thread():
    Xn, X = _blobs(n=4000)
    family = get_family("kmeans")
    init = MixtureState(np.full(3, 1 / 3), {"means": Xn[:3].copy()})
    with dask.config.set(scheduler="threads", num_workers=3):
        (res,) = run_stepwise(X, family, [init], passes=1, seed=0, log_level=logging.DEBUG)
    assert min(h["n_blocks"] for h in res.history) >= 3
    assert res.n_iter == X.numblocks[0] // 3


def test_sample_weights_scale_as_repeated_rows():
    """Integer weights on a mini-batch equal to the whole data act as repeated rows."""
    Xn, X = _blobs(n=1200, chunk=300)
    w = np.random.default_rng(3).integers(1, 3, size=len(Xn)).astype(float)
    family = get_family("gaussian-diag")
    init = _init(Xn, covariance_type="diag")
    kw = dict(options=OPTIONS, passes=2, seed=0, batch_chunks=4, log_level=logging.DEBUG)
    (weighted,) = run_stepwise(X, family, [init], sample_weight=da.from_array(w, chunks=300), **kw)
    Xr = np.repeat(Xn, w.astype(int), axis=0)
    (repeated,) = run_stepwise(da.from_array(Xr, chunks=(len(Xr), -1)), family, [init], **{**kw, "batch_chunks": 1})
    np.testing.assert_allclose(weighted.state.params["means"], repeated.state.params["means"], rtol=1e-9)
    np.testing.assert_allclose(weighted.state.weights, repeated.state.weights, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 0.5}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"t0": -1}, "t0"), ({"passes": 0}, "passes"),
     ({"batch_chunks": 0}, "batch_chunks")],
)
def test_invalid_parameters_are_refused(kwargs, match):
    Xn, X = _blobs(n=400)
    with pytest.raises(ValueError, match=match):
        run_stepwise(X, get_family("gaussian-full"), [_init(Xn)], **kwargs)


def test_feature_chunks_are_refused_with_the_fix():
    Xn, X = _blobs(n=400)
    with pytest.raises(ValueError, match=r"rechunk\(\{1: -1\}\)"):
        run_stepwise(X.rechunk((200, 2)), get_family("gaussian-full"), [_init(Xn)])


def test_threaded_and_distributed_give_identical_results(cluster_client):
    Xn, X = _blobs(n=6000, chunk=150)
    family = get_family("gaussian-full")
    inits = [_init(Xn, seed=s) for s in (0, 1)]
    kw = dict(options=OPTIONS, passes=2, seed=5, batch_chunks=4, log_level=logging.DEBUG)
    with dask.config.set(scheduler="threads"):
        local = run_stepwise(X, family, inits, **kw)
    from distributed import get_task_stream

    with get_task_stream(cluster_client) as stream:
        remote = run_stepwise(X, family, inits, **kw)  # the client is the default scheduler
    names = {key_split(task["key"]) for task in stream.data}
    assert "stepwise-gaussian-full" in names and "stepwise-gaussian-full-combine" in names
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.state.weights, b.state.weights)
        for key in a.state.params:
            np.testing.assert_array_equal(a.state.params[key], b.state.params[key])
        assert [h["mean_loglik"] for h in a.history] == [h["mean_loglik"] for h in b.history]


def test_streamed_mini_batches_give_the_same_results_on_every_scheduler(tmp_path, cluster_client):
    """Blocks read from a Zarr store on the threaded scheduler take BlockPasses' direct
    path (the store's graph materialised once, one ``dask.threaded.get`` per step):
    the same tasks and combine tree as a compute of ``X.blocks[...]``, so the same
    bits as the synchronous scheduler and a distributed cluster, one compute a step."""
    import zarr

    from dask_em.engine.passes import BlockPasses

    Xn, _ = _blobs(n=6000, chunk=150)
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=len(Xn))
    z = zarr.create_array(str(tmp_path / "X.zarr"), shape=Xn.shape, chunks=(150, Xn.shape[1]), dtype="f8")
    z[:] = Xn
    zw = zarr.create_array(str(tmp_path / "w.zarr"), shape=w.shape, chunks=(300,), dtype="f8")  # other chunks
    zw[:] = w
    X, weights = da.from_zarr(z), da.from_zarr(zw)
    family = get_family("gaussian-full")
    inits = [_init(Xn, seed=s) for s in (0, 1)]
    kw = dict(options=OPTIONS, passes=2, seed=5, batch_chunks=4, log_level=logging.DEBUG, sample_weight=weights)
    with dask.config.set(scheduler="threads"):
        assert BlockPasses(X, weights)._graph is not None  # the direct path
        assert BlockPasses(da.from_array(Xn, chunks=(150, -1)))._graph is None  # in memory: run_pass
        with CountComputes() as counter:
            threads = run_stepwise(X, family, inits, **kw)
    assert counter.count == threads[0].n_iter == 2 * (40 // 4)
    with dask.config.set(scheduler="sync"):
        assert BlockPasses(X)._graph is None
        sync = run_stepwise(X, family, inits, **kw)
    remote = run_stepwise(X, family, inits, **kw)  # the client is the default scheduler
    for other in (sync, remote):
        for a, b in zip(threads, other):
            np.testing.assert_array_equal(a.state.weights, b.state.weights)
            for key in a.state.params:
                np.testing.assert_array_equal(a.state.params[key], b.state.params[key])
            assert [h["mean_loglik"] for h in a.history] == [h["mean_loglik"] for h in b.history]
    # and the weights are those of the rows: against the same rows in memory
    (memory,) = run_stepwise(da.from_array(Xn, chunks=(150, -1)), family, inits[:1],
                             **{**kw, "sample_weight": da.from_array(w, chunks=150)})
    np.testing.assert_allclose(memory.state.params["means"], threads[0].state.params["means"], rtol=1e-9)


@pytest.mark.parametrize("kind", ["full", "diag", "kmeans"])
def test_averaged_statistics_are_the_mean_of_the_sums_about_one_reference(kind):
    """Polyak-Ruppert averaging of running statistics taken about different
    references equals the mean of the sums written out about the last one."""
    from dask_em.engine.stepwise import _average_into

    rng = np.random.default_rng(4)
    n, D, K = 300, 3, 4
    X = rng.normal(size=(n, D)) * 2.0 + 5.0
    family = get_family("kmeans" if kind == "kmeans" else f"gaussian-{kind}")
    averaged, resps, ref = None, [], None
    for step in range(5):
        resp = rng.dirichlet(np.ones(K), size=n)
        ref = rng.normal(scale=3.0, size=(K, D))
        resps.append(resp)
        averaged = _average_into(family, averaged, _direct_stats(X, resp, ref, kind),
                                 MixtureState(np.full(K, 1.0 / K), {"means": ref}))
    mean, about, count = averaged
    assert count == 5
    np.testing.assert_array_equal(about.params["means"], ref)
    want = [_direct_stats(X, resp, ref, kind) for resp in resps]
    for key in ("nk", "s1", "s2"):
        np.testing.assert_allclose(mean[key], np.mean([w[key] for w in want], axis=0), rtol=1e-10, atol=1e-9)


def test_run_stepwise_average_is_validated():
    X = da.from_array(np.random.default_rng(0).normal(size=(400, 2)), chunks=(100, -1))
    family = get_family("gaussian-diag")
    start = MixtureState(np.full(2, 0.5), {"means": np.zeros((2, 2)), "precisions_cholesky": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"'average' parameter must be a float in the range \[0, 1\)"):
        run_stepwise(X, family, [start], average=1.0)


def test_kmeans_steps_follow_the_hard_family_defaults():
    # a stepwise KMeans decays its steps with alpha=0.51 (Gaussian mixtures: 0.6)
    # unless dask.config sets alpha for every model
    from dask_em import GaussianMixture, KMeans

    X = da.from_array(make_blobs(n=6_000, seed=4), chunks=500)

    def etas(model):
        seen = []  # the history entries of the stepwise steps, as the callback sees them
        model.fit(X, callback=lambda i, results: seen.append(dict(results[0].history[-1])))
        steps = [h for h in seen if h["kind"] == "stepwise"]
        assert len(steps) > 2
        # step t = 1, 2, ...: the first blends into the sample's statistics
        return np.array([h["eta"] for h in steps]), np.arange(1, len(steps) + 1)

    with dask.config.set(scheduler="threads"):
        eta, t = etas(KMeans(3, algorithm="stepwise", random_state=0))
        np.testing.assert_allclose(eta, (t + 2.0) ** -0.51)
        eta, t = etas(GaussianMixture(3, algorithm="stepwise", random_state=0))
        np.testing.assert_allclose(eta, (t + 2.0) ** -0.6)
        with dask.config.set({"dask_em.stepwise.alpha": 0.7}):
            eta, t = etas(KMeans(3, algorithm="stepwise", random_state=0))
        np.testing.assert_allclose(eta, (t + 2.0) ** -0.7)
