"""GaussianMixture equals scikit-learn's from the same starting point."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import GaussianMixture
from tests.conftest import make_blobs

COV_TYPES = ["full", "tied", "diag", "spherical"]
RAGGED = (500, 333, 1000, 267, 900)  # 3000 rows in uneven blocks


def _as_input(X, kind):
    return X if kind == "numpy" else da.from_array(X, chunks=(RAGGED, -1))


def _start(X, cov_type, K=3):
    """A shared, imperfect starting point (scikit-learn after 2 iterations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(K, covariance_type=cov_type, max_iter=2, random_state=0).fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def _fit_pair(X, cov_type, kind, max_iter=20):
    init = _start(X, cov_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=max_iter, **init).fit(X)
        gm = GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=max_iter, **init)
        gm.fit(_as_input(X, kind))
    return gm, sk


# numpy's kernels, and dask-em's compiled ones (dask_em/compiled.py)
KERNELS = ["numpy", "numba"]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_parameters_equal_sklearn(cov_type, kind, kernels):
    X = make_blobs()
    with dask.config.set({"dask_em.kernels": kernels}):
        gm, sk = _fit_pair(X, cov_type, kind)
    np.testing.assert_allclose(gm.weights_, sk.weights_, rtol=1e-6)
    np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-6)
    np.testing.assert_allclose(gm.covariances_, sk.covariances_, rtol=1e-6)
    np.testing.assert_allclose(gm.precisions_cholesky_, sk.precisions_cholesky_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(gm.precisions_, sk.precisions_, rtol=1e-6, atol=1e-12)
    assert gm.n_iter_ == sk.n_iter_ == 20
    assert gm.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-10)
    np.testing.assert_allclose(gm.lower_bounds_, sk.lower_bounds_, rtol=1e-10)
    labels = np.asarray(gm.predict(_as_input(X, kind)))
    assert np.mean(labels == sk.predict(X)) >= 0.999


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_shifted_data_keep_their_precision(cov_type, kind):
    """At +1e4 the fit equals scikit-learn's on the centred data, shifted back.

    scikit-learn's own fit of the shifted data uses raw moments for diag, spherical and
    tied covariances and drifts by ~1e-6 there; it is compared with a norm-wise bound.
    """
    shift = 1e4
    X = make_blobs()
    init = _start(X, cov_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centred = SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, **init).fit(X)
        init["means_init"] = init["means_init"] + shift
        shifted = SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, **init).fit(X + shift)
        gm = GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, **init)
        gm.fit(_as_input(X + shift, kind))
    np.testing.assert_allclose(gm.weights_, centred.weights_, rtol=1e-6)
    np.testing.assert_allclose(gm.means_ - shift, centred.means_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gm.covariances_, centred.covariances_, rtol=1e-6)
    np.testing.assert_allclose(gm.means_, shifted.means_, rtol=1e-6)
    for ours, theirs in [(gm.weights_, shifted.weights_), (gm.covariances_, shifted.covariances_)]:
        assert np.linalg.norm(ours - theirs) <= 1e-6 * np.linalg.norm(theirs)
    labels = np.asarray(gm.predict(_as_input(X + shift, kind)))
    assert np.mean(labels == shifted.predict(X + shift)) >= 0.999


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_scores_equal_sklearn(cov_type, kernels):
    X = make_blobs(seed=3)
    with dask.config.set({"dask_em.kernels": kernels}):
        gm, sk = _fit_pair(X, cov_type, "numpy", max_iter=5)
        Xd = da.from_array(X, chunks=(700, -1))
        np.testing.assert_allclose(gm.predict_proba(Xd).compute(), sk.predict_proba(X), rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(gm.score_samples(Xd).compute(), sk.score_samples(X), rtol=1e-8)
        assert gm.score(Xd) == pytest.approx(sk.score(X), rel=1e-9)
        assert gm.bic(X) == pytest.approx(sk.bic(X), rel=1e-9)
        assert gm.aic(Xd) == pytest.approx(sk.aic(X), rel=1e-9)
    assert gm._n_parameters() == sk._n_parameters()


def test_float32_input_within_1e4_of_float64():
    """float32 data are processed in float32 and summed in float64; the fitted
    attributes and per-row outputs are float32, as scikit-learn's."""
    X = make_blobs(seed=4).astype(np.float32)
    init = _start(X.astype(np.float64), "full")
    kw = dict(covariance_type="full", tol=0, max_iter=10, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g32 = GaussianMixture(3, **kw).fit(da.from_array(X, chunks=(400, -1)))
        g64 = GaussianMixture(3, **kw).fit(X.astype(np.float64))
    for attr in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(g32, attr).dtype == np.float32, attr
        assert getattr(g64, attr).dtype == np.float64, attr
    for method in (g32.predict_proba, g32.score_samples):
        assert method(X).dtype == np.float32
        assert method(da.from_array(X, chunks=(400, -1))).compute().dtype == np.float32
    assert g64.predict_proba(X.astype(np.float64)).dtype == np.float64
    np.testing.assert_allclose(g32.means_, g64.means_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g32.covariances_, g64.covariances_, rtol=1e-4, atol=1e-6)
    assert g32.lower_bound_ == pytest.approx(g64.lower_bound_, rel=1e-6)


def test_default_kmeans_init_reaches_sklearns_optimum():
    """Different (scalable) initialisation, same well-separated optimum."""
    X = make_blobs(n=4000, seed=5, spread=8.0)
    gm = GaussianMixture(3, random_state=0).fit(da.from_array(X, chunks=(1000, -1)))
    sk = SkGaussianMixture(3, random_state=0).fit(X)
    assert gm.converged_
    assert gm.lower_bound_ == pytest.approx(sk.lower_bound_, abs=1e-3)
    order = np.argsort(gm.means_[:, 0])
    np.testing.assert_allclose(gm.means_[order], sk.means_[np.argsort(sk.means_[:, 0])], atol=1e-2)
