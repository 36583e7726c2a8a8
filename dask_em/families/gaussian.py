"""Gaussian components with full, tied, diagonal or spherical covariance.

Parameters are a dict with scikit-learn's names and shapes (K components, D features):

============  =================  ======================  ===================
type          ``means``          ``covariances``          ``precisions_cholesky``
============  =================  ======================  ===================
full          (K, D)             (K, D, D)               (K, D, D), upper
tied          (K, D)             (D, D)                  (D, D), upper
diag          (K, D)             (K, D)                  (K, D)
spherical     (K, D)             (K,)                    (K,)
============  =================  ======================  ===================

``precisions_cholesky`` ``P`` satisfies ``precision = P @ P.T`` (full, tied) or
``precision = P ** 2`` (diag, spherical), as in scikit-learn.

Statistics are *shifted* by the current means ``c_k`` (DESIGN.md, "Numerics")::

    s1[k] = sum_i r_ik (x_i - c_k)
    s2[k] = sum_i r_ik (x_i - c_k)(x_i - c_k)^T     (full; diagonal or trace for
                                                     diag / spherical; summed
                                                     over k for tied)

and the M-step corrects exactly: ``mu = c + s1/N``, ``Sigma = s2/N - (s1/N)(s1/N)^T``.
No raw moments, so data far from the origin keep their precision.
"""

from functools import partial

import numpy as np

from dask_em._math import LOG_2PI
from dask_em.families._family import Family

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# scikit-learn adds this to the summed responsibilities to avoid dividing by zero.
_NK_EPS = 10 * np.finfo(np.float64).eps


# --------------------------------------------------------------------------- log-prob
def _log_det_cholesky(prec_chol, covariance_type, n_features):
    """log det of the precision, per component: shape (K,) or a scalar for tied."""
    if covariance_type == "full":
        return np.sum(np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "tied":
        return np.sum(np.log(np.diag(prec_chol)))
    if covariance_type == "diag":
        return np.sum(np.log(prec_chol), axis=1)
    return n_features * np.log(prec_chol)


def log_prob(X, params, covariance_type):
    """Log-density of each row under each Gaussian component.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    params : dict
        ``means`` and ``precisions_cholesky`` (see the module docstring).
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    log_prob : ndarray of shape (n, K)
    """
    means = params["means"]
    prec_chol = params["precisions_cholesky"]
    n, D = X.shape
    K = means.shape[0]
    sq = np.empty((n, K))
    for k in range(K):
        Xc = X - means[k]
        if covariance_type == "full":
            y = Xc @ prec_chol[k]
        elif covariance_type == "tied":
            y = Xc @ prec_chol
        else:
            y = Xc * prec_chol[k]
        sq[:, k] = np.einsum("ij,ij->i", y, y)
    log_det = _log_det_cholesky(prec_chol, covariance_type, D)
    return -0.5 * (D * LOG_2PI + sq) + log_det


# --------------------------------------------------------------------------- statistics
def suff_stats(X, resp, params, covariance_type):
    """Shifted first and second moments of ``X`` weighted by ``resp``.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    resp : ndarray of shape (n, K)
    params : dict
        Only ``means`` (K, D) is read: the shift ``c_k``.
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    stats : dict
        ``s1`` (K, D) and ``s2``: (K, D, D) full, (D, D) tied, (K, D) diag,
        (K,) spherical.
    """
    centers = params["means"]
    K, D = centers.shape
    s1 = np.empty((K, D))
    if covariance_type == "full":
        s2 = np.empty((K, D, D))
    elif covariance_type == "tied":
        s2 = np.zeros((D, D))
    elif covariance_type == "diag":
        s2 = np.empty((K, D))
    else:
        s2 = np.empty(K)
    for k in range(K):
        r = resp[:, k]
        Xc = X - centers[k]
        s1[k] = r @ Xc
        if covariance_type == "full":
            s2[k] = (Xc.T * r) @ Xc
        elif covariance_type == "tied":
            s2 += (Xc.T * r) @ Xc
        else:
            sq = r @ (Xc * Xc)
            s2[k] = sq if covariance_type == "diag" else sq.sum()
    return {"s1": s1, "s2": s2}


# --------------------------------------------------------------------------- M-step
def _not_positive_definite(component, reg_covar):
    where = "the tied covariance" if component is None else f"component {component}"
    return ValueError(
        f"Fitting the mixture model failed because {where} has an ill-defined "
        f"covariance: it is not positive definite even after adding "
        f"reg_covar={reg_covar:g} to its diagonal. This happens with collapsed "
        f"components (too few distinct rows), duplicated rows or constant features. "
        f"Increase reg_covar (for example to 1e-4), decrease n_components, or "
        f"standardise the features."
    )


def _inverse_lower(L):
    """Inverse of lower-triangular matrices (..., D, D), kept exactly triangular."""
    eye = np.broadcast_to(np.eye(L.shape[-1]), L.shape)
    return np.tril(np.linalg.solve(L, eye))


def precisions_cholesky_from_covariances(covariances, covariance_type, reg_covar=0.0):
    """Upper Cholesky factor of the precision from covariances.

    Raises a ``ValueError`` that names ``reg_covar`` when a covariance is not
    positive definite.
    """
    if covariance_type in ("full", "tied"):
        covs = covariances[None] if covariance_type == "tied" else covariances
        if not np.all(np.isfinite(covs)):
            bad = int(np.flatnonzero(~np.isfinite(covs).all(axis=(1, 2)))[0])
            raise _not_positive_definite(None if covariance_type == "tied" else bad, reg_covar)
        try:
            chol = np.linalg.cholesky(covs)
        except np.linalg.LinAlgError:
            for k, cov in enumerate(covs):
                try:
                    np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    raise _not_positive_definite(
                        None if covariance_type == "tied" else k, reg_covar
                    ) from None
            raise
        prec_chol = np.swapaxes(_inverse_lower(chol), -1, -2)
        return prec_chol[0] if covariance_type == "tied" else prec_chol
    bad = ~(covariances > 0) | ~np.isfinite(covariances)
    if np.any(bad):
        k = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise _not_positive_definite(k, reg_covar)
    return 1.0 / np.sqrt(covariances)


def m_step(stats, params, covariance_type, reg_covar=1e-6):
    """New means, covariances and precision factors from summed shifted statistics.

    Parameters
    ----------
    stats : dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (see :func:`suff_stats`), summed over all rows.
    params : dict
        The parameters the statistics were shifted by (``means``).
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance.

    Returns
    -------
    params : dict
        ``means``, ``covariances``, ``precisions_cholesky``.
    """
    nk = stats["nk"] + _NK_EPS
    s1, s2 = stats["s1"], stats["s2"]
    d = s1 / nk[:, None]
    means = params["means"] + d
    D = means.shape[1]
    if covariance_type == "full":
        cov = s2 / nk[:, None, None] - d[:, :, None] * d[:, None, :]
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        cov[:, np.arange(D), np.arange(D)] += reg_covar
    elif covariance_type == "tied":
        cov = (s2 - np.einsum("k,ki,kj->ij", nk, d, d)) / nk.sum()
        cov = 0.5 * (cov + cov.T)
        cov.flat[:: D + 1] += reg_covar
    elif covariance_type == "diag":
        cov = s2 / nk[:, None] - d**2 + reg_covar
    else:
        cov = s2 / (nk * D) - np.mean(d**2, axis=1) + reg_covar
    prec_chol = precisions_cholesky_from_covariances(cov, covariance_type, reg_covar)
    return {"means": means, "covariances": cov, "precisions_cholesky": prec_chol}


# --------------------------------------------------------------------------- conversions
def precisions_from_cholesky(prec_chol, covariance_type):
    """Precision matrices (scikit-learn's ``precisions_``) from their factors."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ np.swapaxes(prec_chol, -1, -2)
    return prec_chol**2


def _flip(a):
    return a[..., ::-1, ::-1]


def cholesky_from_precisions(precisions, covariance_type):
    """Upper factor ``P`` with ``P @ P.T == precision`` (full, tied) or ``sqrt`` (diag,
    spherical); the inverse of :func:`precisions_from_cholesky`."""
    if covariance_type in ("full", "tied"):
        return _flip(np.linalg.cholesky(_flip(precisions)))
    return np.sqrt(precisions)


def covariances_from_cholesky(prec_chol, covariance_type):
    """Covariances from precision factors: ``inv(P @ P.T)`` or ``1 / P**2``."""
    if covariance_type in ("full", "tied"):
        inv = np.linalg.inv(prec_chol)  # P^-1; covariance = P^-T P^-1
        return np.swapaxes(inv, -1, -2) @ inv
    return 1.0 / prec_chol**2


# --------------------------------------------------------------------------- the rest
def n_parameters(params, covariance_type):
    """Free parameters of the means and covariances (not the mixing weights)."""
    K, D = params["means"].shape
    cov_params = {
        "full": K * D * (D + 1) / 2.0,
        "tied": D * (D + 1) / 2.0,
        "diag": K * D,
        "spherical": K,
    }[covariance_type]
    return int(cov_params + K * D)


def sample(params, counts, rng, covariance_type):
    """``counts[k]`` draws from each component, stacked in component order.

    Returns
    -------
    X : ndarray of shape (sum(counts), D)
    """
    means, cov = params["means"], params["covariances"]
    D = means.shape[1]
    out = []
    for k, count in enumerate(counts):
        z = rng.standard_normal((int(count), D))
        if covariance_type in ("full", "tied"):
            c = cov[k] if covariance_type == "full" else cov
            out.append(means[k] + z @ np.linalg.cholesky(c).T)
        else:
            out.append(means[k] + z * np.sqrt(cov[k]))
    return np.concatenate(out, axis=0) if out else np.empty((0, D))


def _make(covariance_type):
    # partial keeps the functions pure and picklable for dask workers
    bind = partial
    return Family(
        name=f"gaussian-{covariance_type}",
        log_prob=bind(log_prob, covariance_type=covariance_type),
        suff_stats=bind(suff_stats, covariance_type=covariance_type),
        m_step=bind(m_step, covariance_type=covariance_type),
        n_parameters=bind(n_parameters, covariance_type=covariance_type),
        sample=bind(sample, covariance_type=covariance_type),
    )


FAMILIES = {cov_type: _make(cov_type) for cov_type in COVARIANCE_TYPES}
