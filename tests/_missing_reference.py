"""A row-by-row reference for mixtures of Gaussians with missing features.

Plain NumPy / SciPy loops over rows and their observed coordinates, written from the
textbook formulas (Ghahramani & Jordan 1994), independent of dask_em's code: the
observed-data log-likelihood and responsibilities, and one EM step.
"""

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


def full_covs(cov, covariance_type, K, D):
    """Covariances of any type as (K, D, D)."""
    cov = np.asarray(cov, dtype=np.float64)
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.repeat(cov[None], K, axis=0)
    if covariance_type == "diag":
        return np.array([np.diag(c) for c in cov])
    return np.array([c * np.eye(D) for c in cov])


def row_log_probs(x, weights, means, covs):
    """log pi_k + log N(x_o; mu_k,o, S_k,oo) for one row (K,)."""
    o = ~np.isnan(x)
    return np.array([
        np.log(weights[k]) + multivariate_normal(means[k][o], covs[k][np.ix_(o, o)]).logpdf(x[o])
        for k in range(len(weights))
    ])


def loglik_and_resp(X, weights, means, covs):
    """Per-row observed-data log-likelihood (n,) and responsibilities (n, K)."""
    ll, resp = [], []
    for x in X:
        lp = row_log_probs(x, weights, means, covs)
        total = logsumexp(lp)
        ll.append(total)
        resp.append(np.exp(lp - total))
    return np.array(ll), np.array(resp)


def em_step(X, weights, means, covs, covariance_type, reg_covar):
    """One EM step with missing features: new (weights, means, covariances in the type's shape)."""
    n, D = X.shape
    K = len(weights)
    _, resp = loglik_and_resp(X, weights, means, covs)
    nk = np.zeros(K)
    sx = np.zeros((K, D))
    sxx = np.zeros((K, D, D))
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        m = ~o
        for k in range(K):
            S = covs[k]
            xhat = x.copy()
            second = np.zeros((D, D))
            if m.any():
                B = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
                xhat[m] = means[k][m] + B @ (x[o] - means[k][o])
                second[np.ix_(m, m)] = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
            r = resp[i, k]
            nk[k] += r
            sx[k] += r * xhat
            sxx[k] += r * (np.outer(xhat, xhat) + second)
    new_means = sx / nk[:, None]
    cov = np.array([sxx[k] / nk[k] - np.outer(new_means[k], new_means[k]) for k in range(K)])
    if covariance_type == "full":
        out = cov + reg_covar * np.eye(D)
    elif covariance_type == "tied":
        out = np.einsum("k,kij->ij", nk, cov) / nk.sum() + reg_covar * np.eye(D)
    elif covariance_type == "diag":
        out = np.array([np.diag(c) for c in cov]) + reg_covar
    else:
        out = np.array([np.trace(c) / D for c in cov]) + reg_covar
    return nk / n, new_means, out
