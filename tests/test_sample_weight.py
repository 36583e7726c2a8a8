"""Sample weights: integer weights equal repeated rows, zeros drop rows, negatives fail."""

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGM

from dask_em import GaussianMixture


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, size=(150, 3)) for c in (-4.0, 0.0, 5.0)])
    w = rng.integers(0, 4, size=X.shape[0])
    return X, w


def _init(X, cov):
    sk0 = SkGM(3, covariance_type=cov, random_state=0, max_iter=2).fit(X)
    return dict(weights_init=sk0.weights_, means_init=sk0.means_, precisions_init=sk0.precisions_)


@pytest.mark.parametrize("cov", ["full", "diag", "tied", "spherical"])
@pytest.mark.parametrize("chunked", [False, True])
def test_integer_weights_equal_repeated_rows(data, cov, chunked):
    X, w = data
    init = _init(X, cov)
    Xrep = np.repeat(X, w, axis=0)  # zero weights drop rows
    ref = SkGM(3, covariance_type=cov, tol=0, max_iter=15, **init).fit(Xrep)
    Xin = da.from_array(X, chunks=100) if chunked else X
    win = da.from_array(w, chunks=77) if chunked else w  # rechunked to X's rows
    gm = GaussianMixture(3, covariance_type=cov, tol=0, max_iter=15, **init)
    with pytest.warns(Warning):  # tol=0 never converges
        gm.fit(Xin, sample_weight=win)
    np.testing.assert_allclose(gm.weights_, ref.weights_, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-9)
    assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-11)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data", "random"])
def test_zero_weight_rows_never_enter_initialisation(init_params):
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(c, 0.5, size=(200, 2)) for c in (-3.0, 3.0)])
    outliers = rng.normal(1e4, 1.0, size=(40, 2))
    Xall = np.concatenate([X, outliers])
    w = np.r_[np.ones(len(X)), np.zeros(len(outliers))]
    Xd = da.from_array(Xall, chunks=60)
    gm = GaussianMixture(2, init_params=init_params, random_state=0, n_init=2)
    gm.fit(Xd, sample_weight=da.from_array(w, chunks=60))
    assert np.all(np.abs(gm.means_) < 10)
    if init_params != "random":  # random responsibilities converge slowly from a saddle
        ref = GaussianMixture(2, init_params=init_params, random_state=0, n_init=2).fit(X)
        order, ref_order = np.argsort(gm.means_[:, 0]), np.argsort(ref.means_[:, 0])
        np.testing.assert_allclose(gm.means_[order], ref.means_[ref_order], atol=1e-6)


def test_negative_weights_numpy_error(data):
    X, w = data
    bad = w.astype(float)
    bad[5] = -1.0
    with pytest.raises(ValueError, match="sample_weight contains 1 negative"):
        GaussianMixture(2).fit(X, sample_weight=bad)


def test_negative_and_nan_weights_dask_error_inside_pass(data):
    X, w = data
    bad = w.astype(float)
    bad[[3, 200]] = [-2.0, np.nan]
    with pytest.raises(ValueError, match="sample_weight contains 2 negative, NaN or infinite"):
        GaussianMixture(2).fit(da.from_array(X, chunks=100), sample_weight=da.from_array(bad, chunks=100))


@pytest.mark.parametrize(
    "weights, match",
    [(np.ones(5), r"shape \(450,\)"), (np.zeros(450), "zero for every row"), (np.ones((450, 1)), "shape")],
)
def test_bad_weight_shapes(data, weights, match):
    X, _ = data
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2).fit(X, sample_weight=weights)
