"""KMeans against scikit-learn's KMeans from the same init array and max_iter."""

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

from dask_em import KMeans


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(c, 1.0, (300, 3)) for c in (-3.0, 0.0, 4.0)]) + 1e3


# numpy's Lloyd step and the compiled one (dask_em/families/_kmeans_numba.py)
KERNELS = ["numpy", "numba"]


def _inputs(X):
    return [X, da.from_array(X, chunks=(217, -1))]


@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_parity_with_sklearn(X, tol, weighted, kernels):
    init = X[[0, 1, 2, 3, 400]]
    w = np.random.default_rng(1).integers(1, 4, len(X)).astype(float) if weighted else None
    sk = SkKMeans(5, init=init, n_init=1, max_iter=50, tol=tol).fit(X, sample_weight=w)
    for inp in _inputs(X):
        with dask.config.set({"dask_em.kernels": kernels}):
            km = KMeans(5, init=init, max_iter=50, tol=tol).fit(inp, sample_weight=w)
        np.testing.assert_allclose(km.cluster_centers_, sk.cluster_centers_, rtol=1e-13)
        assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-12)
        np.testing.assert_array_equal(np.asarray(km.labels_), sk.labels_)
        assert km.n_iter_ == sk.n_iter_
        # sklearn expands |x|^2 - 2 x.c + |c|^2 (data at 1e3): only ~1e-8 accurate
        np.testing.assert_allclose(np.asarray(km.transform(inp)), sk.transform(X), atol=1e-6)
        assert km.score(inp, sample_weight=w) == pytest.approx(sk.score(X, sample_weight=w), rel=1e-12)


@pytest.mark.parametrize("kernels", KERNELS)
def test_empty_clusters_are_reseeded_like_sklearn(kernels):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (300, 2)) for c in (-3.0, 0.0, 4.0)])
    init = np.array([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-60.0, 0.0]])  # two start empty
    sk = SkKMeans(4, init=init, n_init=1, max_iter=30, tol=0).fit(X)
    for inp in _inputs(X):
        with dask.config.set({"dask_em.kernels": kernels}):
            km = KMeans(4, init=init, max_iter=30, tol=0).fit(inp)
        assert np.all(np.isfinite(km.cluster_centers_))
        np.testing.assert_allclose(km.cluster_centers_, sk.cluster_centers_, rtol=1e-12)
        assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-12)
        assert len(np.unique(np.asarray(km.labels_))) == 4


def test_more_clusters_than_distinct_rows_stays_finite():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 10, axis=0)
    km = KMeans(3, init=np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]]), max_iter=5).fit(X)
    assert np.all(np.isfinite(km.cluster_centers_)) and km.inertia_ == 0.0


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_string_inits_find_the_clusters(X, init):
    Xd = da.from_array(X, chunks=(217, -1))
    km = KMeans(3, init=init, random_state=0).fit(Xd)
    sk = SkKMeans(3, random_state=0, n_init=5).fit(X)
    assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-9)
    assert isinstance(km.labels_, da.Array)  # lazy for dask input
    assert km.labels_.compute().shape == (len(X),)


def test_one_compute_per_iteration(X):
    Xd = da.from_array(X, chunks=(217, -1))
    init = X[[0, 1, 2]]
    calls = []

    class Count(dask.callbacks.Callback):
        def _start(self, dsk):
            calls.append(1)

    with Count():
        km = KMeans(3, init=init, max_iter=20, tol=0, persist=False, algorithm="lloyd").fit(Xd)
    # one pass per iteration; the inertia pass is skipped after strict convergence
    assert len(calls) == km.n_iter_


def test_errors(X):
    with pytest.raises(ValueError, match="'init' parameter of KMeans"):
        KMeans(3, init="kmeans").fit(X)
    with pytest.raises(ValueError, match=r"'init' should have the shape \(3, 3\)"):
        KMeans(3, init=X[:2]).fit(X)
    with pytest.raises(ValueError, match="sample_weight contains 1 negative"):
        KMeans(3).fit(X, sample_weight=np.r_[-1.0, np.ones(len(X) - 1)])
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        KMeans(3, init=X[:3], n_init=3).fit(X)


def _generic_family():
    """The kmeans family without its fused E-step: log_prob, argmax, one-hot, suff_stats."""
    import dataclasses

    from dask_em.families import get_family

    return dataclasses.replace(get_family("kmeans"), hard_stats=None)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_fused_estep_equals_the_generic_path(weighted, kernels):
    # hard_stats (numpy's: one GEMM for the distances, a (K, n) indicator, GEMMs for the
    # sums; or the compiled loop) gives the statistics of the one-hot path, on data far from the origin, over
    # several slabs and blocks, with duplicated centres (ties go to the first)
    from dask_em.engine import MixtureState, estep_block
    from dask_em.families import get_family

    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 4)) * 3.0 + 1e3
    w = rng.uniform(0.5, 2.0, len(X)) if weighted else None
    C = X[:6].copy()
    C[4] = C[1]  # an exact tie for every row nearest to it
    state = MixtureState(np.full(6, 1 / 6), {"means": C})
    with dask.config.set({"dask_em.kernels": kernels}):
        (fast,) = estep_block(X, w, (get_family("kmeans"), [state]), 0)
    (slow,) = estep_block(X, w, (_generic_family(), [state]), 0)
    assert fast["nk"][4] == 0.0 and fast["nk"][1] > 0
    np.testing.assert_allclose(fast["nk"], slow["nk"], rtol=1e-14)  # counts: exact unweighted
    np.testing.assert_allclose(fast["s1"], slow["s1"], rtol=1e-9, atol=1e-9 * np.abs(slow["s1"]).max())
    np.testing.assert_allclose(fast["s2"], slow["s2"], rtol=1e-11)
    assert fast["loglik"] == pytest.approx(slow["loglik"], rel=1e-12)
    for a, b in zip(fast["far"].arrays(), slow["far"].arrays()):
        np.testing.assert_array_equal(a, b)
    for key in ("weight", "n_rows", "n_nonfinite", "n_bad_weight"):
        assert fast[key] == slow[key]


@pytest.mark.parametrize("kernels", KERNELS)
def test_fused_estep_signature_detects_a_changed_partition(kernels):
    from dask_em.engine import MixtureState, estep_block
    from dask_em.families import get_family

    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(c, 1.0, (5_000, 3)) for c in (-20.0, 0.0, 20.0)]) + 1e3
    fam = get_family("kmeans")
    C = np.array([[-20.0] * 3, [0.0] * 3, [20.0] * 3]) + 1e3

    def stats(centres):
        with dask.config.set({"dask_em.kernels": kernels}):
            (s,) = estep_block(X, None, (fam, [MixtureState(np.full(3, 1 / 3), {"means": centres})]), 0)
        return s

    a, b = stats(C), stats(C + 1e-3)  # the centres move, the partition does not
    np.testing.assert_array_equal(a["nk"], b["nk"])
    np.testing.assert_array_equal(a["sig"], b["sig"])
    moved = C.copy()
    moved[1] = C[2] - 1.0  # takes rows of cluster 2
    assert not np.array_equal(stats(moved)["sig"], a["sig"])


@pytest.mark.parametrize("kernels", KERNELS)
def test_fused_estep_shares_rows_between_starts(kernels):
    # n_init starts of a pass share the rows about the block's reference point
    from dask_em.engine import MixtureState, estep_block
    from dask_em.families import get_family

    rng = np.random.default_rng(5)
    X = rng.normal(size=(30_000, 5)) + 50.0
    fam = get_family("kmeans")
    states = [MixtureState(np.full(4, 0.25), {"means": X[rng.choice(len(X), 4)]}) for _ in range(3)]
    with dask.config.set({"dask_em.kernels": kernels}):
        together = estep_block(X, None, (fam, states), 0)
        separate = [estep_block(X, None, (fam, [state]), 0)[0] for state in states]
    for got, alone in zip(together, separate):
        for key in ("nk", "s1", "s2", "sig", "loglik"):
            np.testing.assert_array_equal(got[key], alone[key])
