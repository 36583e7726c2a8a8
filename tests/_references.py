"""Independent references for the pipeline tests: scipy.stats log-densities and a plain
NumPy EM loop for the discrete mixtures, written without any dask-em code.

The loop follows scikit-learn's ``BaseMixture.fit_predict``: E-step (mean log-likelihood
of the current parameters is the new ``lower_bound``), M-step, stop when the change of
the lower bound is below ``tol``. Weights are ``(n_k + 10 eps) / sum``, as scikit-learn's.
"""

import numpy as np
from scipy import stats
from scipy.special import logsumexp

EPS10 = 10 * np.finfo(np.float64).eps


def bernoulli_logpmf(X, params):
    """(n, K) log-probabilities of 0/1 rows under independent Bernoulli components."""
    p = params["means"]
    return np.stack([stats.bernoulli.logpmf(X, p[k]).sum(axis=1) for k in range(len(p))], axis=1)


def poisson_logpmf(X, params):
    """(n, K) log-probabilities of count rows under independent Poisson components."""
    lam = params["means"]
    return np.stack([stats.poisson.logpmf(X, lam[k]).sum(axis=1) for k in range(len(lam))], axis=1)


def categorical_logpmf(X, params):
    """(n, K) log-probabilities of code rows: a row-by-row loop over the features."""
    probs = params["probs"]
    codes = X.astype(np.int64)
    n, D = codes.shape
    out = np.zeros((n, probs.shape[0]))
    for d in range(D):
        out += np.log(probs[:, d, codes[:, d]]).T
    return out


def bernoulli_m_step(X, R, nk, alpha, **_):
    return {"means": (R.T @ X + alpha) / (nk[:, None] + 2 * alpha)}


def poisson_m_step(X, R, nk, alpha, **_):
    return {"means": (R.T @ X + alpha) / (nk[:, None] + alpha)}


def categorical_m_step(X, R, nk, alpha, n_categories):
    codes = X.astype(np.int64)
    K, D, C = R.shape[1], X.shape[1], int(max(n_categories))
    probs = np.zeros((K, D, C))
    for d in range(D):
        for c in range(n_categories[d]):
            probs[:, d, c] = (R[codes[:, d] == c].sum(axis=0) + alpha) / (nk + n_categories[d] * alpha)
    return {"probs": probs}


FAMILIES = {
    "bernoulli": (bernoulli_logpmf, bernoulli_m_step),
    "poisson": (poisson_logpmf, poisson_m_step),
    "categorical": (categorical_logpmf, categorical_m_step),
}


def reference_em(family, X, weights, params, *, tol, max_iter, alpha, n_categories=None):
    """Plain NumPy EM for a discrete family from ``weights``/``params``.

    Returns
    -------
    dict with ``weights``, ``params``, ``n_iter``, ``converged``, ``lower_bound``.
    """
    logpmf, m_step = FAMILIES[family]
    w = np.asarray(weights, dtype=np.float64)
    lower_bound, converged, n_iter = -np.inf, False, 0
    for n_iter in range(1, max_iter + 1):
        L = logpmf(X, params) + np.log(w)
        ll = logsumexp(L, axis=1)
        R = np.exp(L - ll[:, None])
        nk = R.sum(axis=0) + EPS10
        w = nk / nk.sum()
        params = m_step(X, R, nk, alpha=alpha, n_categories=n_categories)
        change, lower_bound = ll.mean() - lower_bound, ll.mean()
        if abs(change) < tol:
            converged = True
            break
    return {"weights": w, "params": params, "n_iter": n_iter, "converged": converged, "lower_bound": lower_bound}


def reference_labels(family, X, weights, params):
    """Most probable component of each row (argmax of log weight + log-probability)."""
    logpmf, _ = FAMILIES[family]
    return np.argmax(logpmf(X, params) + np.log(weights), axis=1)


def nearest_centre(X, centres):
    """Index of the closest centre of each row: a row-by-row loop."""
    return np.array([int(np.argmin(((centres - x) ** 2).sum(axis=1))) for x in X])


def gaussian_labels(X, weights, means, covariances):
    """argmax of log weight + scipy.stats.multivariate_normal.logpdf (full covariances)."""
    L = np.stack(
        [np.log(w) + stats.multivariate_normal(m, c).logpdf(X) for w, m, c in zip(weights, means, covariances)],
        axis=1,
    )
    return np.argmax(L, axis=1)


def xmeans_bic(inertia, sizes, n_features):
    """BIC of K-means' hard assignment as X-means scores it (Pelleg & Moore 2000).

    Spherical Gaussians sharing one variance ``s2 = inertia / (R M)``, mixing weights
    the cluster shares; ``K M + (K - 1) + 1`` free parameters.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    R, M, K = sizes.sum(), n_features, len(sizes)
    s2 = inertia / (R * M)
    nz = sizes[sizes > 0]
    ll = np.sum(nz * np.log(nz / R)) - R * M / 2 * (np.log(2 * np.pi * s2) + 1)
    p = K * M + (K - 1) + 1
    return -2 * ll + p * np.log(R)
