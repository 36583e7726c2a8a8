"""GaussianMixture as an estimator: scikit-learn contract, inputs, errors, options."""

import logging
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dask_em import ConvergenceWarning, GaussianMixture, NotFittedError
from tests.conftest import make_blobs


@pytest.fixture(scope="module")
def fitted():
    X = make_blobs()
    return GaussianMixture(3, random_state=0).fit(X), X


def test_sklearn_contract(fitted):
    gm, X = fitted
    params = gm.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "full"
    twin = clone(gm)
    assert twin.get_params() == params and not hasattr(twin, "weights_")
    twin.set_params(covariance_type="diag", max_iter=50)
    assert twin.covariance_type == "diag"
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(X)
    assert pipe.predict(X).shape == (len(X),)
    assert "GaussianMixture(n_components=3" in repr(gm)


def test_fitted_attributes(fitted):
    gm, X = fitted
    assert gm.weights_.shape == (3,) and gm.weights_.sum() == pytest.approx(1.0)
    assert gm.means_.shape == (3, 4)
    assert gm.covariances_.shape == gm.precisions_.shape == gm.precisions_cholesky_.shape == (3, 4, 4)
    assert gm.converged_ and 1 <= gm.n_iter_ <= 100
    assert gm.lower_bound_ == gm.lower_bounds_[-1]
    assert [h["iteration"] for h in gm.history_] == list(range(1, gm.n_iter_ + 1))
    assert gm.n_features_in_ == 4


def test_dask_input_gives_lazy_results(fitted):
    gm, X = fitted
    Xd = da.from_array(X, chunks=(700, -1))
    labels, proba, scores = gm.predict(Xd), gm.predict_proba(Xd), gm.score_samples(Xd)
    assert isinstance(labels, da.Array) and isinstance(proba, da.Array) and isinstance(scores, da.Array)
    assert labels.name.startswith("predict-gaussian-full")
    assert proba.chunks == (Xd.chunks[0], (3,))
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))
    np.testing.assert_allclose(proba.compute().sum(axis=1), 1.0)
    fp = GaussianMixture(3, random_state=0).fit_predict(Xd)
    assert isinstance(fp, da.Array) and fp.shape == (len(X),)


def test_zarr_path_input(tmp_path):
    X = make_blobs(seed=11)
    path = str(tmp_path / "pixels.zarr")
    da.from_array(X, chunks=(600, -1)).to_zarr(path)
    init = dict(weights_init=np.full(3, 1 / 3), means_init=X[:3], precisions_init=np.repeat(np.eye(4)[None], 3, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_store = GaussianMixture(3, tol=0, max_iter=5, **init).fit(path)
        in_memory = GaussianMixture(3, tol=0, max_iter=5, **init).fit(X)
        from_array = GaussianMixture(3, tol=0, max_iter=5, **init).fit(zarr.open(path, mode="r"))
    np.testing.assert_allclose(from_store.means_, in_memory.means_, rtol=1e-12)
    np.testing.assert_allclose(from_array.covariances_, in_memory.covariances_, rtol=1e-12)
    assert isinstance(from_store.predict(path), da.Array)


def test_warm_start_continues_the_fit():
    X = make_blobs(seed=12)
    init = dict(weights_init=np.full(3, 1 / 3), means_init=X[:3], precisions_init=np.repeat(np.eye(4)[None], 3, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ten = GaussianMixture(3, tol=0, max_iter=10, **init).fit(X)
        warm = GaussianMixture(3, tol=0, max_iter=5, warm_start=True, **init).fit(X)
        warm.fit(X)
    np.testing.assert_allclose(warm.means_, ten.means_, rtol=1e-12)
    np.testing.assert_allclose(warm.covariances_, ten.covariances_, rtol=1e-12)


def test_n_init_keeps_the_best_start():
    X = make_blobs(n=2000, seed=13, spread=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = GaussianMixture(5, init_params="random", max_iter=30, random_state=2).fit(X)
        four = GaussianMixture(5, init_params="random", max_iter=30, n_init=4, random_state=2).fit(X)
    assert four.lower_bound_ >= one.lower_bound_


def test_same_random_state_same_fit_and_different_states_differ():
    X = make_blobs(n=2000, seed=14, spread=1.0)
    kw = dict(init_params="random_from_data", max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = GaussianMixture(4, random_state=5, **kw).fit(X)
        b = GaussianMixture(4, random_state=5, **kw).fit(X)
        c = GaussianMixture(4, random_state=6, **kw).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert not np.allclose(a.means_, c.means_)


def test_collapsed_component_stays_finite():
    """A component on a single repeated point is held by reg_covar, never NaN."""
    rng = np.random.default_rng(15)
    X = np.vstack([rng.normal(size=(500, 2)), np.tile([[8.0, 8.0]], (40, 1))])
    means = np.array([[0.0, 0.0], [8.0, 8.0]])
    gm = GaussianMixture(2, means_init=means, random_state=0).fit(X)
    assert np.all(np.isfinite(gm.covariances_)) and np.all(np.isfinite(gm.means_))
    np.testing.assert_allclose(gm.covariances_[1], np.eye(2) * 1e-6, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(2, means_init=means, reg_covar=0.0).fit(X)


def test_not_converged_warns():
    X = make_blobs(seed=16)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        GaussianMixture(3, max_iter=1, tol=0, random_state=0).fit(X)


def test_verbose_logs_each_iteration(capfd):
    X = make_blobs(seed=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, max_iter=3, tol=0, verbose=1, random_state=0).fit(X)
    err = capfd.readouterr().err
    assert err.count("mean log-likelihood") == 3
    assert "iteration 3" in err


def test_quiet_by_default_but_logged(caplog, capfd):
    X = make_blobs(seed=17)
    with caplog.at_level(logging.INFO, logger="dask_em"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(3, max_iter=2, tol=0, random_state=0).fit(X)
    assert capfd.readouterr().err == ""
    assert sum("mean log-likelihood" in r.getMessage() for r in caplog.records) == 2


def test_sample():
    X = make_blobs(n=3000, seed=18)
    gm = GaussianMixture(3, random_state=0).fit(X)
    Xs, ys = gm.sample(20000)
    assert Xs.shape == (20000, 4) and ys.shape == (20000,)
    np.testing.assert_allclose(np.bincount(ys) / 20000, gm.weights_, atol=0.02)
    for k in range(3):
        np.testing.assert_allclose(Xs[ys == k].mean(axis=0), gm.means_[k], atol=0.1)
    with pytest.raises(ValueError, match="at least one sample"):
        gm.sample(0)


# --------------------------------------------------------------------------- errors
def test_wrong_number_of_dimensions():
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        GaussianMixture(2).fit(np.arange(10.0))
    with pytest.raises(ValueError, match="2-D"):
        GaussianMixture(2).fit(da.zeros((4, 3, 2)))


def test_features_chunked_says_how_to_rechunk():
    X = da.from_array(make_blobs(), chunks=(500, 2))
    with pytest.raises(ValueError, match=r"2 chunks along the feature axis.*rechunk\(\{1: -1\}\)"):
        GaussianMixture(3).fit(X)


def test_unknown_chunk_sizes_are_explained():
    X = da.from_array(make_blobs(), chunks=(500, -1))
    X = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        GaussianMixture(3).fit(X)


def test_nan_rows_are_counted_numpy():
    X = make_blobs()
    X[[3, 10, 11], 1] = np.nan
    X[20, 0] = np.inf
    with pytest.raises(ValueError, match="4 rows with NaN or infinite values"):
        GaussianMixture(3).fit(X)


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_nan_rows_are_counted_dask(init_params):
    X = make_blobs()
    X[[5, 1500, 2999], 2] = np.nan
    with pytest.raises(ValueError, match="3 rows with NaN or infinite values"):
        GaussianMixture(3, init_params=init_params).fit(da.from_array(X, chunks=(500, -1)))


def test_nan_rows_with_given_parameters_fail_in_first_pass():
    X = make_blobs()
    X[7, 0] = np.nan
    init = dict(weights_init=np.full(3, 1 / 3), means_init=X[:3] * 0, precisions_init=np.repeat(np.eye(4)[None], 3, 0))
    with pytest.raises(ValueError, match="1 rows with NaN"):
        GaussianMixture(3, **init).fit(da.from_array(X, chunks=(500, -1)))


def test_fewer_rows_than_components():
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(5).fit(np.random.default_rng(0).normal(size=(3, 2)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(covariance_type="ful"), "'covariance_type' parameter of GaussianMixture must be a str among"),
        (dict(init_params="kmeans++"), "'init_params'"),
        (dict(n_components=0), r"'n_components' parameter of GaussianMixture must be an int in the range \[1, inf\). Got 0"),
        (dict(tol=-1.0), "'tol'"),
        (dict(reg_covar=-1e-6), "'reg_covar'"),
        (dict(max_iter=1.5), "'max_iter'"),
        (dict(n_init=0), "'n_init'"),
        (dict(random_state="seed"), "'random_state'"),
        (dict(warm_start="yes"), "'warm_start'"),
        (dict(weights_init=[0.5, 0.6]), "normalized"),
        (dict(weights_init=[0.5, 0.5, 0.0]), "shape"),
        (dict(means_init=np.zeros((2, 3))), r"'means_init' should have the shape \(2, 4\)"),
    ],
)
def test_bad_parameters(kwargs, match):
    params = dict(n_components=2)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**params).fit(make_blobs())


@pytest.mark.parametrize(
    "cov_type, precisions, match",
    [
        ("full", np.repeat(np.eye(4)[None], 3, 0), "shape"),
        ("full", np.stack([np.eye(4), -np.eye(4)]), "positive-definite"),
        ("full", np.stack([np.eye(4), np.eye(4) + np.triu(np.ones((4, 4)), 1)]), "symmetric"),
        ("tied", np.zeros((4, 4)), "positive-definite"),
        ("diag", np.array([[1.0, 1, 1, 1], [1, 1, 0, 1]]), "positive"),
        ("spherical", np.array([1.0, np.nan]), "NaN"),
    ],
)
def test_invalid_precisions_init(cov_type, precisions, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, covariance_type=cov_type, precisions_init=precisions).fit(make_blobs())


def test_predict_before_fit():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GaussianMixture(2).predict(make_blobs())


def test_predict_wrong_number_of_features(fitted):
    gm, X = fitted
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 4"):
        gm.predict(X[:, :3])


def test_predict_nan_rows_raise_at_compute(fitted):
    gm, X = fitted
    X = X.copy()
    X[4, 1] = np.nan
    lazy = gm.predict(da.from_array(X, chunks=(500, -1)))
    with pytest.raises(ValueError, match="1 rows with NaN"):
        lazy.compute()


def test_non_numeric_input():
    with pytest.raises(ValueError, match="real numbers"):
        GaussianMixture(2).fit(np.array([["a", "b"], ["c", "d"]]))


def test_missing_zarr_path(tmp_path):
    with pytest.raises(ValueError, match="Could not open a Zarr"):
        GaussianMixture(2).fit(str(tmp_path / "nope.zarr"))


def test_bic_aic_count_only_the_rows_scored(fitted):
    """Rows left out by the NaN policy count neither in the likelihood nor in n."""
    import xarray as xr
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    gm, X = fitted
    holes = X.copy()
    holes[[2, 50, 51], 1] = np.nan
    cube = xr.DataArray(da.from_array(holes, chunks=(700, -1)), dims=("pixel", "band"))
    kept = holes[np.isfinite(holes).all(axis=1)]
    ref = SkGaussianMixture(3)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(ref, name, getattr(gm, name))
    assert gm.bic(cube) == pytest.approx(ref.bic(kept), rel=1e-9)
    assert gm.aic(cube) == pytest.approx(ref.aic(kept), rel=1e-9)
