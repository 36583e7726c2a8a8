"""Missing features of families whose features are independent within a component.

Bernoulli, Poisson and categorical components are products over the features, so a
missing feature drops out of the product (its factor integrates to 1) and the
log-density of a row is that of its observed features: the family's own
``log_prob`` on the observed columns and the parameters restricted to them. In the
statistics a missing feature contributes its expectation under the component: the
probability of a 1 (Bernoulli), the rate (Poisson), the category probabilities
(categorical), times the responsibility.
"""

from functools import partial

import numpy as np

from dask_em.families._family import MissingOps, Params, Stats


def factors(params: Params, observed: np.ndarray, per_feature: dict) -> dict:
    """The parameters restricted to the observed features (axis 1 of every parameter).

    ``per_feature`` holds keyword arguments of the family's functions that have one
    entry per feature (``n_categories``): they are restricted too.
    """
    observed = np.asarray(observed, dtype=bool)
    o, m = np.flatnonzero(observed), np.flatnonzero(~observed)
    kwargs = {key: tuple(np.asarray(value)[o]) for key, value in per_feature.items()}
    return {"o": o, "m": m, "sub": {key: value[:, o] for key, value in params.items()}, "kwargs": kwargs}


def log_prob(X: np.ndarray, params: Params, factors: dict, family_log_prob) -> np.ndarray:
    """Log-density (n, K) of the observed features: the family's on those columns."""
    return np.asarray(family_log_prob(X[:, factors["o"]], factors["sub"], **factors["kwargs"]), dtype=np.float64)


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, family_suff_stats,
               expected: dict) -> Stats:
    """The family's statistics with each missing feature replaced by its expectation.

    ``expected`` maps each statistic to the parameter holding the expected value of
    a feature (``{"s1": "means"}``, ``{"counts": "probs"}``); both have the
    features on axis 1.
    """
    o, m = factors["o"], factors["m"]
    resp = np.asarray(resp, dtype=np.float64)
    nk = resp.sum(axis=0)
    observed = family_suff_stats(X[:, o], resp, factors["sub"], **factors["kwargs"])
    out = {"nk": nk}
    for key, param in expected.items():
        value = np.asarray(params[param], dtype=np.float64)
        full = np.empty((resp.shape[1],) + value.shape[1:])
        full[:, o] = observed[key]
        full[:, m] = nk.reshape((-1,) + (1,) * (value.ndim - 1)) * value[:, m]
        out[key] = full
    return out


def expect(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, mean) -> np.ndarray:
    """``sum_k resp_ik E[x_m | k]`` (n, n_missing), ``mean(params)`` giving ``E[x | k]`` (K, D)."""
    return np.asarray(resp, dtype=np.float64) @ mean(params)[:, factors["m"]]


def _means(params):
    return np.asarray(params["means"], dtype=np.float64)


def missing_ops(family_log_prob, family_suff_stats, expected, mean=_means, per_feature=None) -> MissingOps:
    """:class:`~dask_em.families.MissingOps` of an independent-features family.

    Parameters
    ----------
    family_log_prob, family_suff_stats : callable
        The family's ``log_prob(X, params, **kw)`` and ``suff_stats(X, resp, params, **kw)``.
    expected : dict
        Statistic -> parameter holding a feature's expectation (see :func:`suff_stats`).
    mean : callable, optional
        ``mean(params) -> (K, D)``, the value ``impute`` gives a missing feature in
        component k (default: ``params["means"]``).
    per_feature : dict, optional
        Keyword arguments of the family's functions with one entry per feature.
    """
    per_feature = per_feature or {}
    return MissingOps(
        factors=partial(factors, per_feature=per_feature),
        log_prob=partial(log_prob, family_log_prob=family_log_prob),
        suff_stats=partial(suff_stats, family_suff_stats=family_suff_stats, expected=expected),
        expect=partial(expect, mean=mean),
    )
