"""Choosing the number of components: fit a range of K, tabulate BIC / AIC.

All candidates of one family (one covariance type) run EM in lock-step and share
every pass over the data, so the EM cost is that of the slowest candidate, not the
sum; see :func:`select_n_components` for the exact count.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from dask_em._validation import seed_from
from dask_em.engine import estep_block, run_em, run_pass
from dask_em.estimators._base import BaseMixture, verbosity
from dask_em.weights import as_row_weights

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
    best_estimator : BaseMixture
        The fitted candidate with the lowest criterion.
    estimators : list of BaseMixture
        Every fitted candidate, in the order of ``table``.
    criterion : str
    """

    table: list
    best_estimator: BaseMixture
    estimators: list = field(repr=False)
    criterion: str = "bic"


def select_n_components(
    estimator, X, n_components, *, covariance_types=None, criterion="bic", sample_weight=None
):
    """Fit ``estimator`` for each number of components (and covariance type); rank by BIC/AIC.

    Parameters
    ----------
    estimator : GaussianMixture, BernoulliMixture, PoissonMixture or CategoricalMixture
        Template (not modified): its other parameters (``n_init``, ``tol``,
        ``init_params``, ``random_state``, ...) apply to every candidate.
    X : array-like, dask array, zarr.Array or path of shape (n_samples, n_features)
    n_components : iterable of int
        Candidate numbers of components.
    covariance_types : iterable of str, optional
        GaussianMixture only: candidate covariance types (default: the estimator's).
    criterion : {"bic", "aic"}, default="bic"
    sample_weight : array-like or dask array of shape (n_samples,), optional

    Returns
    -------
    Selection

    Notes
    -----
    Passes over the data, per covariance type: the initialisation passes of every
    candidate (each K needs its own seeding: ~18 for ``init_params="kmeans"``, 2
    for the others, 1 if starting parameters are given; the ``n_init`` starts of
    one K share them), then ``max(n_iter)`` EM passes shared by all candidates and
    starts, then one pass computing every candidate's log-likelihood. A separate fit
    per candidate would instead cost the *sum* of the EM iterations plus one
    ``score`` pass each.

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
    if not isinstance(estimator, BaseMixture):
        raise TypeError(
            f"select_n_components needs a mixture estimator with a likelihood (GaussianMixture, "
            f"BernoulliMixture, PoissonMixture, CategoricalMixture); got {type(estimator).__name__}."
        )
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}.")
    ks = [int(k) for k in n_components]
    if not ks or min(ks) < 1:
        raise ValueError(f"n_components must list at least one int >= 1, got {ks!r}.")
    if covariance_types is not None and not hasattr(estimator, "covariance_type"):
        raise ValueError(f"covariance_types applies to GaussianMixture only, not {type(estimator).__name__}.")
    cov_types = [None] if covariance_types is None else list(covariance_types)
    candidates = []
    for cov in cov_types:
        group = []
        for k in ks:
            params = {"n_components": k} if cov is None else {"n_components": k, "covariance_type": cov}
            group.append(clone(estimator).set_params(**params))
        candidates.append(group)
    first = candidates[0][0]
    Xd, is_numpy = first._validate_X(X, reset=True)  # may learn n_categories_ (once)
    learned = {k: v for k, v in vars(first).items() if k.endswith("_")}
    for group in candidates:
        for est in group:
            est.__dict__.update(learned)
    weights = as_row_weights(sample_weight, Xd)
    if is_numpy:
        Xd = Xd.persist()
        weights = None if weights is None else weights.persist()
    rows, fitted = [], []
    with verbosity(estimator.verbose):
        for group in candidates:
            for est, row in zip(group, _fit_group(group, Xd, weights)):
                rows.append(row)
                fitted.append(est)
    best = min(range(len(rows)), key=lambda i: rows[i][criterion])
    logger.info("best by %s: %s", criterion, rows[best])
    return Selection(rows, fitted[best], fitted, criterion)


def _fit_group(group, Xd, weights):
    """Lock-step EM for candidates of one family; sets their fitted attributes."""
    D = Xd.shape[1]
    for est in group:
        est._check_params(D)
        if Xd.shape[0] < est.n_components:
            raise ValueError(f"n_samples={Xd.shape[0]} should be >= n_components={est.n_components}.")
    family = group[0]._family()
    options = group[0]._m_step_options()
    check = max(group, key=lambda e: e.n_components)._pass_check()
    inits, owner = [], []
    for j, est in enumerate(group):
        seed = seed_from(est.random_state)
        seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(est.n_init)]
        states = est._initial_states(Xd, family, seeds, options, check, sample_weight=weights)
        inits += states
        owner += [j] * len(states)
    ref = group[0]
    results = run_em(
        Xd, family, inits, tol=ref.tol, max_iter=ref.max_iter, options=options, sample_weight=weights, check=check
    )
    best = {}
    for j, res in zip(owner, results):
        if j not in best or res.lower_bound > best[j].lower_bound:
            best[j] = res
    states = [best[j].state for j in range(len(group))]
    final = run_pass(
        Xd, estep_block, (family, states), name=f"score-{family.name}", extra=weights, row_wise=True
    )
    rows = []
    for j, est in enumerate(group):
        res = best[j]
        est._set_state(res.state)
        est.converged_, est.n_iter_, est.lower_bound_ = res.converged, res.n_iter, res.lower_bound
        est.lower_bounds_ = [h["mean_loglik"] for h in res.history]
        est.history_ = res.history
        ll, n = final[j]["loglik"], final[j]["weight"]
        p = est._n_parameters()
        rows.append(
            {
                "n_components": est.n_components,
                "covariance_type": getattr(est, "covariance_type", None),
                "log_likelihood": ll,
                "n_parameters": p,
                "bic": -2.0 * ll + p * math.log(n),
                "aic": -2.0 * ll + 2.0 * p,
                "converged": res.converged,
                "n_iter": res.n_iter,
            }
        )
    return rows


__all__ = ["Selection", "select_n_components"]
