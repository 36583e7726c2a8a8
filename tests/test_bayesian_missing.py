"""BayesianGaussianMixture with nan_policy="marginalize", against a row-by-row reference.

The reference is the mean-field derivation written out here with loops over rows and
components, in the posterior's own parameters (m, beta, W, nu): ``q(x_m | z=k)`` has
precision ``nu W_mm`` and mean ``m_m - W_mm^-1 W_mo (x_o - m_o)``; ``q(z=k)`` is
proportional to ``exp(E[log pi_k] + log of the integral over x_m of exp E[log N(x | mu_k,
Lambda_k)])``, worked out by completing the square in ``x_m``; the statistics are the
completed rows' with ``(nu W_mm)^-1`` added to the second moments, and the lower bound
gains the entropy of ``q(x_m | z)``.
"""

import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.special import digamma, logsumexp

from dask_em import BayesianGaussianMixture
from dask_em.engine import estep_block
from dask_em.engine.marginal import marginalizing
from dask_em.engine import as_float64_state
from tests.conftest import make_blobs

COV_TYPES = ["full", "tied", "diag", "spherical"]


def quiet_fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X)


def with_gaps(X, fraction, seed):
    rng = np.random.default_rng(seed)
    X = X.copy()
    holes = rng.random(X.shape) < fraction
    holes[holes.all(axis=1), 0] = False  # every row keeps a feature
    X[holes] = np.nan
    return X


def _precision_and_log_det(params, k, cov_type, D):
    """W_k (the Wishart scale, D x D) and scikit-learn's E[log |Lambda_k|] - log |W_k| term."""
    nu = np.broadcast_to(params["degrees_of_freedom"], (params["means"].shape[0],))[k]
    cov = params["covariances"]
    if cov_type == "full":
        S = cov[k]
    elif cov_type == "tied":
        S = cov
    elif cov_type == "diag":
        S = np.diag(cov[k])
    else:
        S = np.eye(D) * cov[k]
    W = np.linalg.inv(S * nu)  # covariances are W^-1 / nu
    e_log_det = np.sum(digamma(0.5 * (nu - np.arange(D)))) + D * np.log(2.0) + np.linalg.slogdet(W)[1]
    return W, nu, e_log_det


def _log_pi(wc):
    a, b = wc[:, 0], wc[:, 1]
    return digamma(a) - digamma(a + b) + np.concatenate([[0.0], np.cumsum(digamma(b) - digamma(a + b))[:-1]])


def reference_estep(X, params, cov_type):
    """Row by row: responsibilities, shifted completed statistics, E[log q(z, x_m)]."""
    D = X.shape[1]
    K = params["means"].shape[0]
    m_all, beta = params["means"], params["mean_precision"]
    log_pi = _log_pi(params["weight_concentration"])
    nk, s1, s2 = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    neg_entropy = 0.0
    for x in X:
        o, mi = np.flatnonzero(~np.isnan(x)), np.flatnonzero(np.isnan(x))
        log_rho, xhat, extra, ent = np.empty(K), np.empty((K, D)), np.zeros((K, D, D)), np.empty(K)
        for k in range(K):
            W, nu, e_log_det = _precision_and_log_det(params, k, cov_type, D)
            m = m_all[k]
            r_o = x[o] - m[o]
            W_mm, W_mo, W_oo = W[np.ix_(mi, mi)], W[np.ix_(mi, o)], W[np.ix_(o, o)]
            schur = W_oo - W_mo.T @ np.linalg.solve(W_mm, W_mo) if mi.size else W_oo
            P = nu * W_mm
            log_rho[k] = (log_pi[k] + 0.5 * e_log_det - 0.5 * D / beta[k] - 0.5 * o.size * np.log(2 * np.pi)
                          - 0.5 * (np.linalg.slogdet(P)[1] if mi.size else 0.0) - 0.5 * nu * r_o @ schur @ r_o)
            xhat[k] = x
            if mi.size:
                xhat[k, mi] = m[mi] - np.linalg.solve(W_mm, W_mo @ r_o)
                extra[k][np.ix_(mi, mi)] = np.linalg.inv(P)
            ent[k] = 0.5 * mi.size * (1 + np.log(2 * np.pi)) - 0.5 * (np.linalg.slogdet(P)[1] if mi.size else 0.0)
        r = np.exp(log_rho - logsumexp(log_rho))
        for k in range(K):
            d = xhat[k] - m_all[k]  # shifted by the current means, as the engine's statistics
            nk[k] += r[k]
            s1[k] += r[k] * d
            s2[k] += r[k] * (np.outer(d, d) + extra[k])
        neg_entropy += np.sum(r * np.log(r)) - r @ ent
    return nk, s1, s2, neg_entropy


def _reduce(s2, cov_type):
    if cov_type == "full":
        return s2
    if cov_type == "tied":
        return s2.sum(axis=0)
    diag = np.diagonal(s2, axis1=1, axis2=2)
    return diag if cov_type == "diag" else diag.sum(axis=1)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_e_step_matches_the_row_by_row_reference(cov_type):
    X = make_blobs(n=300, n_features=4, n_components=3, seed=2)
    est = quiet_fit(BayesianGaussianMixture(4, covariance_type=cov_type, max_iter=3, random_state=0), X)
    state = as_float64_state(est._get_state())
    Xg = with_gaps(X[:120], 0.3, seed=1)
    assert 0 < np.isnan(Xg).any(axis=1).sum() < 120  # complete rows and rows with gaps
    family = marginalizing(est._family())
    stats = estep_block(Xg, None, (family, [state]), 0)[0]
    nk, s1, s2, neg_entropy = reference_estep(Xg, state.params, cov_type)
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-10)
    np.testing.assert_allclose(stats["s1"], s1, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["s2"], _reduce(s2, cov_type), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["resp_log_resp"], neg_entropy, rtol=1e-10)
    assert stats["n_nonfinite"] == 0


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_lower_bound_never_decreases_with_gaps(cov_type):
    X = with_gaps(make_blobs(n=1500, n_features=3, n_components=3, seed=4), 0.25, seed=0)
    est = quiet_fit(BayesianGaussianMixture(5, covariance_type=cov_type, nan_policy="marginalize", tol=0.0,
                                            max_iter=40, random_state=0), da.from_array(X, chunks=(400, -1)))
    bounds = np.asarray(est.lower_bounds_)
    assert len(bounds) == 40 and np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:])), np.diff(bounds).min()


def test_without_nan_the_fit_is_the_ordinary_one():
    X = make_blobs(n=800, n_features=3, n_components=3, seed=6)
    kw = dict(n_components=4, max_iter=20, random_state=0)
    plain = quiet_fit(BayesianGaussianMixture(**kw), X)
    marg = quiet_fit(BayesianGaussianMixture(nan_policy="marginalize", **kw), X)
    for name in ("weights_", "means_", "covariances_", "degrees_of_freedom_", "mean_precision_", "lower_bound_"):
        np.testing.assert_array_equal(getattr(marg, name), getattr(plain, name), err_msg=name)


def test_gaps_fit_close_to_the_complete_data_and_impute():
    X = make_blobs(n=3000, n_features=3, n_components=3, seed=8, spread=8.0)
    Xg = with_gaps(X, 0.2, seed=3)
    kw = dict(n_components=3, tol=1e-6, max_iter=300, random_state=0)
    full = quiet_fit(BayesianGaussianMixture(**kw), X)
    gaps = quiet_fit(BayesianGaussianMixture(nan_policy="marginalize", **kw), Xg)
    order = np.argsort(gaps.means_[:, 0])
    np.testing.assert_allclose(gaps.means_[order], full.means_[np.argsort(full.means_[:, 0])], atol=0.15)
    labels = gaps.predict(Xg)
    assert labels.min() >= 0 and (labels == full.predict(X)).mean() > 0.97
    filled = gaps.impute(Xg)
    assert not np.isnan(filled).any()
    holes = np.isnan(Xg)
    assert np.sqrt(np.mean((filled[holes] - X[holes]) ** 2)) < np.sqrt(np.mean((X[holes] - X.mean(0)[np.nonzero(holes)[1]]) ** 2))
