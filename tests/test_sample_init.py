"""One-pass initialisation: the row sample, the in-memory starts, and the chunk-read counter."""

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import optimize, stats
from sklearn.cluster import KMeans as SkKMeans

from dask_em.families import get_family
from dask_em.sample_init import initialize_from_sample, initialize_on_sample, lloyd
from dask_em.sampling import (
    _combine_samples,
    _smallest,
    estimation_weights,
    row_uniforms,
    sample_rows,
    seed_state,
)
from dask_em.testing import CountingStore
from tests._counting import CountComputes

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _splitmix64_reference(state, index):
    """splitmix64 output for row ``index``, in Python integers (an independent reference)."""
    mask = 2**64 - 1
    z = (int(state) + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 11) / 2.0**53


def _blobs(n=30_000, seed=0):
    """Three well separated Gaussian blobs in 2-D with known parameters."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, 0.0], [0.0, 1.5]], [[2.0, -0.4], [-0.4, 0.8]]])
    weights = np.array([0.5, 0.3, 0.2])
    labels = rng.choice(3, size=n, p=weights)
    X = np.empty((n, 2))
    for k in range(3):
        sel = labels == k
        X[sel] = rng.multivariate_normal(means[k], covs[k], size=sel.sum())
    return X, labels, means, covs, weights


def _zarr(tmp_path, X, chunks, name="X.zarr"):
    path = tmp_path / name
    z = zarr.create_array(str(path), shape=X.shape, chunks=chunks, dtype=X.dtype)
    z[:] = X
    store = CountingStore(path)
    arr = zarr.open_array(store, mode="r")
    return store, arr, da.from_zarr(arr)


def _align(got, want):
    cost = ((got[:, None, :] - want[None, :, :]) ** 2).sum(axis=2)
    rows, cols = optimize.linear_sum_assignment(cost)
    return cols.argsort()  # got[order] matches want


# --------------------------------------------------------------------------- the sample
def test_row_uniforms_match_a_reference_splitmix64():
    state = seed_state(42)
    got = row_uniforms(state, 1000, 50)
    want = [_splitmix64_reference(state, i) for i in range(1000, 1050)]
    np.testing.assert_array_equal(got, want)
    # and they are uniform on [0, 1)
    u = row_uniforms(seed_state(1), 0, 200_000)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_sample_is_the_same_for_any_chunking():
    rng = np.random.default_rng(0)
    Xn = rng.normal(size=(20_000, 3)).astype(np.float32)
    Xn[rng.choice(20_000, 50, replace=False), 1] = np.nan
    wn = rng.uniform(0.0, 2.0, size=20_000)
    wn[rng.choice(20_000, 300, replace=False)] = 0.0
    results = []
    for chunks in [20_000, 7_000, 333, (1, 999, 5_000, 4_000, 10_000)]:
        X = da.from_array(Xn, chunks=(chunks, -1))
        w = da.from_array(wn, chunks=(chunks,))
        for split_every in (2, 8):
            plain = sample_rows(X, 1_500, 7, split_every=split_every, return_index=True)
            weighted = sample_rows(X, 1_500, 7, sample_weight=w, split_every=split_every, return_index=True)
            results.append((plain, weighted))
    for plain, weighted in results[1:]:
        for got, want in zip(plain + weighted, results[0][0] + results[0][1]):
            if isinstance(want, dict):
                assert got == want
            else:
                np.testing.assert_array_equal(got, want)
    (rows, weights, counts, index), _ = results[0]
    assert weights is None and rows.dtype == np.float64 and rows.shape == (1_500, 3)
    np.testing.assert_array_equal(rows, Xn[index].astype(np.float64))
    # another seed gives another sample
    other = sample_rows(da.from_array(Xn, chunks=(7_000, -1)), 1_500, 8, return_index=True)[3]
    assert len(np.intersect1d(other, index)) < 300


def test_ties_are_broken_by_the_row_index_in_any_grouping():
    rng = np.random.default_rng(9)
    keys = rng.integers(0, 5, size=400).astype(float)  # many equal keys
    keys[rng.choice(400, 30, replace=False)] = np.inf  # left-out rows
    index = rng.permutation(400)
    m = 57
    order = np.lexsort((index, keys))
    want = np.sort(index[order[:m]])
    np.testing.assert_array_equal(np.sort(index[_smallest(keys, index, m)]), want)
    for split in ([100, 250], [1, 2, 399], list(range(7, 400, 37))):
        parts = []
        for part in np.split(np.arange(400), split):
            keep = _smallest(keys[part], index[part], m)
            parts.append({"rows": keys[part][keep, None], "keys": keys[part][keep], "index": index[part][keep],
                          "weights": None, "m": m, "n_rows": 0, "n_nonfinite": 0, "n_bad_weight": 0})
        np.testing.assert_array_equal(np.sort(_combine_samples(parts)["index"]), want)


def test_sample_size_cap_and_nesting():
    rng = np.random.default_rng(1)
    Xn = rng.normal(size=(5_000, 4))
    X = da.from_array(Xn, chunks=(700, -1))
    rows, _, counts, index = sample_rows(X, 1_000, 3, return_index=True)
    assert rows.shape == (1_000, 4) and counts["n_sample"] == 1_000 and len(np.unique(index)) == 1_000
    assert 0 < counts["threshold"] < np.inf
    # the first m rows (in key order) are the sample of size m
    small = sample_rows(X, 100, 3, return_index=True)[3]
    np.testing.assert_array_equal(small, index[:100])
    # the byte cap: 8 bytes * 4 features * 250 rows
    capped = sample_rows(X, 1_000, 3, max_bytes=8 * 4 * 250)[0]
    np.testing.assert_array_equal(capped, rows[:250])
    # more rows asked than there are: all of them, threshold inf
    rows, _, counts, index = sample_rows(X, 10_000, 3, return_index=True)
    assert counts["n_sample"] == 5_000 and counts["threshold"] == np.inf
    np.testing.assert_array_equal(np.sort(index), np.arange(5_000))


def test_sample_is_uniform():
    rng = np.random.default_rng(2)
    N, n = 200_000, 20_000
    Xn = rng.normal(loc=[3.0, -1.0], scale=[2.0, 0.5], size=(N, 2))
    Xn[:, 0] += np.linspace(0.0, 4.0, N)  # a trend along the rows: a biased sampler shows it
    X = da.from_array(Xn, chunks=(9_999, -1))
    rows, _, _, index = sample_rows(X, n, 11, return_index=True)
    fpc = np.sqrt((N - n) / (N - 1))  # sampling without replacement
    se = Xn.std(axis=0) / np.sqrt(n) * fpc
    assert np.all(np.abs(rows.mean(axis=0) - Xn.mean(axis=0)) < 4 * se)
    se_var = Xn.var(axis=0) * np.sqrt(2.0 / n)
    assert np.all(np.abs(rows.var(axis=0) - Xn.var(axis=0)) < 4 * se_var)
    deciles = np.bincount(index * 10 // N, minlength=10)
    assert stats.chisquare(deciles).pvalue > 1e-3


def _inclusion_closed_form(w, n):
    """Inclusion probabilities of bottom-n sampling with Exp(w) keys: ``1 - exp(-w tau)``
    with ``tau`` solving ``sum_i (1 - exp(-w_i tau)) = n`` (exact as N grows)."""
    tau = optimize.brentq(lambda t: np.sum(-np.expm1(-w * t)) - n, 1e-12, 1e3)
    return -np.expm1(-w * tau)


def test_weighted_sampling_follows_the_weights():
    rng = np.random.default_rng(3)
    N, n, n_seeds = 30_000, 3_000, 20
    wn = rng.choice([0.0, 1.0, 3.0], size=N)
    Xn = rng.normal(size=(N, 2)) + wn[:, None]  # the rows' values depend on their weight
    X = da.from_array(Xn, chunks=(4_000, -1))
    w = da.from_array(wn, chunks=4_000)
    hits = np.zeros(N)
    totals, means = [], []
    for seed in range(n_seeds):
        rows, weights, counts, index = sample_rows(X, n, seed, sample_weight=w, return_index=True)
        np.testing.assert_array_equal(weights, wn[index])
        hits[index] += 1
        ew = estimation_weights(weights, counts["threshold"])
        totals.append(ew.sum())
        means.append(ew @ rows / ew.sum())
    assert hits[wn == 0].sum() == 0
    p = _inclusion_closed_form(wn, n)
    for value in (1.0, 3.0):
        sel = wn == value
        observed = hits[sel].sum() / n_seeds
        expected = p[sel].sum()
        sd = np.sqrt((p[sel] * (1 - p[sel])).sum() / n_seeds)
        assert abs(observed - expected) < 5 * sd + 1, (value, observed, expected)
    ratio = hits[wn == 3].mean() / hits[wn == 1].mean()
    assert 2.6 < ratio < 3.0  # ~3x; a little less as the sample is 10% of the data
    # rank-conditioning weights: unbiased estimates of weighted sums
    assert abs(np.mean(totals) / wn.sum() - 1) < 0.01
    np.testing.assert_allclose(np.mean(means, axis=0), wn @ Xn / wn.sum(), atol=0.02)


def test_nan_rows_and_bad_weights_are_counted_and_left_out():
    rng = np.random.default_rng(4)
    Xn = rng.normal(size=(3_000, 3))
    nan_rows = rng.choice(3_000, 40, replace=False)
    Xn[nan_rows[:30], 0] = np.nan
    Xn[nan_rows[30:], 2] = np.inf
    wn = rng.uniform(0.5, 1.5, size=3_000)
    wn[:10] = -1.0  # bad
    wn[10:25] = 0.0  # left out, not an error
    X = da.from_array(Xn, chunks=(512, -1))
    rows, _, counts, index = sample_rows(X, 10_000, 0, return_index=True)
    assert counts["n_nonfinite"] == 40 and counts["n_bad_weight"] == 0
    assert counts["n_rows"] == 2_960 == rows.shape[0] and np.isfinite(rows).all()
    assert not np.isin(nan_rows, index).any()
    rows, weights, counts, index = sample_rows(X, 10_000, 0, sample_weight=da.from_array(wn, 512), return_index=True)
    finite = np.isfinite(Xn).all(axis=1)
    assert counts["n_nonfinite"] == 40 and counts["n_bad_weight"] == 10
    assert counts["n_rows"] == int((finite & (wn > 0)).sum()) == rows.shape[0]
    assert (weights > 0).all() and not np.isin(np.arange(25), index).any()


def test_sample_rows_explains_bad_input():
    X = da.zeros((100, 4), chunks=(10, 2))
    with pytest.raises(ValueError, match=r"rechunk\(\{1: -1\}\)"):
        sample_rows(X, 10, 0)
    X = da.from_array(np.ones((100, 2)), chunks=(10, -1))
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        sample_rows(X[X[:, 0] > 0], 10, 0)
    with pytest.raises(ValueError, match="n_rows must be a positive int"):
        sample_rows(X, 0, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        sample_rows(X, 10, -3)


# --------------------------------------------------------------------------- the counter
def test_counting_store_counts_chunk_reads_exactly(tmp_path):
    Xn = np.random.default_rng(5).normal(size=(10_000, 3))
    store, arr, X = _zarr(tmp_path, Xn, chunks=(1_000, 3))
    assert arr.nchunks == 10 and store.n_chunk_reads == 0  # metadata reads do not count
    np.testing.assert_allclose(X.sum().compute(), Xn.sum())
    assert store.passes(arr) == 1.0 and set(store.chunk_reads.values()) == {1}
    X.mean(axis=0).compute()
    assert store.passes(arr) == 2.0 and set(store.chunk_reads.values()) == {2}
    store.reset()
    X[:2_500].sum().compute()  # three chunks
    assert store.n_chunk_reads == 3 and sorted(store.chunk_reads) == ["c/0/0", "c/1/0", "c/2/0"]


# --------------------------------------------------------------------------- the starts
@pytest.mark.parametrize("n_init", [1, 5])
def test_initialize_from_sample_reads_the_store_once(tmp_path, n_init):
    Xn, _, means, covs, weights = _blobs()
    store, arr, X = _zarr(tmp_path, Xn, chunks=(2_000, 2))
    family = get_family("gaussian-full")
    seeds = list(range(10, 10 + n_init))
    with CountComputes() as computes:
        starts = initialize_from_sample(X, family, 3, "kmeans", seeds, options={"reg_covar": 1e-6}, n_sample=5_000)
    assert computes.count == 1
    assert store.passes(arr) == 1.0 and set(store.chunk_reads.values()) == {1}
    assert sorted(s.seed for s in starts) == seeds
    lls = [s.sample_loglik for s in starts]
    assert lls == sorted(lls, reverse=True)
    best = starts[0].state
    order = _align(best.params["means"], means)
    np.testing.assert_allclose(best.params["means"][order], means, atol=0.1)
    np.testing.assert_allclose(best.params["covariances"][order], covs, atol=0.15)
    np.testing.assert_allclose(best.weights[order], weights, atol=0.03)


@pytest.mark.parametrize("method", ["kmeans", "k-means++", "random_from_data", "random"])
def test_every_method_gives_finite_ranked_starts(method):
    Xn = _blobs(n=6_000, seed=1)[0]
    X = da.from_array(Xn, chunks=(1_000, -1))
    family = get_family("gaussian-diag")
    starts = initialize_from_sample(X, family, 3, method, [0, 1, 2], options={"reg_covar": 1e-6}, max_iter_sample=3)
    assert len(starts) == 3
    for s in starts:
        assert s.state.weights.shape == (3,) and abs(s.state.weights.sum() - 1) < 1e-12
        assert np.isfinite(s.state.params["means"]).all() and np.isfinite(s.state.params["covariances"]).all()
        assert 1 <= s.n_iter <= 3 and np.isfinite(s.sample_loglik)
    no_em = initialize_from_sample(X, family, 3, method, [0, 1, 2], options={"reg_covar": 1e-6}, em_on_sample=False)
    assert all(s.n_iter == 0 for s in no_em)
    # EM on the sample only raises the likelihood of a start
    before = {s.seed: s.sample_loglik for s in no_em}
    assert all(s.sample_loglik >= before[s.seed] - 1e-9 for s in starts)


def test_the_starts_do_not_depend_on_the_chunking():
    Xn = _blobs(n=8_000, seed=2)[0]
    family = get_family("gaussian-full")
    runs = [
        initialize_from_sample(da.from_array(Xn, chunks=(c, -1)), family, 3, "kmeans", [0, 1], n_sample=3_000)
        for c in (8_000, 777)
    ]
    for a, b in zip(*runs):
        assert a.seed == b.seed and a.sample_loglik == b.sample_loglik
        np.testing.assert_array_equal(a.state.params["means"], b.state.params["means"])


def test_given_centers_and_check():
    Xn, _, means, _, _ = _blobs(n=6_000, seed=3)
    X = da.from_array(Xn, chunks=(1_000, -1))
    family = get_family("gaussian-full")
    seen = []
    starts = initialize_from_sample(
        X, family, 3, "kmeans", [0, 1], centers=means + 0.5, check=seen.append, em_on_sample=False
    )
    assert seen and seen[0]["n_rows"] == 6_000 and seen[0]["n_nonfinite"] == 0
    # the hard assignment to centres near the truth recovers the blobs' means
    np.testing.assert_allclose(starts[0].state.params["means"], means, atol=0.1)
    Xbad = Xn.copy()
    Xbad[5, 1] = np.nan

    def refuse(counts):
        if counts["n_nonfinite"]:
            raise ValueError(f"{counts['n_nonfinite']} rows with NaN")

    with pytest.raises(ValueError, match="1 rows with NaN"):
        initialize_from_sample(da.from_array(Xbad, chunks=(1_000, -1)), family, 3, "kmeans", [0], check=refuse)


def test_unknown_method_fails_before_any_pass():
    X = da.from_array(np.ones((100, 2)), chunks=(10, -1))
    with CountComputes() as computes, pytest.raises(ValueError, match="Unknown init method 'kmeans\\+\\+'"):
        initialize_from_sample(X, get_family("gaussian-full"), 2, "kmeans++", [0])
    assert computes.count == 0
    with pytest.raises(ValueError, match="fewer than n_components=5"):
        initialize_from_sample(X, get_family("gaussian-full"), 5, "kmeans", [0], n_sample=3)


def test_weights_steer_the_start():
    # one blob gets weight 0: it is never sampled, and the two components go to the others
    Xn, labels, means, _, _ = _blobs(n=9_000, seed=4)
    wn = np.where(labels == 2, 0.0, 1.0)
    X = da.from_array(Xn, chunks=(1_000, -1))
    w = da.from_array(wn, chunks=1_000)
    (start,) = initialize_from_sample(X, get_family("gaussian-full"), 2, "kmeans", [0], sample_weight=w)
    got = start.state.params["means"]
    got = got[np.argsort(got[:, 0])]
    np.testing.assert_allclose(got, means[:2], atol=0.1)


def test_in_memory_lloyd_matches_scikit_learn():
    Xn = _blobs(n=5_000, seed=5)[0]
    rng = np.random.default_rng(0)
    start = Xn[rng.choice(len(Xn), 4, replace=False)]
    ours = lloyd(Xn, start, tol=0.0, max_iter=300)
    sk = SkKMeans(4, init=start, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(Xn)
    np.testing.assert_allclose(ours, sk.cluster_centers_, atol=1e-8)
    # integer weights equal repeated rows
    reps = rng.integers(1, 4, size=len(Xn))
    weighted = lloyd(Xn, start, weights=reps.astype(float), tol=0.0, max_iter=300)
    repeated = lloyd(np.repeat(Xn, reps, axis=0), start, tol=0.0, max_iter=300)
    np.testing.assert_allclose(weighted, repeated, atol=1e-8)


def test_in_memory_work_uses_the_threaded_schedulers_thread_count():
    from dask.system import CPU_COUNT

    from dask_em.settings import in_memory_threads

    with dask.config.set(num_workers=None):
        assert in_memory_threads() == CPU_COUNT
    with dask.config.set(num_workers=3):
        assert in_memory_threads() == 3


@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_on_threads_matches_scikit_learn_whatever_the_thread_count(weighted):
    """Several slabs of rows (20,000 x 16: six), shared among 1, 2 or 3 threads: the
    same centres bit for bit, and scikit-learn's Lloyd fixed point."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 16)) + 1.5 * rng.integers(0, 4, 20_000)[:, None]
    start = X[rng.choice(len(X), 5, replace=False)]
    w = rng.uniform(0.5, 2.0, len(X)) if weighted else None
    runs = [lloyd(X, start, w, tol=0.0, max_iter=300, threads=t) for t in (1, 2, 3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    sk = SkKMeans(5, init=start, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(X, sample_weight=w)
    np.testing.assert_allclose(runs[0], sk.cluster_centers_, atol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
def test_sample_estep_in_pieces_matches_a_row_by_row_reference(weighted):
    """The sample's E-step in pieces (20,000 rows: three) on 1, 2 or 3 threads: the same
    bits, and the log-likelihood and counts scipy gives row by row."""
    from scipy.special import logsumexp

    from dask_em.engine import MixtureState
    from dask_em.families.gaussian import cholesky_from_precisions
    from dask_em.sample_init import SAMPLE_PIECE_ROWS, estep_sample

    X, _, means, covs, mix = _blobs(n=20_000, seed=4)
    assert len(X) > 2 * SAMPLE_PIECE_ROWS
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
    prec_chol = cholesky_from_precisions(np.linalg.inv(covs), "full")
    state = MixtureState(mix, {"means": means, "precisions_cholesky": prec_chol})
    family = get_family("gaussian-full")
    runs = [estep_sample(X, w, (family, [state]), threads=t)[0] for t in (1, 2, 3)]
    for run in runs[1:]:
        assert all(np.array_equal(run[key], runs[0][key]) for key in runs[0])
    log_dens = np.stack([stats.multivariate_normal(means[k], covs[k]).logpdf(X) for k in range(3)], axis=1)
    log_dens += np.log(mix)
    row_ll = logsumexp(log_dens, axis=1)
    r = np.exp(log_dens - row_ll[:, None])
    ww = np.ones(len(X)) if w is None else w
    np.testing.assert_allclose(runs[0]["loglik"], ww @ row_ll, rtol=1e-11)
    np.testing.assert_allclose(runs[0]["nk"], ww @ r, rtol=1e-11)
    np.testing.assert_allclose(runs[0]["weight"], ww.sum(), rtol=1e-13)


def test_initialize_on_sample_kmeans_family():
    # the hard family (K-means) goes through the same in-memory path
    Xn, _, means, _, _ = _blobs(n=4_000, seed=6)
    (start,) = initialize_on_sample(Xn, get_family("kmeans"), 3, "k-means++", [0])
    order = _align(start.state.params["means"], means)
    np.testing.assert_allclose(start.state.params["means"][order], means, atol=0.15)
    with dask.config.set(scheduler="sync"):  # nothing here touches dask
        initialize_on_sample(Xn, get_family("kmeans"), 3, "random_from_data", [0, 1])


def _overlapping(n, K=8, D=16, seed=0):
    """Anisotropic Gaussians about one standard deviation apart: k-means has several
    local optima here, and one k-means++ seeding often ends in a poor one."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(K, D))
    mixers = np.stack([rng.normal(size=(D, D)) * 0.5 + np.eye(D) * 0.5 for _ in range(K)])
    labels = rng.integers(0, K, n)
    return np.einsum("nd,nde->ne", rng.normal(size=(n, D)), mixers[labels]) + centers[labels]


def test_kmeans_start_keeps_the_best_of_several_seedings():
    # a sample larger than k-means++'s seeding subset (10,000 rows): the "kmeans"
    # start reaches the partition of scikit-learn's best of 10 full k-means runs for
    # every seed, where one seeding (scikit-learn's n_init=1) often does not
    X = _overlapping(40_000)
    best = SkKMeans(8, n_init=10, random_state=0).fit(X).inertia_
    single = [SkKMeans(8, n_init=1, random_state=s).fit(X).inertia_ for s in range(10)]
    assert max(single) > 1.02 * best  # the data have worse local optima to fall into
    family = get_family("kmeans")
    for seed in range(10):
        (start,) = initialize_on_sample(X, family, 8, "kmeans", [seed], em_on_sample=False, rank=False)
        ours = ((X[:, None, :] - start.state.params["means"][None]) ** 2).sum(axis=2).min(axis=1).sum()
        assert ours == pytest.approx(best, rel=1e-4), seed


def test_threaded_and_distributed_draw_the_same_sample(cluster_client):
    Xn = _blobs(n=8_000, seed=7)[0]
    wn = np.random.default_rng(7).uniform(0.0, 2.0, size=8_000)
    X = da.from_array(Xn, chunks=(1_000, -1))
    w = da.from_array(wn, chunks=1_000)
    on_cluster = sample_rows(X, 2_000, 3, sample_weight=w, return_index=True)
    with dask.config.set(scheduler="threads"):
        threaded = sample_rows(X, 2_000, 3, sample_weight=w, return_index=True)
    assert cluster_client.status == "running"
    for got, want in zip(on_cluster, threaded):
        if isinstance(want, dict):
            assert got == want
        else:
            np.testing.assert_array_equal(got, want)


def test_order_by_key_breaks_ties_by_index():
    """The sample's order is (key, row index): a plain sort when the keys differ, the
    two-key sort when some are equal."""
    from dask_em.sampling import _by_key

    rng = np.random.default_rng(0)
    keys = rng.random(1_000)
    index = rng.permutation(1_000)
    np.testing.assert_array_equal(_by_key(keys, index), np.lexsort((index, keys)))
    keys[::3] = 0.5  # many equal keys
    np.testing.assert_array_equal(_by_key(keys, index), np.lexsort((index, keys)))


def test_sample_of_every_row_is_the_same_whatever_the_chunking():
    """Every row kept (small data): the parts are joined whole, the same sample."""
    Xn = _blobs(n=1_000, seed=8)[0]
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(Xn))
    ref = sample_rows(da.from_array(Xn, chunks=(1_000, -1)), 5_000, 3, da.from_array(w, chunks=1_000))
    assert ref[0].shape == Xn.shape
    for chunks in (97, 250, 333):
        got = sample_rows(da.from_array(Xn, chunks=(chunks, -1)), 5_000, 3, da.from_array(w, chunks=chunks))
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        assert got[2] == ref[2]
    # the rows are the data's, in the order of their keys
    np.testing.assert_array_equal(np.sort(ref[0], axis=0), np.sort(Xn, axis=0))


def _kmeans_plusplus_reference(X, K, rng, w):
    """Greedy k-means++ with exact distances, one candidate at a time (the same draws)."""
    n = len(X)
    trials = 2 + int(np.log(K))
    chosen = [rng.choice(n, p=w / w.sum())]
    d2 = ((X - X[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, K):
        pot = w * d2
        cand = rng.choice(n, size=trials, p=pot / pot.sum())
        cand_d2 = np.stack([np.minimum(d2, ((X - X[c]) ** 2).sum(axis=1)) for c in cand])
        best = int(np.argmin(cand_d2 @ w))
        chosen.append(cand[best])
        d2 = cand_d2[best]
    return X[chosen]


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_plusplus_equals_the_one_candidate_at_a_time_reference(weighted):
    from dask_em.initialization import kmeans_plusplus

    X = _blobs(n=40_000, seed=9)[0] + 1e3  # several slabs; far from the origin
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(X)) if weighted else None
    ours = kmeans_plusplus(X, 8, np.random.default_rng(5), weights=w)
    ref = _kmeans_plusplus_reference(X, 8, np.random.default_rng(5), np.ones(len(X)) if w is None else w)
    np.testing.assert_array_equal(ours, ref)
