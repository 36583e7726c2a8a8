"""The Gaussian kernels against independent references (scipy.stats, NumPy moments)."""

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture import _gaussian_mixture as skgm

from dask_em.families import get_family
from dask_em.families.gaussian import (
    check_precisions,
    cholesky_from_precisions,
    covariance_shape,
    covariances_from_cholesky,
    full_covariances,
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


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_has_the_component_moments_of_every_type(cov_type):
    rng = np.random.default_rng(7)
    K, D, n = 2, 3, 40000
    cov = _random_covariances(cov_type, K, D, rng)
    means = np.array([[0.0, 0, 0], [10, -10, 5]])
    X = get_family(f"gaussian-{cov_type}").sample({"means": means, "covariances": cov}, [n, n], rng)
    assert X.shape == (2 * n, D)
    for k in range(K):
        rows = X[k * n : (k + 1) * n]
        np.testing.assert_allclose(rows.mean(0), means[k], atol=0.1)
        np.testing.assert_allclose(np.cov(rows.T), _dense(cov, cov_type, k, D), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_m_step_equals_sklearns_estimate(cov_type):
    """Means, covariances and factors of the M-step against scikit-learn's
    ``_estimate_gaussian_parameters`` and ``_compute_precision_cholesky``."""
    rng = np.random.default_rng(8)
    K, D, n = 3, 4, 500
    X = rng.normal(size=(n, D)) * [1.0, 2.0, 0.5, 3.0] + 5.0
    resp = rng.dirichlet(np.ones(K), size=n)
    fam = get_family(f"gaussian-{cov_type}")
    ref = {"means": rng.normal(size=(K, D)) + 5.0}
    params = fam.m_step(fam.suff_stats(X, resp, ref), ref, reg_covar=1e-6)
    _, means, covs = skgm._estimate_gaussian_parameters(X, resp, 1e-6, cov_type)
    np.testing.assert_allclose(params["means"], means, rtol=1e-12)
    np.testing.assert_allclose(params["covariances"], covs, rtol=1e-10)
    chol = skgm._compute_precision_cholesky(covs, cov_type)
    np.testing.assert_allclose(params["precisions_cholesky"], chol, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_precision_conversions_equal_sklearns(cov_type):
    rng = np.random.default_rng(9)
    cov = _random_covariances(cov_type, 3, 4, rng)
    chol = precisions_cholesky_from_covariances(cov, cov_type)
    np.testing.assert_allclose(chol, skgm._compute_precision_cholesky(cov, cov_type), rtol=1e-12, atol=1e-14)
    # scikit-learn's precisions_ for full / tied are inv(covariance); P ** 2 otherwise
    prec = precisions_from_cholesky(chol, cov_type)
    expected = np.linalg.inv(cov) if cov_type in ("full", "tied") else 1.0 / cov
    np.testing.assert_allclose(prec, expected, rtol=1e-10)
    from_prec = skgm._compute_precision_cholesky_from_precisions(expected, cov_type, xp=np)
    np.testing.assert_allclose(cholesky_from_precisions(expected, cov_type), from_prec, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_covariance_shape_is_sklearns(cov_type):
    X = np.random.default_rng(10).normal(size=(60, 3))
    sk = SkGaussianMixture(2, covariance_type=cov_type, max_iter=500, random_state=0).fit(X)
    shape = covariance_shape(cov_type, 2, 3)
    assert sk.covariances_.shape == sk.precisions_.shape == sk.precisions_cholesky_.shape == shape


def _bad_precisions(cov_type, K, D, rng):
    """Named invalid precisions for ``cov_type``: wrong shape, NaN, not positive
    (definite), not symmetric."""
    cov = _random_covariances(cov_type, K, D, rng)
    good = np.linalg.inv(cov) if cov_type in ("full", "tied") else 1.0 / cov
    cases = {"shape": good[..., :-1], "nan": np.where(good == good.flat[0], np.nan, good)}
    negative = good.copy()
    if cov_type in ("diag", "spherical"):
        negative.flat[-1] = -1.0
    else:
        negative.reshape(-1, D, D)[-1] = -np.eye(D)
        asym = good.copy()
        asym.reshape(-1, D, D)[-1] += np.triu(np.ones((D, D)), 1)
        cases["asymmetric"] = asym
    cases["negative"] = negative
    return good, cases


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_check_precisions_agrees_with_sklearn(cov_type):
    """What scikit-learn's ``_check_precisions`` accepts is returned as float64; what
    it rejects raises a ValueError here too, with scikit-learn-style wording."""
    K, D = 3, 4
    good, cases = _bad_precisions(cov_type, K, D, np.random.default_rng(11))
    skgm._check_precisions(good, cov_type, K, D)
    got = check_precisions(good.tolist(), cov_type, K, D)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, good)
    words = {"shape": "shape", "nan": "NaN", "negative": "positive", "asymmetric": "symmetric"}
    for case, bad in cases.items():
        with pytest.raises(ValueError):
            skgm._check_precisions(bad, cov_type, K, D)
        with pytest.raises(ValueError, match=f"The parameter 'precisions_init' .*{words[case]}"):
            check_precisions(bad, cov_type, K, D)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_full_covariances_give_the_same_densities(cov_type):
    """Expanded to (K, D, D), any type's covariances give scipy the family's densities."""
    rng = np.random.default_rng(12)
    K, D = 3, 4
    means = rng.normal(size=(K, D))
    cov = _random_covariances(cov_type, K, D, rng)
    full = full_covariances(cov, cov_type, K, D)
    assert full.shape == (K, D, D)
    X = rng.normal(size=(40, D)) * 2
    params = {"means": means, "precisions_cholesky": precisions_cholesky_from_covariances(cov, cov_type)}
    got = get_family(f"gaussian-{cov_type}").log_prob(X, params)
    for k in range(K):
        np.testing.assert_array_equal(full[k], _dense(cov, cov_type, k, D))
        np.testing.assert_allclose(got[:, k], sps.multivariate_normal(means[k], full[k]).logpdf(X), rtol=1e-10)
    with pytest.raises(ValueError, match=r"shape \("):
        full_covariances(cov[..., :-1], cov_type, K, D)


@pytest.mark.parametrize(
    "call",
    [
        lambda t: covariance_shape(t, 2, 3),
        lambda t: full_covariances(np.ones(2), t, 2, 3),
        lambda t: check_precisions(np.ones(2), t, 2, 3),
        lambda t: precisions_from_cholesky(np.ones(2), t),
        lambda t: precisions_cholesky_from_covariances(np.ones(2), t),
    ],
)
def test_unknown_covariance_type_lists_the_known_ones(call):
    with pytest.raises(ValueError, match="Unknown covariance_type 'diagonal'; expected one of 'full', 'tied'"):
        call("diagonal")
