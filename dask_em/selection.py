"""Choosing the number of components: fit a range of K, tabulate BIC / AIC.

All candidates of one family (one covariance type) run EM in lock-step and share
every pass over the data, so the EM cost is that of the slowest candidate, not the
sum; see :func:`select_n_components` for the exact count. Every estimator can be
the template, K-means included (scored by the BIC of the Gaussian model its hard
assignment implies).
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from dask_em.estimators import KMeans
from dask_em.estimators._facade import EMEstimator
from dask_em.fitting import fit_models

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """Outcome of :func:`select_n_components`.

    Attributes
    ----------
    table : list of dict
        One row per candidate: ``n_components``, ``covariance_type`` (or None),
        ``log_likelihood`` (total, of the final parameters), ``n_parameters``,
        ``bic``, ``aic``, ``converged``, ``n_iter``. ``pandas.DataFrame(table)``
        makes it a data frame.
    best_estimator : estimator
        The fitted candidate with the lowest criterion.
    estimators : list of estimators
        Every fitted candidate, in the order of ``table``.
    criterion : str
    """

    table: list
    best_estimator: EMEstimator
    estimators: list = field(repr=False)
    criterion: str = "bic"


def select_n_components(
    estimator, X, n_components, *, covariance_types=None, criterion="bic", sample_weight=None, array=None,
    feature_dim=None,
):
    """Fit ``estimator`` for each number of components (and covariance type); rank by BIC/AIC.

    Parameters
    ----------
    estimator : GaussianMixture, KMeans, BernoulliMixture, PoissonMixture or CategoricalMixture
        Template (not modified): its other parameters (``n_init``, ``tol``,
        ``init_params``, ``random_state``, ``nan_policy``, ``persist``, ...) apply
        to every candidate.
    X : array-like, dask array, Zarr store or xarray object
        As for the estimator's ``fit``.
    n_components : iterable of int
        Candidate numbers of components (``n_clusters`` for KMeans).
    covariance_types : iterable of str, optional
        GaussianMixture only: candidate covariance types (default: the estimator's).
    criterion : {"bic", "aic"}, default="bic"
    sample_weight : array-like, dask array or xarray.DataArray of shape (n_samples,), optional
        Weight of each row, as for the estimator's ``fit``.
    array, feature_dim : str, optional
        As for the estimator's ``fit``.

    Returns
    -------
    Selection
        The table of every candidate's criterion and the best fitted estimator
        (``table``, ``best_estimator``).

    Notes
    -----
    Passes over the data: one sampling pass initialises every start of every
    candidate (none when all starting parameters are given); then, per covariance
    type, ``max(n_iter)`` EM passes shared by all its candidates and starts, and one
    pass computing every candidate's log-likelihood. A separate fit per candidate
    would instead cost the *sum* of the EM iterations plus one ``score`` pass each.
    With ``algorithm="stepwise"`` (or ``"auto"`` on streamed data) each candidate's
    best start also takes the stepwise pass(es), shared by the candidates.

    K-means has no likelihood of its own. It is scored as the model its hard
    assignment implies (X-means, Pelleg & Moore 2000): each row drawn from the
    spherical Gaussian of its cluster, all clusters sharing one variance, with
    mixing weights the cluster shares. With ``R`` (weighted) rows, ``M``
    features, cluster sizes ``R_k`` and the maximum-likelihood variance
    ``s2 = inertia / (R M)``, the log-likelihood is
    ``sum_k R_k log(R_k / R) - R M / 2 (log(2 pi s2) + 1)`` and the free
    parameters are ``K M`` centre coordinates, ``K - 1`` weights and one variance.
    Under ``nan_policy="marginalize"`` (k-POD) the inertia covers the observed
    coordinates only, and so does the model: ``R M`` becomes ``C``, the (weighted)
    number of observed coordinates of the rows fitted, in ``s2 = inertia / C`` and
    in the log-likelihood's second term.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_em import GaussianMixture, select_n_components
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(m, 1, (300, 2)) for m in (-5, 0, 5)])
    >>> sel = select_n_components(GaussianMixture(random_state=0), X, range(1, 6))
    >>> sel.best_estimator.n_components
    3
    """
    if not isinstance(estimator, EMEstimator):
        raise TypeError(
            f"select_n_components needs a dask-em estimator (GaussianMixture, KMeans, BernoulliMixture, "
            f"PoissonMixture, CategoricalMixture); got {type(estimator).__name__}."
        )
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}.")
    ks = [int(k) for k in n_components]
    if not ks or min(ks) < 1:
        raise ValueError(f"n_components must list at least one int >= 1, got {ks!r}.")
    if covariance_types is not None and not hasattr(estimator, "covariance_type"):
        raise ValueError(f"covariance_types applies to GaussianMixture only, not {type(estimator).__name__}.")
    k_param = "n_clusters" if isinstance(estimator, KMeans) else "n_components"
    cov_types = [None] if covariance_types is None else list(covariance_types)
    candidates = []
    for cov in cov_types:
        for k in ks:
            params = {k_param: k} if cov is None else {k_param: k, "covariance_type": cov}
            candidates.append(clone(estimator).set_params(**params))
    for est in candidates:
        est._validate_params()
    first = candidates[0]
    prepared = first._prepare(X, sample_weight, reset=True, array=array, feature_dim=feature_dim)
    learned = {k: v for k, v in vars(first).items() if k.endswith("_")}  # n_features_in_, n_categories_
    specs = []
    for est in candidates:
        est.__dict__.update(learned)
        spec = est._model_spec(prepared)
        spec.score_final = True
        specs.append(spec)
    results = fit_models(prepared, specs)
    rows = []
    for est, res in zip(candidates, results):
        est._set_fitted(res, prepared)
        ll, n, p = _criterion_terms(est, res.final_stats)
        rows.append(
            {
                "n_components": getattr(est, k_param),
                "covariance_type": getattr(est, "covariance_type", None),
                "log_likelihood": ll,
                "n_parameters": p,
                "bic": -2.0 * ll + p * math.log(n),
                "aic": -2.0 * ll + 2.0 * p,
                "converged": res.best.converged,
                "n_iter": res.best.n_iter,
            }
        )
    best = min(range(len(rows)), key=lambda i: rows[i][criterion])
    logger.info("best by %s: %s", criterion, rows[best])
    return Selection(rows, candidates[best], candidates, criterion)


def _criterion_terms(estimator, stats):
    """Total log-likelihood, (weighted) number of rows and free parameters of a fitted candidate.

    For K-means: the spherical, shared-variance Gaussian model of its hard
    assignment (see :func:`select_n_components`).
    """
    n = float(stats["weight"])
    if not isinstance(estimator, KMeans):
        return float(stats["loglik"]), n, estimator._n_parameters()
    K, M = estimator.cluster_centers_.shape
    nk = np.asarray(stats["nk"], dtype=np.float64)
    observed = n * M - float(stats.get("missing", 0.0))  # nan_policy="marginalize": observed coordinates only
    variance = max(-float(stats["loglik"]) / observed, np.finfo(np.float64).tiny)
    shares = nk[nk > 0]
    ll = float(np.sum(shares * np.log(shares / n))) - observed / 2.0 * (math.log(2.0 * math.pi * variance) + 1.0)
    return ll, n, K * M + (K - 1) + 1


__all__ = ["Selection", "select_n_components"]
