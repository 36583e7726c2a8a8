"""The engine: one compute per iteration, tree reductions, task names, schedulers."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from dask.utils import key_split

from dask_em import GaussianMixture
from dask_em.engine import MixtureState, add_stats, estep_block, tree_pass
from dask_em.families import get_family
from tests._counting import CountComputes
from tests.conftest import make_blobs


def _given_init(X, K=3):
    rng = np.random.default_rng(0)
    means = X[rng.choice(len(X), K, replace=False)]
    return dict(
        weights_init=np.full(K, 1.0 / K),
        means_init=means,
        precisions_init=np.repeat(np.eye(X.shape[1])[None], K, axis=0),
    )


def test_one_compute_per_iteration():
    Xn = make_blobs()
    X = da.from_array(Xn, chunks=(500, -1))
    init = _given_init(Xn)
    with CountComputes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, tol=0, max_iter=7, persist=False, algorithm="em", **init).fit(X)
    assert counter.count == 7
    with CountComputes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, tol=0, max_iter=7, persist=True, **init).fit(X + 0)  # a graph to compute
    assert counter.count == 8  # one pass to load the data into memory, then one per iteration
    with CountComputes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, tol=0, max_iter=7, persist=True, **init).fit(X)
    assert counter.count == 7  # the graph holds the blocks already: nothing to load
    with CountComputes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, tol=0, max_iter=7, **init).fit(Xn)
    assert counter.count == 0  # NumPy input this small: every pass runs in process (engine/inline.py)


@pytest.mark.parametrize("init_params", ["kmeans", "random", "random_from_data", "k-means++"])
def test_initialisation_costs_one_pass(init_params):
    X = da.from_array(make_blobs(), chunks=(500, -1))
    with CountComputes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(
            3, tol=0, max_iter=4, n_init=3, init_params=init_params, random_state=0, persist=False,
            algorithm="em",
        ).fit(X)
    assert counter.count == 1 + 4  # one sampling pass for the n_init=3 starts, then shared EM passes


def test_split_every_does_not_change_the_result():
    Xn = make_blobs(seed=7)
    X = da.from_array(Xn, chunks=(97, -1))  # 31 blocks: several tree levels
    init = _given_init(Xn)
    fits = []
    for split_every in (2, 3, 16):
        with dask.config.set({"dask_em.split_every": split_every}), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(GaussianMixture(3, tol=0, max_iter=10, **init).fit(X))
    for gm in fits[1:]:
        np.testing.assert_allclose(gm.means_, fits[0].means_, rtol=1e-12)
        np.testing.assert_allclose(gm.covariances_, fits[0].covariances_, rtol=1e-11)


def test_bad_split_every_is_explained():
    X = da.from_array(make_blobs(), chunks=(500, -1))
    with dask.config.set({"dask_em.split_every": 1}), pytest.raises(ValueError, match="split_every"):
        GaussianMixture(3, **_given_init(X.compute())).fit(X)


def test_pass_graph_has_readable_deterministic_names():
    X = da.from_array(make_blobs(), chunks=(250, -1))
    fam = get_family("gaussian-diag")
    state = MixtureState(np.full(2, 0.5), {"means": np.zeros((2, 4)), "precisions_cholesky": np.ones((2, 4))})
    a = tree_pass(X, estep_block, (fam, [state]), name="estep-gaussian-diag", split_every=4)
    b = tree_pass(X, estep_block, (fam, [state]), name="estep-gaussian-diag", split_every=4)
    assert a.key == b.key
    moved = MixtureState(np.full(2, 0.5), {"means": np.ones((2, 4)), "precisions_cholesky": np.ones((2, 4))})
    assert tree_pass(X, estep_block, (fam, [moved]), name="estep-gaussian-diag", split_every=4).key != a.key
    assert tree_pass(X * 2, estep_block, (fam, [state]), name="estep-gaussian-diag", split_every=4).key != a.key
    groups = {key_split(k) for k in a.dask.keys()}
    assert {"estep-gaussian-diag", "estep-gaussian-diag-combine"} <= groups
    n_estep = sum(key_split(k) == "estep-gaussian-diag" for k in a.dask.keys())
    assert n_estep == X.numblocks[0]
    # the parameters are one key in the graph, not copied into every task
    assert sum(key_split(k) == "estep-gaussian-diag-params" for k in a.dask.keys()) == 1


def _diag_state(D=4):
    means = np.array([np.zeros(D), np.full(D, 3.0)])
    return MixtureState(np.array([0.4, 0.6]), {"means": means, "precisions_cholesky": np.ones((2, D))})


@pytest.mark.parametrize("in_memory", ["rows and weights", "rows", "neither"])
@pytest.mark.parametrize("row_wise", [False, True])
@pytest.mark.parametrize("per_task", [2, 3, 40])
def test_grouped_blocks_give_the_same_statistics(per_task, row_wise, in_memory):
    X = da.from_array(make_blobs(), chunks=(90, -1))
    w = da.from_array(np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0]), chunks=90)
    if in_memory != "rows and weights":  # blocks are tasks of the graph, not arrays in it
        w = w.rechunk(77)
    if in_memory == "neither":
        X = X * 1.0
    fam = get_family("gaussian-diag")
    payload = (fam, [_diag_state()])
    one = tree_pass(X, estep_block, payload, name="estep-gaussian-diag", extra=w).compute()
    grouped = tree_pass(
        X, estep_block, payload, name="estep-gaussian-diag", extra=w, blocks_per_task=per_task, row_wise=row_wise
    )
    n_tasks = sum(key_split(k) == "estep-gaussian-diag" for k in grouped.dask.keys())
    assert n_tasks == -(-X.numblocks[0] // per_task)
    got = grouped.compute()
    for key in one[0]:
        np.testing.assert_allclose(got[0][key], one[0][key], rtol=1e-12)
    # against the statistics of the whole array as one block
    whole = estep_block(X.compute(), w.compute(), payload, 0)
    np.testing.assert_allclose(got[0]["s2"], whole[0]["s2"], rtol=1e-12)


def test_blocks_per_task_groups_small_blocks_and_keeps_threads_busy():
    from dask_em.engine.passes import TASK_BYTES, blocks_per_task

    small = da.zeros((1_000_000, 16), chunks=(1_000, -1))  # 1,000 blocks of 125 KiB
    assert blocks_per_task(small, 2) == 1_000 // 8  # at least 4 tasks per thread
    assert blocks_per_task(small, 1) == int(TASK_BYTES // (1_000 * 16 * 8))
    big = da.zeros((1_000_000, 16), chunks=(200_000, -1))  # 24 MiB blocks
    assert blocks_per_task(big, 2) == 1


def test_threaded_pass_over_many_small_blocks_runs_few_tasks():
    X = da.from_array(make_blobs(n=4000), chunks=(10, -1)).persist()  # 400 blocks

    class CountTasks(Callback):
        def __init__(self):
            super().__init__()
            self.names = []

        def _posttask(self, key, result, dsk, state, id):
            self.names.append(key_split(key))

    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    counter = CountTasks()
    init = _given_init(X.compute())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two iterations do not converge
        with dask.config.set(scheduler="threads", num_workers=2), counter:
            gm = GaussianMixture(3, max_iter=2, tol=0, **init).fit(X)
        ref = SkGaussianMixture(3, max_iter=2, tol=0, **init).fit(X.compute())
    per_pass = counter.names.count("estep-gaussian-full") / gm.n_iter_
    assert per_pass == 8  # 400 blocks of 320 bytes, 4 tasks per thread
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-10)


def test_slab_rows_bound_the_work_arrays():
    from dask_em.engine.estep import SLAB_ROWS, slab_rows

    assert slab_rows(8, 16) == SLAB_ROWS
    assert slab_rows(8, 16, itemsize=4) == 2 * SLAB_ROWS  # float32: the same bytes
    assert slab_rows(16, 64) == 2048  # (rows, K, D) float64 work arrays of 16 MiB
    assert slab_rows(1000, 1000) == 1024  # never fewer rows than that


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_several_starts_in_one_call_match_each_start_alone(cov_type):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = make_blobs(n=3000, seed=11)
    w = np.random.default_rng(3).uniform(0.2, 3.0, X.shape[0])
    fam = get_family(f"gaussian-{cov_type}")
    assert fam.stacks == (cov_type != "tied")
    states = []
    for seed in range(3):  # three different starts, as n_init makes them
        sk = SkGaussianMixture(3, covariance_type=cov_type, max_iter=1, init_params="random", random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk.fit(X)
        params = {"means": sk.means_, "precisions_cholesky": sk.precisions_cholesky_}
        states.append(MixtureState(sk.weights_, params))
    together = estep_block(X, w, (fam, states), 0)
    for state, got in zip(states, together):
        (alone,) = estep_block(X, w, (fam, [state]), 0)
        assert got.keys() == alone.keys()
        for key in alone:
            np.testing.assert_allclose(got[key], alone[key], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("kind", ["bernoulli", "poisson", "categorical"])
def test_discrete_starts_in_one_call_match_each_start_alone(kind):
    from dask_em.families.categorical import make_family

    rng = np.random.default_rng(5)
    n, D, K = 2000, 5, 3
    if kind == "categorical":
        C = (2, 3, 4, 3, 2)
        fam = make_family(C)
        X = np.stack([rng.integers(0, c, n) for c in C], axis=1).astype(float)
        raw = rng.uniform(0.1, 1.0, size=(3, K, D, max(C)))
        raw *= np.arange(max(C))[None, None, None, :] < np.array(C)[None, None, :, None]
        params = [{"probs": r / r.sum(axis=-1, keepdims=True)} for r in raw]
    else:
        fam = get_family(kind)
        X = (rng.random((n, D)) < 0.4).astype(float) if kind == "bernoulli" else rng.poisson(3.0, (n, D)).astype(float)
        params = [{"means": rng.uniform(0.2, 0.8, (K, D)) * (1 if kind == "bernoulli" else 6)} for _ in range(3)]
    assert fam.stacks
    states = [MixtureState(np.array([0.2, 0.3, 0.5]), p) for p in params]
    w = rng.uniform(0.5, 2.0, n)
    together = estep_block(X, w, (fam, states), 0)
    for state, got in zip(states, together):
        (alone,) = estep_block(X, w, (fam, [state]), 0)
        for key in alone:
            np.testing.assert_allclose(got[key], alone[key], rtol=1e-12, atol=1e-9)


def test_grouped_responsibilities_normalise_each_mixture():
    from scipy.special import softmax

    from dask_em.engine.estep import responsibilities

    wlp = np.random.default_rng(0).normal(scale=30.0, size=(500, 6))
    resp, row_ll = responsibilities(wlp.copy(), False, groups=2)
    assert row_ll.shape == (2, 500)
    for g in range(2):
        part = wlp[:, 3 * g : 3 * g + 3]
        np.testing.assert_allclose(resp[:, 3 * g : 3 * g + 3], softmax(part, axis=1), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(row_ll[g], np.log(np.exp(part).sum(axis=1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_responsibilities_below_the_floor_are_exactly_zero(dtype):
    from scipy.special import softmax

    from dask_em.engine.estep import log_tiny, responsibilities

    rng = np.random.default_rng(1)
    # log-ratios from 0 down to far below the smallest normal number's log
    wlp = rng.uniform(-1.5, 0.0, size=(1000, 4)) * np.array([1.0, 100.0, 600.0, 2000.0])
    wlp = wlp.astype(dtype)
    floor = 0.5 * log_tiny(dtype)
    resp, row_ll = responsibilities(wlp.copy(), False, floor=floor)
    exact = wlp.astype(np.float64)  # the reference, from the very same inputs
    expected = softmax(exact, axis=1)
    low = exact - exact.max(axis=1, keepdims=True) <= floor
    assert low.sum() > 500 and (~low).sum() > 500  # both sides of the floor are exercised
    assert np.all(resp[low] == 0.0) and np.all(resp >= 0.0)
    assert np.all(resp[~low] >= np.finfo(dtype).tiny)  # normal numbers only: no subnormal arithmetic later
    # exact but for at most exp(floor) (absolute) taken off each responsibility, and
    # for the rounding of log-ratios of up to 3,000 in the dtype
    eps = 4 * np.finfo(dtype).eps * 3000
    np.testing.assert_allclose(resp, expected, rtol=eps, atol=1.01 * np.exp(floor))
    far = exact - exact.max(axis=1, keepdims=True) > floor + 40.0
    np.testing.assert_allclose(resp[far], expected[far], rtol=eps)
    np.testing.assert_allclose(row_ll, np.log(np.exp(exact).sum(axis=1)), rtol=eps, atol=eps)


def test_floored_exp_matches_its_masked_fallback():
    from dask_em.engine.estep import _exp_floored, _exp_floored_masked, _exp_in_arrays

    a = np.random.default_rng(2).uniform(-800.0, 5.0, size=(7, 1001))
    assert _exp_in_arrays(-354.0, a.dtype.str) is not None  # the branch-free path runs here
    fast, masked = a.copy(), a.copy()
    _exp_floored(fast, -354.0)
    _exp_floored_masked(masked, -354.0)
    np.testing.assert_array_equal(fast == 0.0, a <= -354.0)
    np.testing.assert_array_equal(masked == 0.0, a <= -354.0)
    np.testing.assert_allclose(fast, masked, rtol=1e-15, atol=1.01 * np.exp(-354.0))
    np.testing.assert_allclose(masked[a > -354.0], np.exp(a[a > -354.0]), rtol=1e-15)


def test_estep_statistics_add_over_blocks():
    X = make_blobs(seed=8)
    fam = get_family("gaussian-full")
    init = _given_init(X)
    from dask_em.families.gaussian import cholesky_from_precisions

    state = MixtureState(
        init["weights_init"],
        {"means": init["means_init"], "precisions_cholesky": cholesky_from_precisions(init["precisions_init"], "full")},
    )
    whole = estep_block(X, None, (fam, [state]), 0)
    parts = add_stats([estep_block(X[:1234], None, (fam, [state]), 0), estep_block(X[1234:], None, (fam, [state]), 1)])
    for key in whole[0]:
        np.testing.assert_allclose(parts[0][key], whole[0][key], rtol=1e-12)


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_mean_loglik_never_decreases(cov_type):
    X = da.from_array(make_blobs(n=2000, seed=9, spread=2.0), chunks=(300, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(4, covariance_type=cov_type, tol=0, max_iter=40, init_params="random", random_state=1).fit(X)
    lb = np.array(gm.lower_bounds_)
    assert len(lb) == 40
    assert np.all(np.diff(lb) >= -1e-9 * np.abs(lb[1:]))
    assert lb[-1] > lb[0]


def test_threaded_and_distributed_give_the_same_fit(cluster_client):
    Xn = make_blobs(seed=10)
    X = da.from_array(Xn, chunks=(400, -1))
    kw = dict(n_components=3, covariance_type="full", tol=0, max_iter=8, n_init=2, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dask.config.set(scheduler="threads"):
            local = GaussianMixture(**kw).fit(X)
        distributed = GaussianMixture(**kw).fit(X)  # the client is the default scheduler
    assert cluster_client.status == "running"
    np.testing.assert_allclose(distributed.weights_, local.weights_, rtol=1e-12)
    np.testing.assert_allclose(distributed.means_, local.means_, rtol=1e-12)
    np.testing.assert_allclose(distributed.covariances_, local.covariances_, rtol=1e-12)
    labels = distributed.predict(X).compute()
    np.testing.assert_array_equal(labels, local.predict(Xn))
    # NumPy input is shipped to the workers once and fitted there too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_numpy = GaussianMixture(**kw).fit(Xn)
    assert from_numpy.lower_bound_ == pytest.approx(local.lower_bound_, rel=1e-3)


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_bad_rows_are_left_out_exactly_far_from_the_origin(cov_type):
    # NaN rows among the first rows of the first slab, and infinite values further
    # on, in data 1e6 from the origin: the E-step's statistics are those of the
    # good rows alone, to the precision of rows centred on the means (a reference
    # point taken from the bad rows would cost ~eps * 1e12 in every square)
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from dask_em.families.gaussian import cholesky_from_precisions

    rng = np.random.default_rng(3)
    K, D, n = 3, 4, 20_000
    means = 1e6 + rng.normal(scale=3.0, size=(K, D))
    X = means[rng.integers(0, K, n)] + rng.normal(size=(n, D))
    X[[0, 5, 200], 1] = np.nan
    X[[9_000, 15_000], [0, 3]] = [np.inf, -np.inf]
    good = np.isfinite(X).all(axis=1)
    weights = np.array([0.2, 0.3, 0.5])
    covariances = np.stack([np.diag(rng.uniform(0.5, 2.0, D)) for _ in range(K)])
    fam = get_family(f"gaussian-{cov_type}")
    precisions = np.linalg.inv(covariances)
    given = precisions if cov_type == "full" else np.diagonal(precisions, axis1=1, axis2=2)
    state = MixtureState(weights, {"means": means, "precisions_cholesky": cholesky_from_precisions(given, cov_type)})
    (stats,) = estep_block(X, None, (fam, [state]), 0)

    Xg = X[good]
    log_dens = np.stack([multivariate_normal(means[k], covariances[k]).logpdf(Xg) for k in range(K)], axis=1)
    log_dens += np.log(weights)
    row_ll = logsumexp(log_dens, axis=1)
    R = np.exp(log_dens - row_ll[:, None])
    assert stats["n_rows"] == good.sum() and stats["n_nonfinite"] == n - good.sum()
    np.testing.assert_allclose(stats["loglik"], row_ll.sum(), rtol=1e-11)
    np.testing.assert_allclose(stats["nk"], R.sum(axis=0), rtol=1e-11)
    for k in range(K):
        diff = Xg - means[k]
        np.testing.assert_allclose(stats["s1"][k], R[:, k] @ diff, rtol=1e-8, atol=1e-8 * n)
        second = (R[:, k, None] * diff).T @ diff
        expected = second if cov_type == "full" else np.diag(second)
        np.testing.assert_allclose(stats["s2"][k], expected, rtol=1e-9)
