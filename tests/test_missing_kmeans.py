"""KMeans with nan_policy="marginalize" (k-POD), against a row-by-row reference loop.

The reference is written here from the definition (Chi, Chi & Baraniuk 2016): each row
goes to the centre nearest over its observed coordinates (the first of equally near
ones); the new centre is the mean of the completed rows assigned to it, a row's missing
coordinates filled with its centre's. Plain Python loops over rows and coordinates.
"""

import dask.array as da
import numpy as np
import pytest

from dask_em import KMeans

CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 1.0], [0.0, 6.0, 6.0, -2.0]])


def _gappy(seed=0, n=400, fraction=0.2):
    """Three clusters in 4-D, ``fraction`` of the entries NaN, two rows all NaN."""
    rng = np.random.default_rng(seed)
    X = CENTRES[rng.integers(0, 3, n)] + rng.standard_normal((n, 4))
    X[rng.random(X.shape) < fraction] = np.nan
    X[[4, 30]] = np.nan
    return X


def _as(X, kind):
    return X if kind == "numpy" else da.from_array(X, chunks=(90, 4))


def _assign(X, centres):
    """Per row: label (-1 for a row with nothing observed) and observed squared distances (K,)."""
    labels, dists = [], []
    for x in X:
        d = np.array([sum((x[j] - c[j]) ** 2 for j in range(len(x)) if not np.isnan(x[j])) for c in centres])
        labels.append(-1 if np.isnan(x).all() else int(np.argmin(d)))
        dists.append(np.full(len(centres), np.nan) if np.isnan(x).all() else d)
    return np.array(labels), np.array(dists)


def _kpod_step(X, centres):
    """One k-POD iteration: new centres (K, D) from the completed rows."""
    labels, _ = _assign(X, centres)
    sums = np.zeros_like(centres)
    counts = np.zeros(len(centres))
    for x, k in zip(X, labels):
        if k < 0:
            continue
        sums[k] += np.where(np.isnan(x), centres[k], x)
        counts[k] += 1
    assert (counts > 0).all()  # the data here never empty a cluster
    return sums / counts[:, None]


def _inertia(X, centres):
    labels, dists = _assign(X, centres)
    keep = labels >= 0
    return float(dists[keep, labels[keep]].sum())


START = CENTRES + np.array([[1.5, -1.0, 0.5, 0.0], [-1.0, 1.0, 1.5, 0.5], [1.0, -1.5, -1.0, 1.0]])


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("n_iter", [1, 4])
def test_iterations_match_the_reference_loop(n_iter, kind):
    X = _gappy()
    km = KMeans(3, init=START, n_init=1, max_iter=n_iter, tol=0.0, nan_policy="marginalize").fit(_as(X, kind))
    expected = START
    for _ in range(n_iter):
        expected = _kpod_step(X, expected)
    assert km.n_iter_ == n_iter
    np.testing.assert_allclose(km.cluster_centers_, expected, rtol=1e-12, atol=1e-12)
    assert km.inertia_ == pytest.approx(_inertia(X, expected), rel=1e-12)
    labels, _ = _assign(X, expected)
    np.testing.assert_array_equal(np.asarray(km.labels_), labels)


def test_converges_to_the_observed_coordinate_means_not_at_the_first_stable_partition():
    """With gaps the centres keep moving after the partition stops changing; the fit
    stops at the fixed point: each coordinate the mean of the cluster's observed values."""
    X = _gappy(seed=1, fraction=0.3)
    km = KMeans(3, init=START, n_init=1, max_iter=500, tol=0.0, nan_policy="marginalize").fit(X)
    labels, _ = _assign(X, km.cluster_centers_)
    expected = np.array([[np.nanmean(X[labels == k, j]) for j in range(4)] for k in range(3)])
    np.testing.assert_allclose(km.cluster_centers_, expected, rtol=1e-10, atol=1e-10)
    # the reference iteration from the same start reaches the same partition
    centres = START
    for _ in range(8):
        centres = _kpod_step(X, centres)
    np.testing.assert_array_equal(_assign(X, centres)[0], labels)
    assert km.n_iter_ > 8  # geometric convergence of the filled coordinates, past the stable partition


def test_inertia_never_increases():
    X = _gappy(seed=2, n=600, fraction=0.35)
    history = []
    km = KMeans(3, init="random", n_init=1, max_iter=100, tol=0.0, nan_policy="marginalize", random_state=3)
    km.fit(X, callback=lambda it, results: history.append(results[0].history[-1]["mean_loglik"]))
    inertia = -np.array(history) * (len(X) - 2)  # the mean per row counted: two rows hold no value
    assert len(inertia) > 3
    assert np.all(np.diff(inertia) <= 1e-12 * inertia[1:])
    assert km.inertia_ <= inertia[-1] * (1 + 1e-12)
    assert km.inertia_ == pytest.approx(_inertia(X, km.cluster_centers_), rel=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_without_nan_the_fit_is_the_ordinary_fit_bit_for_bit(kind):
    X = _gappy(fraction=0.0)
    X = X[~np.isnan(X).any(axis=1)]
    fits = [KMeans(3, nan_policy=p, n_init=3, init="random", random_state=0).fit(_as(X, kind))
            for p in ("raise", "marginalize")]
    for attr in ("cluster_centers_", "inertia_", "n_iter_"):
        np.testing.assert_array_equal(getattr(fits[0], attr), getattr(fits[1], attr))
    for method in ("predict", "transform"):
        np.testing.assert_array_equal(np.asarray(getattr(fits[0], method)(_as(X, kind))),
                                      np.asarray(getattr(fits[1], method)(_as(X, kind))))
    assert fits[0].score(X) == fits[1].score(X)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_predict_transform_score_impute_use_the_observed_coordinates(kind):
    X = _gappy(seed=3)
    km = KMeans(3, init=START, n_init=1, nan_policy="marginalize").fit(X)
    centres = km.cluster_centers_
    labels, dists = _assign(X, centres)
    empty = labels < 0
    assert empty.sum() >= 2 and np.isnan(X[~empty]).any(axis=1).sum() > 100
    np.testing.assert_array_equal(np.asarray(km.predict(_as(X, kind))), labels)
    distances = np.asarray(km.transform(_as(X, kind)))
    np.testing.assert_allclose(distances[~empty], np.sqrt(dists[~empty]), rtol=1e-12)
    assert np.isnan(distances[empty]).all()
    assert km.score(_as(X, kind)) == pytest.approx(-_inertia(X, centres), rel=1e-12)
    filled = np.asarray(km.impute(_as(X, kind)))
    expected = X.copy()
    for i, k in enumerate(labels):
        if k >= 0:
            expected[i] = np.where(np.isnan(X[i]), centres[k], X[i])
    np.testing.assert_array_equal(filled, expected)  # NaN where nothing was observed
