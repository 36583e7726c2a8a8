"""Gaussian components on rows with missing features (``nan_policy="marginalize"``).

For rows that share one pattern of observed features ``o`` (missing ``m``), every
component ``k`` with mean ``mu`` and covariance ``S`` gives (Ghahramani & Jordan 1994):

- the marginal density of the observed features, ``N(x_o; mu_o, S_oo)``;
- the conditional mean of the missing ones,
  ``E[x_m | x_o, k] = mu_m + B (x_o - mu_o)`` with ``B = S_mo S_oo^-1``;
- their conditional covariance ``C = S_mm - S_mo S_oo^-1 S_om``.

The statistics are those of the completed row ``x^ = (x_o, E[x_m | x_o, k])``,
shifted by the current means as in :mod:`dask_em.families.gaussian`::

    s1[k] += sum_i r_ik (x^_ik - mu_k)
    s2[k] += sum_i r_ik (x^_ik - mu_k)(x^_ik - mu_k)^T + (sum_i r_ik) C_k   (on the m x m block)

For diag and spherical covariances the features are independent within a
component: ``B = 0``, the missing features contribute ``mu`` to ``s1`` (nothing,
once shifted) and ``sigma^2`` to ``s2``. ``B``, ``C`` and the Cholesky factor of
``S_oo`` are the pattern's *factors*, computed once per row block for all
components (once in all for tied). Everything is float64, for float32 data too: the
arithmetic that float32 would speed up is about a third of the gap path's time (the
rest is finding, grouping and gathering the rows), so it would save at most ~15%, and
the factors of an ill-conditioned ``S_oo`` would lose most of their digits in float32
(measured: ``benchmarks/README.md``, "float32 rows with gaps"). Outputs are cast back
to the data's dtype by the estimators.
"""

from functools import partial

import numpy as np

from dask_em._math import LOG_2PI
from dask_em.families._family import MissingOps, Params, Stats


def _variances(params, covariance_type):
    """Per-feature variances (K, D) of diag or spherical components."""
    cov = np.asarray(params["covariances"], dtype=np.float64)
    K, D = params["means"].shape
    return cov if covariance_type == "diag" else np.repeat(cov[:, None], D, axis=1)


def _full(params, covariance_type):
    """Covariances as (K, D, D), or (1, D, D) for tied (one matrix for all components)."""
    cov = np.asarray(params["covariances"], dtype=np.float64)
    return cov[None] if covariance_type == "tied" else cov


def factors(params: Params, observed: np.ndarray, covariance_type: str) -> dict:
    """The conditional factors of one pattern of observed features, for all components.

    Parameters
    ----------
    params : dict
        ``means`` (K, D) and ``covariances`` (shape of ``covariance_type``).
    observed : ndarray of bool, shape (D,)
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    dict
        ``o``, ``m``: indices of the observed and missing features; ``const`` (K,):
        ``-(|o| log 2 pi + log det S_oo) / 2``. Full and tied also ``linv``
        (K or 1, |o|, |o|), the inverse Cholesky factor of ``S_oo``; ``b``
        (K or 1, |m|, |o|) and ``c`` (K or 1, |m|, |m|), the regression and the
        conditional covariance. Diag and spherical: ``var_o`` (K, |o|), ``var_m`` (K, |m|).
    """
    o = np.flatnonzero(observed)
    m = np.flatnonzero(~np.asarray(observed, dtype=bool))
    K = params["means"].shape[0]
    if covariance_type in ("diag", "spherical"):
        var = _variances(params, covariance_type)
        const = -0.5 * (o.size * LOG_2PI + np.log(var[:, o]).sum(axis=1))
        return {"o": o, "m": m, "const": const, "var_o": var[:, o], "var_m": var[:, m]}
    S = _full(params, covariance_type)
    if o.size == 0:  # nothing observed: the component's own mean and covariance
        J = S.shape[0]
        return {"o": o, "m": m, "const": np.zeros(K), "linv": np.zeros((J, 0, 0)), "b": np.zeros((J, m.size, 0)),
                "c": S}
    S_oo = S[:, o][:, :, o]
    S_mo = S[:, m][:, :, o]
    L = np.linalg.cholesky(S_oo)
    eye = np.broadcast_to(np.eye(o.size), S_oo.shape)
    linv = np.linalg.solve(L, eye)  # L^-1 (lower); S_oo^-1 = L^-T L^-1
    b = (S_mo @ np.swapaxes(linv, 1, 2)) @ linv
    c = S[:, m][:, :, m] - b @ np.swapaxes(S_mo, 1, 2)
    c = 0.5 * (c + np.swapaxes(c, 1, 2))
    log_det = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    const = -0.5 * (o.size * LOG_2PI + log_det)
    return {"o": o, "m": m, "const": np.broadcast_to(const, (K,)), "linv": linv, "b": b, "c": c}


def _pick(f, key, k):
    a = f[key]
    return a[0] if a.shape[0] == 1 else a[k]


def log_prob(X: np.ndarray, params: Params, factors: dict, covariance_type: str) -> np.ndarray:
    """Log-density of the observed features of each row under each component.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows sharing the pattern of ``factors``; missing entries are not read.
    params : dict
        ``means`` (K, D).
    factors : dict
        From :func:`factors` for the same pattern and parameters.
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    ndarray of shape (n, K), float64
    """
    o = factors["o"]
    mu_o = params["means"][:, o]
    R = np.asarray(X[:, o], dtype=np.float64)[None, :, :] - mu_o[:, None, :]  # (K, n, |o|)
    if covariance_type in ("diag", "spherical"):
        maha = np.einsum("knd,knd->kn", R, R / factors["var_o"][:, None, :])
    else:
        Y = R @ np.swapaxes(factors["linv"], 1, 2)  # whitened: L^-1 (x_o - mu_o)
        maha = np.einsum("knd,knd->kn", Y, Y)
    return (factors["const"][:, None] - 0.5 * maha).T


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, covariance_type: str) -> Stats:
    """Expected shifted statistics of the complete rows (see the module docstring).

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows sharing the pattern of ``factors``.
    resp : ndarray of shape (n, K)
        Responsibilities (times sample weights).
    params : dict
        ``means`` (K, D): the shift, as in :func:`dask_em.families.gaussian.suff_stats`.
    factors : dict
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    dict of float64 arrays
        ``nk`` (K,), ``s1`` (K, D), ``s2`` ((K, D, D) full, (D, D) tied, (K, D)
        diag, (K,) spherical), to add to those of the complete rows.
    """
    means = np.asarray(params["means"], dtype=np.float64)
    K, D = means.shape
    o, m = factors["o"], factors["m"]
    resp = np.asarray(resp, dtype=np.float64)
    nk = resp.sum(axis=0)
    Xo = np.asarray(X[:, o], dtype=np.float64)
    s1 = np.zeros((K, D))
    if covariance_type in ("diag", "spherical"):
        R = Xo[None, :, :] - means[:, None, o]  # (K, n, |o|)
        s1[:, o] = np.einsum("nk,knd->kd", resp, R)
        q = np.empty((K, D))
        q[:, o] = np.einsum("nk,knd->kd", resp, R * R)
        q[:, m] = nk[:, None] * factors["var_m"]  # E[(x_m - mu_m)^2 | k] = sigma^2
        return {"nk": nk, "s1": s1, "s2": q if covariance_type == "diag" else q.sum(axis=1)}
    tied = covariance_type == "tied"
    s2 = np.zeros((D, D)) if tied else np.zeros((K, D, D))
    Z = np.empty((Xo.shape[0], D))
    mm = np.ix_(m, m)
    for k in range(K):
        Z[:, o] = Xo - means[k, o]
        Z[:, m] = Z[:, o] @ _pick(factors, "b", k).T  # E[x_m | x_o, k] - mu_m
        r = resp[:, k]
        s1[k] = r @ Z
        M = (Z * r[:, None]).T @ Z
        M[mm] += nk[k] * _pick(factors, "c", k)
        if tied:
            s2 += M
        else:
            s2[k] = M
    return {"nk": nk, "s1": s1, "s2": s2}


def expect(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, covariance_type: str) -> np.ndarray:
    """``sum_k resp_ik E[x_m | x_o, k]``: the missing features' conditional expectation.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    resp : ndarray of shape (n, K)
        The posterior of the components given the observed features.
    params : dict
    factors : dict
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    ndarray of shape (n, n_missing), float64
    """
    means = np.asarray(params["means"], dtype=np.float64)
    o, m = factors["o"], factors["m"]
    resp = np.asarray(resp, dtype=np.float64)
    out = resp @ means[:, m]
    if covariance_type in ("diag", "spherical") or o.size == 0:
        return out
    Xo = np.asarray(X[:, o], dtype=np.float64)
    for k in range(means.shape[0]):
        out += resp[:, k : k + 1] * ((Xo - means[k, o]) @ _pick(factors, "b", k).T)
    return out


def missing_ops(covariance_type: str) -> MissingOps:
    """The :class:`~dask_em.families.MissingOps` of Gaussian components of one covariance type."""
    return MissingOps(
        factors=partial(factors, covariance_type=covariance_type),
        log_prob=partial(log_prob, covariance_type=covariance_type),
        suff_stats=partial(suff_stats, covariance_type=covariance_type),
        expect=partial(expect, covariance_type=covariance_type),
    )
