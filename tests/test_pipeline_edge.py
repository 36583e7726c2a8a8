"""The data edge every estimator shares: NaN rows of NumPy input, and bad input refused
before any pass over the data.

- ``nan_policy="omit"`` on NumPy input of the discrete mixtures: the fit equals a plain
  NumPy EM on the finite rows from the same start; NaN rows get label -1 and NaN
  probabilities / scores; the default refuses them;
- sparse, complex and empty-feature input, and ``tol`` / ``reg_covar`` of NaN, are
  clear errors raised before any ``dask.compute`` (counted with a dask callback);
  an object array of numbers is converted and fits as the float array does.
"""

import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp

from dask_em import (
    BernoulliMixture,
    CategoricalMixture,
    GaussianMixture,
    KMeans,
    PoissonMixture,
)
from dask_em.exceptions import ConvergenceWarning
from tests._counting import CountComputes
from tests._pipeline_data import ALPHA, TOL, K, estimator, pixels, start, truth_of
from tests._references import FAMILIES, reference_em, reference_labels

ALL = [GaussianMixture, KMeans, BernoulliMixture, PoissonMixture, CategoricalMixture]
DISCRETE = ["bernoulli", "poisson", "categorical"]


def k_param(cls):
    return "n_clusters" if cls is KMeans else "n_components"


# ----------------------------------------------------------------- nan_policy="omit", NumPy
def rows_with_nan(model, n=500, seed=0):
    """(X with NaN in some rows, mask of the NaN rows, truth)."""
    rng = np.random.default_rng(seed)
    truth = truth_of(model, rng)
    X = pixels(model, truth, rng.integers(0, K, size=n), rng)
    bad = rng.random(n) < 0.1
    X[bad, rng.integers(0, X.shape[1], size=n)[bad]] = np.nan
    X[3] = np.nan
    bad[3] = True
    return X, bad, truth


@pytest.mark.parametrize("model", DISCRETE)
def test_omit_nan_rows_of_numpy_input(model):
    X, bad, truth = rows_with_nan(model)
    est = estimator(model, truth, max_iter=300, nan_policy="omit").fit(X)

    init = start(model, truth)
    param = "probs" if model == "categorical" else "means"
    ref = reference_em(
        model, X[~bad], init["weights_init"], {param: np.asarray(init[f"{param}_init"], dtype=np.float64)},
        tol=TOL, max_iter=300, alpha=ALPHA, n_categories=[3] * X.shape[1],
    )
    assert est.converged_ and ref["converged"]
    assert est.n_iter_ == ref["n_iter"]
    assert_allclose(est.weights_, ref["weights"], rtol=1e-9, atol=1e-12)
    assert_allclose(getattr(est, f"{param}_"), ref["params"][param], rtol=1e-9, atol=1e-12)

    labels = est.predict(X)
    assert labels.dtype.kind == "i"
    assert_array_equal(labels[bad], -1)
    assert_array_equal(labels[~bad], reference_labels(model, X[~bad], ref["weights"], ref["params"]))
    proba = est.predict_proba(X)
    assert np.isnan(proba[bad]).all()
    assert_allclose(proba[~bad].sum(axis=1), 1.0, rtol=1e-12)
    logpmf, _ = FAMILIES[model]
    expected = logsumexp(logpmf(X[~bad], ref["params"]) + np.log(ref["weights"]), axis=1)
    scores = est.score_samples(X)
    assert np.isnan(scores[bad]).all()
    assert_allclose(scores[~bad], expected, rtol=1e-9)
    assert est.score(X) == pytest.approx(expected.mean(), rel=1e-9)

    # the default policy for NumPy input is "raise", before any pass
    with CountComputes() as counter, pytest.raises(ValueError, match=r"nan_policy='omit'"):
        estimator(model, truth, max_iter=300).fit(X)
    assert counter.count == 0
    with pytest.raises(ValueError, match="NaN"):
        est.set_params(nan_policy="raise").predict(X)


def test_omit_infers_categories_from_the_finite_rows():
    X, bad, _ = rows_with_nan("categorical", seed=3)
    X[bad & ~np.isnan(X).any(axis=1)] = np.nan  # every bad row holds a NaN
    est = CategoricalMixture(2, nan_policy="omit", random_state=0).fit(X)
    assert est.n_categories_.tolist() == (np.nanmax(X[~bad], axis=0).astype(int) + 1).tolist()
    assert_array_equal(est.predict(X)[bad], -1)


# ----------------------------------------------------------------- bad input, zero passes
def _valid_data(cls, n=60):
    rng = np.random.default_rng(0)
    if cls in (GaussianMixture, KMeans):
        return rng.normal(size=(n, 3))
    if cls is BernoulliMixture:
        return (rng.random((n, 3)) < 0.5).astype(float)
    return rng.integers(0, 3, size=(n, 3)).astype(float)  # counts or codes


def _refused(cls, X, exc, match, **params):
    est = cls(**{k_param(cls): 2, **params})
    with CountComputes() as counter:
        with pytest.raises(exc, match=match):
            est.fit(X)
    assert counter.count == 0, f"{counter.count} computes before the error"
    assert not hasattr(est, "n_iter_")


def test_compute_counter_counts_a_fit():
    """The counter used below sees the passes of a fit on dask input."""
    X = da.from_array(_valid_data(KMeans), chunks=(20, -1))
    with CountComputes() as counter:
        KMeans(2, init=np.asarray(X[:2])).fit(X)
    assert counter.count >= 2


@pytest.mark.parametrize("cls", ALL)
def test_sparse_input_refused_mentioning_dense(cls):
    X = scipy.sparse.csr_matrix(_valid_data(cls))
    _refused(cls, X, TypeError, "dense")
    _refused(cls, scipy.sparse.csr_array(_valid_data(cls)), TypeError, "dense")


@pytest.mark.parametrize("as_dask", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("cls", ALL)
def test_complex_input_refused(cls, as_dask):
    X = _valid_data(cls) + 1j
    if as_dask:
        X = da.from_array(X, chunks=(20, -1))
    _refused(cls, X, ValueError, "Complex data not supported")


@pytest.mark.parametrize("as_dask", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("cls", ALL)
def test_zero_features_refused(cls, as_dask):
    X = np.empty((30, 0))
    if as_dask:
        X = da.from_array(X, chunks=(10, -1))
    _refused(cls, X, ValueError, "0 feature")


@pytest.mark.parametrize("cls", ALL)
def test_object_array_of_strings_refused(cls):
    X = _valid_data(cls).astype(object)
    X[2, 1] = "abc"
    _refused(cls, X, ValueError, "not numbers")


@pytest.mark.parametrize("cls", ALL)
def test_tol_nan_refused(cls):
    _refused(cls, _valid_data(cls), ValueError, "'tol' parameter", tol=float("nan"))


def test_reg_covar_nan_refused():
    _refused(GaussianMixture, _valid_data(GaussianMixture), ValueError, "'reg_covar' parameter", reg_covar=float("nan"))


@pytest.mark.parametrize("cls", ALL)
def test_object_array_of_numbers_fits_as_float(cls):
    X = _valid_data(cls, n=200)
    obj = np.empty(X.shape, dtype=object)
    for i, j in np.ndindex(X.shape):  # Python ints and floats, as a list of records would give
        obj[i, j] = int(X[i, j]) if float(X[i, j]).is_integer() else float(X[i, j])
    params = {k_param(cls): 2, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = cls(**params).fit(obj), cls(**params).fit(X)
    names = ["cluster_centers_"] if cls is KMeans else ["weights_", "probs_" if cls is CategoricalMixture else "means_"]
    for name in names:
        assert getattr(a, name).dtype == np.float64
        assert_array_equal(getattr(a, name), getattr(b, name))
    assert_array_equal(a.predict(obj), b.predict(X))
