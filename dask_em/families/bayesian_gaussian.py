"""Variational Bayesian Gaussian components: scikit-learn's ``BayesianGaussianMixture``.

Variational inference for a Gaussian mixture with conjugate priors (Bishop 2006,
ch. 10; Blei & Jordan 2006 for the Dirichlet process) is EM on the same
statistics: the E-step uses *expected* log-densities and *expected* log mixing
weights, the M-step returns the posterior's parameters instead of point estimates,
and the objective is the lower bound (ELBO). Everything here follows
``sklearn/mixture/_bayesian_mixture.py`` term for term, with its normalisations
(covariances divided by the degrees of freedom) and its simplified bound.

Parameters (a dict; K components, D features) hold the Gaussian family's
``means``, ``covariances``, ``precisions_cholesky`` (shapes in
:mod:`dask_em.families.gaussian`), plus

=============================  ==========================================
``weight_concentration``       (K, 2) Beta parameters (Dirichlet process) or
                               (K,) Dirichlet parameters
``mean_precision``             (K,)
``degrees_of_freedom``         (K,), a 0-d array for tied
``mean_prior``                 (D,)
``covariance_prior``           (D, D) full / tied, (D,) diag, 0-d spherical
``mean_precision_prior``,      0-d arrays
``degrees_of_freedom_prior``,
``weight_concentration_prior``
=============================  ==========================================

The priors travel with the parameters: the M-step needs them, and those taken from
the data (``mean_prior``, ``covariance_prior``) are known only after a pass.

The E-step is the Gaussian kernel (:func:`dask_em.families.gaussian.log_prob`) with
a per-component constant ``-D/2 log nu_k + (E[log |Lambda_k|] - D / beta_k) / 2``
added through its ``offset``, and the engine adds the expected log weights
(:func:`log_weights`, the family's ``log_weights`` hook). :func:`suff_stats` adds one
statistic to the Gaussian ones, ``resp_log_resp = sum_nk r_nk log r_nk`` (minus the
entropy of the responsibilities), so the ELBO (:func:`lower_bound`) comes from the
statistics of the pass and the new parameters: no second pass.

Statistics are shifted by the current means (see :mod:`dask_em.families.gaussian`);
the M-step corrects exactly, and the posterior means and scatter about the prior
mean use ``x_k - m_0 = (c_k - m_0) + s1_k / n_k``, so data far from the origin fit
as well as centred data.
"""

import math
from functools import partial

import numpy as np
from scipy.special import betaln, digamma, gammaln, xlogy

from dask_em.families import gaussian
from dask_em.families._family import Family, Params, Stats
from dask_em.families.bayesian_missing import missing_ops
from dask_em.families.gaussian import COVARIANCE_TYPES, _COVARIANCES, _LOG_DET_CHOLESKY, _NK_EPS, _pick

#: scikit-learn's ``weight_concentration_prior_type`` values.
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
_SHORT = {"dirichlet_process": "dp", "dirichlet_distribution": "dd"}

#: Keys of the priors inside the parameters.
PRIOR_KEYS = (
    "mean_prior",
    "covariance_prior",
    "mean_precision_prior",
    "degrees_of_freedom_prior",
    "weight_concentration_prior",
)


def _log_det_precisions(params, covariance_type, n_features):
    """``log |P_k|`` of the normalised precision factors minus ``D/2 log nu_k``."""
    log_det = _pick(_LOG_DET_CHOLESKY, covariance_type)(params["precisions_cholesky"], n_features)
    return log_det - 0.5 * n_features * np.log(params["degrees_of_freedom"])


def _expected_log_det(dof, n_features):
    """``E[log |Lambda|]`` less ``D log nu`` (the precisions are normalised): (K,) or (1,)."""
    dof = np.atleast_1d(dof)
    return n_features * math.log(2.0) + np.sum(digamma(0.5 * (dof - np.arange(n_features)[:, None])), axis=0)


# --------------------------------------------------------------------------- E-step
def component_constant(params):
    """``-D/2 log nu_k + (E[log |Lambda_k|] - D / beta_k) / 2`` (K,), the E-step's constant
    (with the normalised precisions' ``E[log |Lambda_k|]``)."""
    D = params["means"].shape[1]
    dof = params["degrees_of_freedom"]
    return -0.5 * D * np.log(dof) + 0.5 * (_expected_log_det(dof, D) - D / params["mean_precision"])


def log_prob(X, params, covariance_type, cache=None, offset=None):
    """Expected log-density ``E[log N(x | mu_k, Lambda_k^-1)]`` of each row, (n, K).

    scikit-learn's ``_estimate_log_prob``: the Gaussian log-density with the mean
    posterior parameters, plus ``-D/2 log nu_k + (E[log |Lambda_k|] - D / beta_k) / 2``.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64
    params : dict
        See the module docstring.
    covariance_type : {"full", "tied", "diag", "spherical"}
    cache : dict, optional
        As for :func:`dask_em.families.gaussian.log_prob`.
    offset : ndarray of shape (K,), optional
        Added to every row (the engine's expected log weights).

    Returns
    -------
    ndarray of shape (n, K), in the dtype of ``X``
    """
    const = np.broadcast_to(component_constant(params), (params["means"].shape[0],))
    if offset is not None:
        const = const + offset
    return gaussian.log_prob(X, params, covariance_type, cache=cache, offset=const)


def suff_stats(X, resp, params, covariance_type, cache=None) -> Stats:
    """The Gaussian statistics (see :func:`dask_em.families.gaussian.suff_stats`) plus
    ``resp_log_resp``, the sum of ``r log r`` over rows and components.

    With sample weights the engine hands ``resp`` multiplied by them; the row sums
    of ``resp`` are then the weights ``w``, and ``sum w r log r`` is recovered as
    ``sum resp log resp - sum w log w`` (a weight counts as copies of the row).

    Returns
    -------
    dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (by covariance type), ``resp_log_resp`` (float).
    """
    stats = gaussian.suff_stats(X, resp, params, covariance_type, cache=cache)
    total = float(np.sum(xlogy(resp, resp), dtype=np.float64))
    w = resp.sum(axis=1, dtype=np.float64)
    stats["resp_log_resp"] = total - float(np.sum(xlogy(w, w)))
    return stats


def fused_stats(X, weights, params, log_weights, groups, floor, covariance_type, cache=None):
    """diag, spherical and full: :func:`log_prob`, the responsibilities and :func:`suff_stats`
    in the Gaussian family's compiled loop (:func:`dask_em.families.gaussian.fused_stats`,
    the same log-densities with this family's constant), or None where it does not run.
    One mixture at a time (this family does not stack)."""
    assert groups == 1, "the Bayesian family does not stack mixtures"
    const = component_constant(params) + log_weights
    stats = gaussian.fused_stats(X, weights, params, const, groups, floor, covariance_type, cache, entropy=True)
    if stats is not None:
        stats["resp_log_resp"] = float(stats["resp_log_resp"].sum())
    return stats


# --------------------------------------------------------------------------- M-step
def _wishart_full(nk, diff, sk, prior, beta):
    cov = (
        prior["covariance_prior"]
        + nk[:, None, None] * sk
        + (nk * prior["mean_precision_prior"] / beta)[:, None, None] * diff[:, :, None] * diff[:, None, :]
    )
    dof = prior["degrees_of_freedom_prior"] + nk
    return cov / dof[:, None, None], dof


def _wishart_tied(nk, diff, sk, prior, beta):
    K = nk.shape[0]
    dof = prior["degrees_of_freedom_prior"] + nk.sum() / K
    cov = (
        prior["covariance_prior"]
        + sk * nk.sum() / K
        + prior["mean_precision_prior"] / K * np.dot((nk / beta) * diff.T, diff)
    )
    return cov / dof, np.asarray(dof)


def _wishart_diag(nk, diff, sk, prior, beta):
    dof = prior["degrees_of_freedom_prior"] + nk
    cov = prior["covariance_prior"] + nk[:, None] * (sk + (prior["mean_precision_prior"] / beta)[:, None] * diff**2)
    return cov / dof[:, None], dof


def _wishart_spherical(nk, diff, sk, prior, beta):
    dof = prior["degrees_of_freedom_prior"] + nk
    cov = prior["covariance_prior"] + nk * (sk + prior["mean_precision_prior"] / beta * np.mean(diff**2, axis=1))
    return cov / dof, dof


_WISHART = {
    "full": _wishart_full,
    "tied": _wishart_tied,
    "diag": _wishart_diag,
    "spherical": _wishart_spherical,
}


def weight_concentration(nk, alpha0, prior_type):
    """Posterior concentration of the weights: (K, 2) Beta parameters of the stick
    breaking (Dirichlet process) or (K,) Dirichlet parameters."""
    if prior_type == "dirichlet_process":
        rest = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0.0))  # sum_{j > k} n_j
        return np.stack([1.0 + nk, alpha0 + rest], axis=1)
    return alpha0 + nk


def m_step(stats, params, covariance_type, prior_type, reg_covar=1e-6) -> Params:
    """Posterior parameters from summed shifted statistics (scikit-learn's ``_m_step``).

    Parameters
    ----------
    stats : dict
        ``nk``, ``s1``, ``s2`` summed over all rows (see :func:`suff_stats`).
    params : dict
        ``means`` (K, D), the shift of the statistics, and the priors (see the
        module docstring); other keys are ignored.
    covariance_type : {"full", "tied", "diag", "spherical"}
    prior_type : {"dirichlet_process", "dirichlet_distribution"}
    reg_covar : float
        Added to the diagonal of the empirical covariances ``S_k``.

    Returns
    -------
    params : dict
        Every key of the module docstring.
    """
    prior = {key: np.asarray(params[key], dtype=np.float64) for key in PRIOR_KEYS}
    nk = np.asarray(stats["nk"], dtype=np.float64) + _NK_EPS
    d = stats["s1"] / nk[:, None]
    centers = np.asarray(params["means"], dtype=np.float64)
    sk = _pick(_COVARIANCES, covariance_type)(nk, d, stats["s2"], reg_covar)
    diff = (centers - prior["mean_prior"]) + d  # x_k - m_0, exact for data far from 0
    beta = prior["mean_precision_prior"] + nk
    means = prior["mean_prior"] + (nk / beta)[:, None] * diff
    cov, dof = _pick(_WISHART, covariance_type)(nk, diff, sk, prior, beta)
    chol = gaussian.precisions_cholesky_from_covariances(cov, covariance_type, reg_covar)
    return {
        "means": means,
        "covariances": cov,
        "precisions_cholesky": chol,
        "weight_concentration": weight_concentration(nk, prior["weight_concentration_prior"], prior_type),
        "mean_precision": beta,
        "degrees_of_freedom": dof,
        **prior,
    }


# --------------------------------------------------------------------------- weights, bound
def log_weights(params, prior_type):
    """Expected log mixing weights ``E[log pi_k]`` (K,) under the weights' posterior."""
    wc = params["weight_concentration"]
    if prior_type == "dirichlet_process":
        a, b = wc[:, 0], wc[:, 1]
        digamma_sum = digamma(a + b)
        return digamma(a) - digamma_sum + np.hstack((0.0, np.cumsum(digamma(b) - digamma_sum)[:-1]))
    return digamma(wc) - digamma(np.sum(wc))


def mixing_weights(params, prior_type):
    """Mean posterior mixing weights (K,), scikit-learn's ``weights_`` (they sum to 1)."""
    wc = np.asarray(params["weight_concentration"], dtype=np.float64)
    if prior_type == "dirichlet_process":
        a, b = wc[:, 0], wc[:, 1]
        weights = a / (a + b) * np.hstack((1.0, np.cumprod((b / (a + b))[:-1])))
        return weights / weights.sum()
    return wc / wc.sum()


def _log_wishart_norm(dof, log_det_chol, n_features):
    """Log normaliser of the Wishart distributions, less ``log pi`` terms (scikit-learn's)."""
    dof = np.atleast_1d(dof)
    return -(
        dof * log_det_chol
        + dof * n_features * 0.5 * math.log(2.0)
        + np.sum(gammaln(0.5 * (dof - np.arange(n_features)[:, None])), axis=0)
    )


def lower_bound(resp_log_resp, params, covariance_type, prior_type):
    """The variational lower bound (ELBO) up to constants, scikit-learn's ``_compute_lower_bound``.

    Parameters
    ----------
    resp_log_resp : float
        ``sum r log r`` of the responsibilities of the pass (from :func:`suff_stats`).
    params : dict
        The parameters after the M-step on that pass's statistics.

    Returns
    -------
    float
    """
    K, D = params["means"].shape
    log_det = _log_det_precisions(params, covariance_type, D)
    norms = _log_wishart_norm(params["degrees_of_freedom"], log_det, D)
    log_wishart = K * float(norms[0]) if covariance_type == "tied" else float(np.sum(norms))
    wc = np.asarray(params["weight_concentration"], dtype=np.float64)
    if prior_type == "dirichlet_process":
        log_norm_weight = -float(np.sum(betaln(wc[:, 0], wc[:, 1])))
    else:
        log_norm_weight = float(gammaln(np.sum(wc)) - np.sum(gammaln(wc)))
    return float(
        -resp_log_resp - log_wishart - log_norm_weight - 0.5 * D * np.sum(np.log(params["mean_precision"]))
    )


# --------------------------------------------------------------------------- data priors
def data_priors(stats, centers, covariance_type):
    """Mean and covariance of the data from the statistics of any assignment.

    ``stats`` (``nk``, ``s1``, ``s2``, shifted by ``centers``) of any
    responsibilities summing to 1 per row (e.g. the one-hot assignment of the
    initialisation pass) hold the data's totals: they are moved exactly to the
    overall mean (:func:`dask_em.families.gaussian.recentre`) and summed over
    components.

    Returns
    -------
    mean : ndarray of shape (D,)
        ``X.mean(axis=0)`` (weighted by the sample weights).
    covariance : ndarray
        scikit-learn's default ``covariance_prior``: ``np.cov(X.T)`` (D, D) for
        full / tied, ``np.var(X, axis=0, ddof=1)`` (D,) for diag, its mean (0-d)
        for spherical; ``N - 1`` is the summed weight less one.
    """
    nk = np.asarray(stats["nk"], dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    K, D = centers.shape
    n = nk.sum()
    ref = centers[0]
    mean = ref + (stats["s1"].sum(axis=0) + nk @ (centers - ref)) / n
    moved = gaussian.recentre(stats, {"means": centers}, {"means": np.repeat(mean[None], K, axis=0)}, covariance_type)
    s2 = moved["s2"]
    if covariance_type in ("full", "diag"):
        s2 = s2.sum(axis=0)
    elif covariance_type == "spherical":
        s2 = np.asarray(s2.sum() / D)
    return mean, s2 / (n - 1.0)


# --------------------------------------------------------------------------- checks
def check_params(params, n_components, n_features, covariance_type):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid (read from a file)."""
    from dask_em.families._checks import check_keys, check_shape, check_values

    K, D = n_components, n_features
    keys = ["means", "covariances", "precisions_cholesky", "weight_concentration", "mean_precision",
            "degrees_of_freedom", *PRIOR_KEYS]
    check_keys(params, keys)
    gaussian.check_params({k: params[k] for k in keys[:3]}, K, D, covariance_type)
    check_shape("mean_precision", params["mean_precision"], (K,))
    check_shape("degrees_of_freedom", params["degrees_of_freedom"], () if covariance_type == "tied" else (K,))
    check_shape("mean_prior", params["mean_prior"], (D,))
    cov_shape = {"full": (D, D), "tied": (D, D), "diag": (D,), "spherical": ()}[covariance_type]
    check_shape("covariance_prior", params["covariance_prior"], cov_shape)
    for key in ("weight_concentration", "mean_precision", "degrees_of_freedom", "covariance_prior",
                "mean_precision_prior", "weight_concentration_prior", "degrees_of_freedom_prior"):
        value = np.asarray(params[key])
        if key == "covariance_prior" and covariance_type in ("full", "tied"):
            value = np.diagonal(value)
        check_values(key, value, ~(value > 0), "must be > 0 and finite")
        check_values(key, value, ~np.isfinite(value), "must be > 0 and finite")


def _make(covariance_type, prior_type):
    bind = partial
    return Family(
        name=f"bayesian-gaussian-{covariance_type}-{_SHORT[prior_type]}",
        log_prob=bind(log_prob, covariance_type=covariance_type),
        suff_stats=bind(suff_stats, covariance_type=covariance_type),
        m_step=bind(m_step, covariance_type=covariance_type, prior_type=prior_type),
        n_parameters=bind(gaussian.n_parameters, covariance_type=covariance_type),
        sample=bind(gaussian.sample, covariance_type=covariance_type),
        caches=True,
        keeps_float32=True,
        takes_offset=True,
        check_params=bind(check_params, covariance_type=covariance_type),
        recentre=bind(gaussian.recentre, covariance_type=covariance_type),
        fused_stats=bind(fused_stats, covariance_type=covariance_type),
        fused_slab_rows=bind(gaussian.fused_slab_rows, covariance_type=covariance_type),
        log_weights=bind(log_weights, prior_type=prior_type),
        mixing_weights=bind(mixing_weights, prior_type=prior_type),
        variational=True,
        missing=missing_ops(covariance_type, component_constant),
    )


# --------------------------------------------------------------------------- initial assignment
def _nearest_log_prob(X, params):
    """Minus the squared distance of each row to each centre (n, K): a hard E-step
    assigns every row to its nearest centre (ties to the first)."""
    centers = params["means"]
    out = np.empty((X.shape[0], centers.shape[0]))
    for k, c in enumerate(centers):
        diff = X - c
        out[:, k] = -np.einsum("nd,nd->n", diff, diff)
    return out


def _make_assign(covariance_type):
    """The family of the initialisation pass: one-hot nearest-centre responsibilities
    and the Gaussian statistics of that assignment (shifted by the centres)."""
    bind = partial
    return Family(
        name=f"assign-gaussian-{covariance_type}",
        log_prob=_nearest_log_prob,
        suff_stats=bind(gaussian.suff_stats, covariance_type=covariance_type),
        m_step=bind(gaussian.m_step, covariance_type=covariance_type),
        n_parameters=bind(gaussian.n_parameters, covariance_type=covariance_type),
        sample=bind(gaussian.sample, covariance_type=covariance_type),
        hard=True,
    )


FAMILIES = {(c, p): _make(c, p) for c in COVARIANCE_TYPES for p in PRIOR_TYPES}
ASSIGN_FAMILIES = {c: _make_assign(c) for c in COVARIANCE_TYPES}
