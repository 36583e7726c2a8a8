"""Bernoulli components: each feature is 0 or 1, independent within a component.

``params = {"means": (K, D)}``, the probability that feature ``d`` is 1 in component
``k``. Statistics: ``s1[k] = sum_i r_ik x_i`` (K, D); the data are bounded, so no
shift is needed. The M-step smooths with a Beta(1 + alpha, 1 + alpha) prior (its
mode), so no probability is exactly 0 or 1::

    p_kd = (s1_kd + alpha) / (n_k + 2 alpha)

``FAMILY`` takes data that are already 0 or 1; :func:`make_family` binds a threshold
(as ``sklearn.naive_bayes.BernoulliNB``'s ``binarize``) so that any real data are
binarised block by block, inside the passes.
"""

from dataclasses import replace
from functools import partial
from typing import Sequence

import numpy as np

from dask_em._math import dot
from dask_em.families._checks import check_keys, check_shape, check_values, raise_if_invalid
from dask_em.families._family import Family, Params, Stats
from dask_em.families.independent_missing import missing_ops

_NK_EPS = 10 * np.finfo(np.float64).eps


def check_data(X: np.ndarray) -> None:
    """Raise a ``ValueError`` naming column and value unless every entry is 0 or 1."""
    rule = (
        "Bernoulli features must be 0 or 1; binarise them first, e.g. X = (X > threshold), "
        "or let the estimator do it (binarize=threshold)."
    )
    raise_if_invalid(X, X < 0, "Bernoulli", rule, negative=True)
    raise_if_invalid(X, (X != 0) & (X != 1), "Bernoulli", rule)


def log_prob(X: np.ndarray, params: Params, offset: np.ndarray | None = None) -> np.ndarray:
    """``sum_d x_d log p_kd + (1 - x_d) log(1 - p_kd)`` with one GEMM.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64, entries 0 or 1
    params : dict with ``means`` (K, D), entries in (0, 1)
    offset : ndarray of shape (K,), optional
        Added to every row (see :class:`~dask_em.families.Family`).

    Returns
    -------
    ndarray of shape (n, K)
    """
    check_data(X)
    p = params["means"]
    log1m = np.log1p(-p)
    const = log1m.sum(axis=1) if offset is None else log1m.sum(axis=1) + offset
    return X @ (np.log(p) - log1m).T + const


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params) -> Stats:
    """``s1`` (K, D): responsibility-weighted counts of ones. ``params`` is unused."""
    check_data(X)
    return {"s1": dot(resp.T, X)}


def m_step(stats: Stats, params: Params, alpha: float = 1e-3) -> Params:
    """Smoothed probabilities ``(s1 + alpha) / (n_k + 2 alpha)``; ``params`` is unused.

    Parameters
    ----------
    stats : dict with ``nk`` (K,) and ``s1`` (K, D)
    params : dict
        Current parameters (unused; may hold only ``means``).
    alpha : float
        Pseudo-count; an empty component gets probability 0.5 everywhere
        (``alpha > 0``) instead of NaN.
    """
    nk = stats["nk"] + _NK_EPS
    return {"means": (stats["s1"] + alpha) / (nk[:, None] + 2.0 * alpha)}


def n_parameters(params: Params) -> int:
    """``K * D`` probabilities."""
    return int(np.size(params["means"]))


def sample(params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``counts[k]`` rows of 0/1 (float64) from component ``k``, in component order."""
    p = params["means"]
    out = [(rng.random((int(c), p.shape[1])) < p[k]).astype(np.float64) for k, c in enumerate(counts)]
    return np.concatenate(out, axis=0) if out else np.empty((0, p.shape[1]))


def check_params(params, n_components, n_features):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        Must be ``{"means": ndarray (n_components, n_features)}`` with every entry
        in the open interval (0, 1).
    n_components, n_features : int
    """
    check_keys(params, ["means"])
    p = params["means"]
    check_shape("means", p, (n_components, n_features))
    check_values("means", p, ~((p > 0) & (p < 1)), "must lie in the open interval (0, 1)")


FAMILY = Family(
    name="bernoulli",
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


def binarize(X: np.ndarray, threshold: float) -> np.ndarray:
    """1.0 where ``X > threshold``, else 0.0, as float64; NaN stays NaN.

    Parameters
    ----------
    X : ndarray of shape (n, D), real numbers
    threshold : float
    """
    X = np.asarray(X, dtype=np.float64)
    out = (X > threshold).astype(np.float64)
    out[np.isnan(X)] = np.nan
    return out


def _on_binarized(function, X, *args, threshold, **kwargs):
    return function(binarize(X, threshold), *args, **kwargs)


def make_family(threshold: float | None = None) -> Family:
    """The Bernoulli :class:`Family`, binarising its data at ``threshold`` first.

    ``None``: :data:`FAMILY`, for data that hold only 0 and 1 (anything else is an
    error). A float: every real value is valid, ``x > threshold`` counts as a 1.
    """
    if threshold is None:
        return FAMILY
    t = float(threshold)
    binarized_log_prob = partial(_on_binarized, log_prob, threshold=t)
    binarized_suff_stats = partial(_on_binarized, suff_stats, threshold=t)
    return replace(
        FAMILY,
        log_prob=binarized_log_prob,
        suff_stats=binarized_suff_stats,
        check_data=None,
        missing=missing_ops(binarized_log_prob, binarized_suff_stats, {"s1": "means"}),
    )
