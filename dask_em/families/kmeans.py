"""K-means as a component family: hard-assignment EM with squared Euclidean distance.

``params = {"means": (K, D)}``. ``log_prob`` is minus the squared distance, so the
engine's hard E-step assigns each row to its nearest mean and its "log-likelihood"
is minus the inertia. Statistics are shifted by the current means, as for Gaussians.
"""

import numpy as np

from dask_em.families._family import Family


def log_prob(X, params):
    """Minus the squared Euclidean distance of each row to each mean.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    params : dict with ``means`` (K, D)

    Returns
    -------
    ndarray of shape (n, K)
    """
    means = params["means"]
    out = np.empty((X.shape[0], means.shape[0]))
    for k, c in enumerate(means):
        Xc = X - c
        out[:, k] = -np.einsum("ij,ij->i", Xc, Xc)
    return out


def suff_stats(X, resp, params):
    """``s1[k] = sum_i r_ik (x_i - c_k)`` for one-hot (or soft) ``resp`` (n, K)."""
    centers = params["means"]
    s1 = np.empty_like(centers, dtype=np.float64)
    for k, c in enumerate(centers):
        s1[k] = resp[:, k] @ (X - c)
    return {"s1": s1}


def m_step(stats, params):
    """Centroids ``c + s1 / n_k``; a cluster that received no rows keeps its centre."""
    nk = stats["nk"]
    means = np.array(params["means"], dtype=np.float64, copy=True)
    filled = nk > 0
    means[filled] += stats["s1"][filled] / nk[filled, None]
    return {"means": means}


def n_parameters(params):
    """``K * D`` centre coordinates."""
    return int(np.size(params["means"]))


def sample(params, counts, rng):
    """K-means is not a generative model; sampling from it is refused."""
    raise ValueError(
        "K-means has no generative model to sample from; fit a GaussianMixture "
        "with covariance_type='spherical' instead."
    )


FAMILY = Family(
    name="kmeans",
    log_prob=log_prob,
    suff_stats=suff_stats,
    m_step=m_step,
    n_parameters=n_parameters,
    sample=sample,
    hard=True,
)
