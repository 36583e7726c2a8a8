"""select_n_components with a KMeans template: the X-means BIC, the true K, xarray input.

The BIC of each candidate is recomputed in the test from the X-means formula (Pelleg &
Moore 2000; ``tests._references.xmeans_bic``) with scikit-learn's KMeans fitted from the
same initial centres (its inertia and cluster sizes), or from the candidate's centres by
a nearest-centre loop; never from dask-em's own table.
"""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from numpy.testing import assert_allclose
from sklearn.cluster import KMeans as SKKMeans

from dask_em import KMeans, select_n_components
from tests._references import nearest_centre, xmeans_bic

TRUE_K = 4


def separated_blobs(n=800, seed=0):
    """Isotropic unit-variance blobs around the corners of a square of side 12 (2-D)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0], [12.0, 12.0]])
    comp = rng.integers(0, TRUE_K, size=n)
    return centres[comp] + rng.normal(size=(n, 2))


def initial_centres(X, k, seed=1):
    return X[np.random.default_rng(seed).choice(len(X), k, replace=False)]


def sklearn_bic(X, init):
    ref = SKKMeans(len(init), init=init, n_init=1, max_iter=300, tol=1e-4, algorithm="lloyd").fit(X)
    sizes = np.bincount(ref.labels_, minlength=len(init))
    return xmeans_bic(ref.inertia_, sizes, X.shape[1]), ref


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_bic_is_the_xmeans_formula_with_sklearn_kmeans(k):
    X = separated_blobs()
    init = initial_centres(X, k)
    sel = select_n_components(KMeans(init=init), X, [k])
    (row,) = sel.table
    expected, ref = sklearn_bic(X, init)
    assert row["n_components"] == k
    assert row["n_parameters"] == k * 2 + (k - 1) + 1
    assert row["bic"] == pytest.approx(expected, rel=1e-10)
    assert row["aic"] == pytest.approx(row["bic"] - row["n_parameters"] * (np.log(len(X)) - 2), rel=1e-10)
    assert_allclose(sel.best_estimator.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-12)


def test_picks_the_true_k_on_separated_blobs():
    X = separated_blobs()
    sel = select_n_components(KMeans(random_state=0, n_init=3), X, range(1, 8))
    assert [r["n_components"] for r in sel.table] == list(range(1, 8))
    assert sel.best_estimator.n_clusters == TRUE_K
    assert min(sel.table, key=lambda r: r["bic"])["n_components"] == TRUE_K
    for row, est in zip(sel.table, sel.estimators):  # each row from its own centres, by a plain loop
        labels = nearest_centre(X, est.cluster_centers_)
        inertia = ((X - est.cluster_centers_[labels]) ** 2).sum()
        sizes = np.bincount(labels, minlength=row["n_components"])
        assert row["bic"] == pytest.approx(xmeans_bic(inertia, sizes, 2), rel=1e-9)


def _cube(X, seed=2):
    """X as a (time, y, x, band) cube chunked along time and y, some pixels NaN."""
    rng = np.random.default_rng(seed)
    values = X.reshape(4, 10, 20, 2).copy()
    nan_pixels = rng.random(values.shape[:3]) < 0.1
    values[nan_pixels, rng.integers(0, 2, size=values.shape[:3])[nan_pixels]] = np.nan
    cube = xr.DataArray(values, dims=("time", "y", "x", "band"), coords={"band": ["u", "v"]})
    return cube.chunk({"time": 1, "y": 5}), values[~nan_pixels]


def test_xarray_selection_equals_the_selection_on_flat_finite_rows():
    cube, rows = _cube(separated_blobs())
    assert len(rows) < 800
    tables = {"cube": [], "flat": []}
    for k in range(1, 7):
        init = initial_centres(rows, k)
        cube_sel = select_n_components(KMeans(init=init), cube, [k], feature_dim="band")
        flat_sel = select_n_components(KMeans(init=init), rows, [k])
        tables["cube"] += cube_sel.table
        tables["flat"] += flat_sel.table
        assert cube_sel.best_estimator.feature_names_in_.tolist() == ["u", "v"]
        assert_allclose(cube_sel.best_estimator.cluster_centers_, flat_sel.best_estimator.cluster_centers_,
                        rtol=1e-10, atol=1e-12)
        expected, _ = sklearn_bic(rows, init)
        assert cube_sel.table[0]["bic"] == pytest.approx(expected, rel=1e-10)
    for a, b in zip(tables["cube"], tables["flat"]):
        assert a["n_components"] == b["n_components"] and a["n_iter"] == b["n_iter"]
        for key in ("bic", "aic", "log_likelihood"):
            assert a[key] == pytest.approx(b[key], rel=1e-10), key
    best = min(tables["cube"], key=lambda r: r["bic"])
    assert best["n_components"] == TRUE_K

    # a selection over several K at once: the NaN pixels are left out, the true K wins
    sel = select_n_components(KMeans(random_state=0, n_init=3), cube, range(1, 7), feature_dim="band")
    assert sel.best_estimator.n_clusters == TRUE_K
    for row, est in zip(sel.table, sel.estimators):
        labels = nearest_centre(rows, est.cluster_centers_)
        inertia = ((rows - est.cluster_centers_[labels]) ** 2).sum()
        sizes = np.bincount(labels, minlength=row["n_components"])
        assert row["bic"] == pytest.approx(xmeans_bic(inertia, sizes, 2), rel=1e-9)
    labels = sel.best_estimator.predict(cube)
    assert isinstance(labels, xr.DataArray) and int(labels.isnull().sum()) == cube.shape[0] * 200 - len(rows)


def test_marginalize_counts_the_observed_coordinates_only():
    """k-POD's inertia covers the observed coordinates, and so does its criterion: the
    X-means BIC with ``R M`` replaced by the number of observed coordinates, recomputed
    here from the candidates' centres by a row-by-row loop over observed coordinates."""
    rng = np.random.default_rng(3)
    X = separated_blobs(n=600, seed=3)
    X[rng.random(X.shape) < 0.15] = np.nan
    X = X[np.isfinite(X).any(axis=1)]
    sel = select_n_components(KMeans(random_state=0, nan_policy="marginalize"), da.from_array(X, chunks=150),
                              [2, 4, 5])
    R, M = X.shape
    observed = int(np.isfinite(X).sum())
    assert observed < R * M
    for row, est in zip(sel.table, sel.estimators):
        C = est.cluster_centers_
        labels, inertia = [], 0.0
        for x in X:
            o = np.isfinite(x)
            d = ((C[:, o] - x[o]) ** 2).sum(axis=1)
            labels.append(int(np.argmin(d)))
            inertia += d.min()
        sizes = np.bincount(labels, minlength=len(C)).astype(float)
        nz = sizes[sizes > 0]
        ll = np.sum(nz * np.log(nz / R)) - observed / 2 * (np.log(2 * np.pi * inertia / observed) + 1)
        p = len(C) * M + len(C)
        assert row["log_likelihood"] == pytest.approx(ll, rel=1e-9)
        assert row["bic"] == pytest.approx(-2 * ll + p * np.log(R), rel=1e-9)
    assert sel.best_estimator.n_clusters == TRUE_K
