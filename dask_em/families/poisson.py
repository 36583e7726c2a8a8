"""Poisson components: each feature is a count, independent within a component.

``params = {"means": (K, D)}``, the rate of feature ``d`` in component ``k``.
Statistics: ``s1[k] = sum_i r_ik x_i`` (K, D); counts are non-negative, so the sums
have no cancellation and need no shift. The M-step is the mode under a
Gamma(1 + alpha, alpha) prior (alpha pseudo-rows with a total count of alpha, prior
rate 1), so no rate is exactly 0 and an empty component gets rate 1, never NaN::

    lambda_kd = (s1_kd + alpha) / (n_k + alpha)
"""

from typing import Sequence

import numpy as np
from scipy.special import gammaln

from dask_em._math import dot
from dask_em.families._checks import check_keys, check_shape, check_values, raise_if_invalid
from dask_em.families._family import Family, Params, Stats
from dask_em.families.independent_missing import missing_ops

_NK_EPS = 10 * np.finfo(np.float64).eps


def check_data(X: np.ndarray) -> None:
    """Raise a ``ValueError`` naming column and value unless every entry is >= 0.

    Whole numbers are counts; other non-negative reals are valid too (see
    :func:`log_prob`).
    """
    raise_if_invalid(
        X,
        X < 0,
        "Poisson",
        "Poisson features must be non-negative (counts); fix or remove these values.",
        negative=True,
    )


def log_prob(X: np.ndarray, params: Params, offset: np.ndarray | None = None) -> np.ndarray:
    """``sum_d x_d log lambda_kd - lambda_kd - log(x_d!)`` with one GEMM.

    ``log(x!)`` is ``lgamma(x + 1)``, so the formula extends to non-negative reals
    (rates, normalised counts): there it is the Poisson quasi-log-likelihood, whose
    maximiser is still the weighted mean, not the log of a density over the reals.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64, >= 0 (counts, or non-negative reals)
    params : dict with ``means`` (K, D), rates > 0
    offset : ndarray of shape (K,), optional
        Added to every row (see :class:`~dask_em.families.Family`).

    Returns
    -------
    ndarray of shape (n, K)
    """
    check_data(X)
    lam = params["means"]
    const = -lam.sum(axis=1) if offset is None else offset - lam.sum(axis=1)
    return X @ np.log(lam).T + const - gammaln(X + 1.0).sum(axis=1)[:, None]


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params) -> Stats:
    """``s1`` (K, D): responsibility-weighted count sums. ``params`` is unused."""
    check_data(X)
    return {"s1": dot(resp.T, X)}


def m_step(stats: Stats, params: Params, alpha: float = 1e-3) -> Params:
    """Smoothed rates ``(s1 + alpha) / (n_k + alpha)``; ``params`` is unused.

    Parameters
    ----------
    stats : dict with ``nk`` (K,) and ``s1`` (K, D)
    params : dict
        Current parameters (unused; may hold only ``means``).
    alpha : float
        Prior strength in pseudo-rows.
    """
    nk = stats["nk"] + _NK_EPS
    return {"means": (stats["s1"] + alpha) / (nk[:, None] + alpha)}


def n_parameters(params: Params) -> int:
    """``K * D`` rates."""
    return int(np.size(params["means"]))


def sample(params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``counts[k]`` rows of counts (float64) from component ``k``, in component order."""
    lam = params["means"]
    out = [rng.poisson(lam[k], size=(int(c), lam.shape[1])).astype(np.float64) for k, c in enumerate(counts)]
    return np.concatenate(out, axis=0) if out else np.empty((0, lam.shape[1]))


def check_params(params, n_components, n_features):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        Must be ``{"means": ndarray (n_components, n_features)}`` with every rate
        finite and > 0.
    n_components, n_features : int
    """
    check_keys(params, ["means"])
    lam = params["means"]
    check_shape("means", lam, (n_components, n_features))
    check_values("means", lam, ~((lam > 0) & np.isfinite(lam)), "must be finite and > 0")


FAMILY = Family(
    name="poisson",
    stacks=True,  # parameters and statistics are K-first arrays
    takes_offset=True,
    log_prob=log_prob,
    suff_stats=suff_stats,
    m_step=m_step,
    n_parameters=n_parameters,
    sample=sample,
    check_data=check_data,
    check_params=check_params,
    missing=missing_ops(log_prob, suff_stats, {"s1": "means"}),
)
