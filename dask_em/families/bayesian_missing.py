"""Variational Gaussian components on rows with missing features (``nan_policy="marginalize"``).

The missing features ``x_m`` of a row are latent variables with the component
``z``, and the variational posterior is ``q(z, x_m) q(theta)``. As a function of
the row, the E-step's expected log-density of component ``k`` (see
:func:`dask_em.families.bayesian_gaussian.log_prob`) is a Gaussian log-density
plus a constant::

    E_q(theta)[log N(x | mu_k, Lambda_k^-1)] = log N(x; m_k, S_k) + c_k,
    S_k = (nu_k W_k)^-1 = E[Lambda_k]^-1      (the family's normalised ``covariances``)
    c_k = -D/2 log nu_k + (E[log |Lambda_k|] - log |W_k| - D / beta_k) / 2

(for diag and spherical components with scikit-learn's ``E[log |Lambda_k|]``). So
the optimal ``q(x_m | z=k)``, proportional to ``exp E_q(theta)[log p(x, z=k | theta)]``,
is Gaussian with precision ``E[Lambda_k]_mm = nu_k (W_k)_mm`` and mean
``m_m - (W_mm)^-1 W_mo (x_o - m_o) = m_m + S_mo S_oo^-1 (x_o - m_o)``: the
conditional of ``N(m_k, S_k)``, the same regression ``B`` and conditional covariance
``C = S_mm - S_mo S_oo^-1 S_om`` as the maximum-likelihood Gaussian's
(:mod:`dask_em.families.gaussian_missing`), with ``S_k`` for the covariance.
Integrating ``x_m`` out, ``q(z=k)`` is proportional to ``E[pi_k]`` times
``exp(log N(x_o; m_o, S_oo) + c_k)``, the Gaussian marginal plus the same constant
(the ``(2 pi)^(d_m / 2) |C|^(1/2)`` of the integral cancels the marginal's missing
factors exactly).

The statistics are the Gaussian's expected ones of the completed rows (with ``C``
added to the missing block of the second moments), from which the M-step's
posterior follows as for complete rows; and the lower bound gains the entropy of
``q(x_m | z)``, ``H_k = d_m (1 + log 2 pi) / 2 + log |C_k| / 2``, through the
statistic ``resp_log_resp``, which becomes ``E_q[log q(z, x_m)]`` (minus the entropy
of every latent variable): ``sum r log r - sum_k n_k H_k``. On rows without gaps
nothing changes.
"""

from functools import partial

import numpy as np
from scipy.special import xlogy

from dask_em._math import LOG_2PI
from dask_em.families import gaussian_missing as gm
from dask_em.families._family import MissingOps, Params, Stats


def factors(params: Params, observed: np.ndarray, covariance_type: str, constant) -> dict:
    """The Gaussian factors of one pattern (:func:`dask_em.families.gaussian_missing.factors`)
    with the normalised covariances, plus ``vb_const`` (K,), the per-component constant
    ``c_k`` (``constant(params)``), and ``entropy`` (K,), the entropy of ``q(x_m | z=k)``."""
    f = gm.factors(params, observed, covariance_type)
    K = params["means"].shape[0]
    m = f["m"]
    if covariance_type in ("diag", "spherical"):
        log_det_c = np.log(f["var_m"]).sum(axis=1)
    else:
        log_det_c = np.linalg.slogdet(f["c"])[1] if m.size else np.zeros(f["c"].shape[0])
    f["vb_const"] = np.broadcast_to(constant(params), (K,))
    f["entropy"] = np.broadcast_to(0.5 * (m.size * (1.0 + LOG_2PI) + log_det_c), (K,))
    return f


def log_prob(X: np.ndarray, params: Params, factors: dict, covariance_type: str) -> np.ndarray:
    """Log of ``q(z=k)``'s factor of each row, its weight aside, (n, K): the Gaussian marginal
    ``log N(x_o; m_o, S_oo)`` of the observed features plus ``c_k`` (see the module docstring)."""
    return gm.log_prob(X, params, factors, covariance_type) + factors["vb_const"]


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, covariance_type: str) -> Stats:
    """Expected shifted statistics of the completed rows plus ``resp_log_resp``,
    ``E_q[log q(z, x_m)]`` of these rows (see the module docstring).

    Returns
    -------
    dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (by covariance type), ``resp_log_resp`` (float).
    """
    stats = gm.suff_stats(X, resp, params, factors, covariance_type)
    resp = np.asarray(resp, dtype=np.float64)
    w = resp.sum(axis=1)
    resp_log_resp = float(np.sum(xlogy(resp, resp))) - float(np.sum(xlogy(w, w)))
    stats["resp_log_resp"] = resp_log_resp - float(stats["nk"] @ factors["entropy"])
    return stats


def missing_ops(covariance_type: str, constant) -> MissingOps:
    """The :class:`~dask_em.families.MissingOps` of variational Gaussian components;
    ``constant(params) -> (K,)`` gives ``c_k``."""
    return MissingOps(
        factors=partial(factors, covariance_type=covariance_type, constant=constant),
        log_prob=partial(log_prob, covariance_type=covariance_type),
        suff_stats=partial(suff_stats, covariance_type=covariance_type),
        expect=partial(gm.expect, covariance_type=covariance_type),
    )
