"""The Gaussian kernels against independent references (scipy.stats, NumPy moments)."""

import numpy as np
import pytest
from scipy import stats as sps

from dask_em.families import get_family
from dask_em.families.gaussian import (
    cholesky_from_precisions,
    covariances_from_cholesky,
    precisions_cholesky_from_covariances,
    precisions_from_cholesky,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _random_covariances(cov_type, K, D, rng):
    if cov_type == "full":
        A = rng.normal(size=(K, D, D))
        return A @ np.swapaxes(A, 1, 2) + np.eye(D)
    if cov_type == "tied":
        A = rng.normal(size=(D, D))
        return A @ A.T + np.eye(D)
    if cov_type == "diag":
        return rng.uniform(0.5, 2.0, size=(K, D))
    return rng.uniform(0.5, 2.0, size=K)


def _dense(cov, cov_type, k, D):
    if cov_type == "full":
        return cov[k]
    if cov_type == "tied":
        return cov
    if cov_type == "diag":
        return np.diag(cov[k])
    return np.eye(D) * cov[k]


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_log_prob_matches_scipy(cov_type):
    rng = np.random.default_rng(1)
    K, D = 3, 4
    means = rng.normal(size=(K, D))
    cov = _random_covariances(cov_type, K, D, rng)
    params = {"means": means, "precisions_cholesky": precisions_cholesky_from_covariances(cov, cov_type)}
    X = rng.normal(size=(50, D)) * 2
    got = get_family(f"gaussian-{cov_type}").log_prob(X, params)
    for k in range(K):
        ref = sps.multivariate_normal(means[k], _dense(cov, cov_type, k, D)).logpdf(X)
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-10)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("shift", [0.0, 1e8])
def test_m_step_of_exact_stats_recovers_weighted_moments(cov_type, shift):
    """Shifted statistics give the weighted mean and covariance even 1e8 from the origin."""
    rng = np.random.default_rng(2)
    K, D, n = 2, 3, 400
    X = rng.normal(size=(n, D)) * [1.0, 2.0, 0.5] + shift
    resp = rng.dirichlet(np.ones(K), size=n)
    fam = get_family(f"gaussian-{cov_type}")
    ref_means = X[:K] + 3.0  # any shift reference near the data
    stats = fam.suff_stats(X, resp, {"means": ref_means})
    stats["nk"] = resp.sum(axis=0)
    params = fam.m_step(stats, {"means": ref_means}, reg_covar=0.0)
    for k in range(K):
        w = resp[:, k]
        mean = (w @ X) / w.sum()
        np.testing.assert_allclose(params["means"][k], mean, rtol=1e-13)
        covk = np.cov(X.T, aweights=w, bias=True)
        if cov_type == "full":
            np.testing.assert_allclose(params["covariances"][k], covk, rtol=1e-9, atol=1e-12)
        elif cov_type == "diag":
            np.testing.assert_allclose(params["covariances"][k], np.diag(covk), rtol=1e-9)
        elif cov_type == "spherical":
            np.testing.assert_allclose(params["covariances"][k], np.trace(covk) / D, rtol=1e-9)
    if cov_type == "tied":
        tied = sum(np.cov(X.T, aweights=resp[:, k], bias=True) * resp[:, k].sum() for k in range(K)) / n
        np.testing.assert_allclose(params["covariances"], tied, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_statistics_add_over_row_blocks(cov_type):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3))
    resp = rng.dirichlet(np.ones(2), size=300)
    fam = get_family(f"gaussian-{cov_type}")
    ref = {"means": rng.normal(size=(2, 3))}
    whole = fam.suff_stats(X, resp, ref)
    a, b = fam.suff_stats(X[:120], resp[:120], ref), fam.suff_stats(X[120:], resp[120:], ref)
    for key in whole:
        np.testing.assert_allclose(a[key] + b[key], whole[key], rtol=1e-12)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_precision_conversions_round_trip(cov_type):
    rng = np.random.default_rng(4)
    cov = _random_covariances(cov_type, 3, 4, rng)
    chol = precisions_cholesky_from_covariances(cov, cov_type)
    prec = precisions_from_cholesky(chol, cov_type)
    np.testing.assert_allclose(cholesky_from_precisions(prec, cov_type), chol, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(covariances_from_cholesky(chol, cov_type), cov, rtol=1e-10)
    if cov_type in ("full", "tied"):
        assert np.allclose(np.tril(chol, -1), 0.0)  # upper triangular, as scikit-learn's
        np.testing.assert_allclose(prec @ cov, np.broadcast_to(np.eye(4), prec.shape), atol=1e-10)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_not_positive_definite_names_reg_covar(cov_type):
    K, D = 2, 3
    cov = _random_covariances(cov_type, K, D, np.random.default_rng(5))
    if cov_type in ("full", "diag", "spherical"):
        cov[1] = 0.0
    else:
        cov[:] = 0.0
    with pytest.raises(ValueError, match="reg_covar"):
        precisions_cholesky_from_covariances(cov, cov_type, reg_covar=0.0)


def test_sample_has_the_component_moments():
    rng = np.random.default_rng(6)
    fam = get_family("gaussian-full")
    cov = _random_covariances("full", 2, 3, rng)
    params = {"means": np.array([[0.0, 0, 0], [10, 10, 10]]), "covariances": cov}
    X = fam.sample(params, [20000, 10000], rng)
    assert X.shape == (30000, 3)
    np.testing.assert_allclose(X[:20000].mean(0), params["means"][0], atol=0.1)
    np.testing.assert_allclose(np.cov(X[20000:].T), cov[1], rtol=0.1, atol=0.1)
