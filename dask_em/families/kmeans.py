"""K-means as a component family: hard-assignment EM with squared Euclidean distance.

``params = {"means": (K, D)}``. ``log_prob`` is minus the squared distance, so the
engine's hard E-step assigns each row to its nearest mean and its "log-likelihood"
is minus the inertia. Statistics are shifted by the current means ``c_k``, as for
Gaussians::

    s1[k]  = sum_i r_ik (x_i - c_k)          (K, D)
    s2[k]  = sum_i r_ik (x_i - c_k) ** 2     (K, D), per feature: gives the data
                                             variance (scikit-learn's relative tol)
    sig[k] = sum_i r_ik (x_i . v)            (K,), v fixed: equal between two
                                             passes exactly when the partition is
                                             unchanged (strict convergence)
    far    = the K rows farthest from their assigned centre (:class:`FarRows`)

An empty cluster is re-seeded in the M-step at the farthest row of the pass
(taken out of its old cluster), as scikit-learn does; it is never NaN.
"""

from typing import Sequence

import numpy as np

from dask_em._math import dot
from dask_em.families._checks import check_keys, check_shape, check_values
from dask_em.families._family import Family, Params, Stats


class FarRows:
    """The ``m`` rows of a pass farthest from their assigned centre.

    A statistic combined with ``+`` by keeping the ``m`` largest distances
    (associative and commutative; ``0 + s`` is ``s``), so it travels through the
    engine's key-wise tree sum like an array.

    Attributes
    ----------
    rows : ndarray (m', D)
    d2 : ndarray (m',)
        Squared distance to the assigned centre, in decreasing order.
    labels : ndarray of int (m',)
    weights : ndarray (m',)
    m : int
    """

    def __init__(self, rows: np.ndarray, d2: np.ndarray, labels: np.ndarray, weights: np.ndarray, m: int):
        order = np.argsort(-d2, kind="stable")[:m]
        self.rows, self.d2 = rows[order], d2[order]
        self.labels, self.weights, self.m = labels[order], weights[order], m

    def __add__(self, other: "FarRows | int | float") -> "FarRows":
        if not isinstance(other, FarRows):
            return self if other == 0 else NotImplemented
        return FarRows(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.d2, other.d2]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.weights, other.weights]),
            self.m,
        )

    __radd__ = __add__

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The fields as a tuple of arrays (for comparisons)."""
        return self.rows, self.d2, self.labels, self.weights


def _sq_dist(X, means):
    out = np.empty((X.shape[0], means.shape[0]))
    for k, c in enumerate(means):
        Xc = X - c
        out[:, k] = np.einsum("ij,ij->i", Xc, Xc)
    return out


def log_prob(X: np.ndarray, params: Params) -> np.ndarray:
    """Minus the squared Euclidean distance of each row to each mean.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    params : dict with ``means`` (K, D)

    Returns
    -------
    ndarray of shape (n, K)
    """
    return -_sq_dist(X, params["means"])


def _signature_vector(D):
    return np.cos(np.arange(1, D + 1) * 0.7548776662466927)  # fixed, no special structure


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params) -> Stats:
    """Shifted sums, signature and farthest rows for one-hot (or weighted) ``resp`` (n, K)."""
    centers = params["means"]
    K, D = centers.shape
    s1 = np.empty((K, D))
    s2 = np.empty((K, D))
    for k, c in enumerate(centers):
        Xc = X - c
        s1[k] = dot(resp[:, k], Xc)
        s2[k] = dot(resp[:, k], Xc * Xc)
    labels = np.argmax(resp, axis=1) if resp.size else np.zeros(0, dtype=np.intp)
    weights = resp[np.arange(X.shape[0]), labels] if resp.size else np.zeros(0)
    diff = X - centers[labels]
    d2 = np.einsum("ij,ij->i", diff, diff)
    return {
        "s1": s1,
        "s2": s2,
        "sig": dot(resp.T, X @ _signature_vector(D)),
        "far": FarRows(X, d2, labels, weights, K),
    }


def m_step(stats: Stats, params: Params) -> Params:
    """Centroids ``c + s1 / n_k``; empty clusters re-seeded at the farthest rows.

    The i-th empty cluster (in index order) moves to the i-th farthest row of the
    pass, which leaves its old cluster, as in scikit-learn's Lloyd iteration. Without
    ``far`` statistics (or with fewer rows than empty clusters) an empty cluster
    keeps its centre.
    """
    nk = np.array(stats["nk"], dtype=np.float64, copy=True)
    s1 = np.array(stats["s1"], dtype=np.float64, copy=True)
    old = np.asarray(params["means"], dtype=np.float64)
    means = old.copy()
    far = stats.get("far")
    empty = np.flatnonzero(nk <= 0)
    if empty.size and far is not None:
        for i, k in enumerate(empty[: len(far.d2)]):
            x, j, w = far.rows[i], far.labels[i], far.weights[i]
            s1[j] -= w * (x - old[j])
            nk[j] -= w
            means[k] = x
    filled = nk > 0
    means[filled] = old[filled] + s1[filled] / nk[filled, None]
    return {"means": means}


def data_variance(stats: Stats, params: Params) -> np.ndarray:
    """Per-feature (weighted) variance of the data from one pass's statistics (D,).

    Exact from the shifted sums: ``sum_k s2_k + 2 (c_k - m) s1_k + n_k (c_k - m)^2``
    over ``N``, with ``m`` the overall mean.
    """
    c, nk, s1, s2 = params["means"], stats["nk"], stats["s1"], stats["s2"]
    N = nk.sum()
    m = (nk[:, None] * c + s1).sum(axis=0) / N
    dc = c - m
    return (s2 + 2.0 * dc * s1 + nk[:, None] * dc**2).sum(axis=0) / N


def recentre(stats, old_params, new_params):
    """``s1`` and ``s2`` about the old centres, re-expressed exactly about the new ones.

    With ``d_k = c_k - c'_k``: ``s1' = s1 + n_k d_k`` and, per feature,
    ``s2' = s2 + 2 d_k s1 + n_k d_k ** 2``. ``sig`` and ``far`` are not shifted and
    pass through, as do other keys.

    Parameters
    ----------
    stats : dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (K, D) about ``old_params["means"]``.
    old_params, new_params : dict
        ``means`` (K, D).

    Returns
    -------
    stats : dict
        A new dict.
    """
    nk = np.asarray(stats["nk"], dtype=np.float64)
    s1 = np.asarray(stats["s1"], dtype=np.float64)
    d = np.asarray(old_params["means"], dtype=np.float64) - np.asarray(new_params["means"], dtype=np.float64)
    s2 = np.asarray(stats["s2"], dtype=np.float64) + 2.0 * d * s1 + nk[:, None] * d**2
    return {**stats, "s1": s1 + nk[:, None] * d, "s2": s2}


def n_parameters(params: Params) -> int:
    """``K * D`` centre coordinates."""
    return int(np.size(params["means"]))


def sample(params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """K-means is not a generative model; sampling from it is refused."""
    raise ValueError(
        "K-means has no generative model to sample from; fit a GaussianMixture "
        "with covariance_type='spherical' instead."
    )


def check_params(params, n_components, n_features):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        Must be ``{"means": ndarray (n_components, n_features)}``, all finite.
    n_components, n_features : int
    """
    check_keys(params, ["means"])
    means = params["means"]
    check_shape("means", means, (n_components, n_features))
    check_values("means", means, ~np.isfinite(means), "must be finite")


FAMILY = Family(
    name="kmeans",
    log_prob=log_prob,
    suff_stats=suff_stats,
    m_step=m_step,
    n_parameters=n_parameters,
    sample=sample,
    hard=True,
    check_params=check_params,
    recentre=recentre,
)
