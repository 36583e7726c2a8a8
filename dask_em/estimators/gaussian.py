"""GaussianMixture: scikit-learn's estimator, fitted on chunked data by the engine."""

import numpy as np

from dask_em._validation import Interval, Options
from dask_em.engine import MixtureState
from dask_em.estimators._base import MIXTURE_CONSTRAINTS, BaseMixture
from dask_em.estimators._facade import _EDGE_DOC
from dask_em.estimators._init_checks import check_array_init, check_weights_init
from dask_em.families import get_family
from dask_em.families.gaussian import (
    COVARIANCE_TYPES,
    check_precisions,
    cholesky_from_precisions,
    covariances_from_cholesky,
    precisions_from_cholesky,
)
from dask_em.settings import SAMPLE_EM_MAX_STEPS, sample_em_tol
from dask_em.initialization import INIT_METHODS
from dask_em.sample_init import initialize_on_sample


class GaussianMixture(BaseMixture):
    """Gaussian mixture model fitted by EM on chunked (larger-than-memory) data.

    A drop-in for :class:`sklearn.mixture.GaussianMixture`: same parameters, same
    attributes, same results from the same starting point. Each EM iteration is one
    pass over the data and one ``dask.compute`` on the active scheduler (threads by
    default, or a ``distributed.Client``).

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Covariance structure: one full matrix per component, one shared full matrix,
        one diagonal per component, or one variance per component.
    tol : float, default=1e-3
        EM stops when the mean log-likelihood per row changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance, keeping it positive definite.
    max_iter : int, default=100
        Maximum number of EM iterations (passes over the data).
    n_init : int, default=1
        Number of starting points; the best fit (highest ``lower_bound_``) is kept.
        All starts share every pass over the data.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How starting points are chosen, in memory on one sample of
        ``max(1000 K, 100_000)`` rows drawn in one pass (:mod:`dask_em.sample_init`):
        "kmeans" is greedy k-means++ plus Lloyd iterations on the sample (as
        ``KMeans(init="k-means||")``), "k-means++" seeds on the sample alone,
        "random_from_data" picks K rows of it, and these three then derive weights and
        covariances from the nearest-centre assignment; "random" draws random
        responsibilities.
    weights_init : array-like of shape (n_components,), default=None
        Initial mixing weights (sum to 1).
    means_init : array-like of shape (n_components, n_features), default=None
        Initial means; weights and covariances not given are computed from the
        nearest-mean assignment in one pass.
    precisions_init : array-like, default=None
        Initial precision matrices (inverse covariances), shaped as scikit-learn's:
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical. When all three
        ``*_init`` are given, no initialisation pass is made.
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation and of :meth:`sample`.
    warm_start : bool, default=False
        If True and the model is fitted, ``fit`` starts from the current parameters
        (``n_init`` is then ignored).
    verbose : int, default=0
        0: silent unless logging is configured; 1: one log line per iteration on
        stderr, or in a Jupyter notebook one progress line updated in place; 2: also
        initialisation details (log lines).
    {edge}

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        Shape depends on ``covariance_type`` as for ``precisions_init``.
    precisions_ : ndarray
        Inverses of ``covariances_``.
    precisions_cholesky_ : ndarray
        Cholesky factors of ``precisions_`` (upper triangular for full and tied).
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per row at the start of the last iteration.
    lower_bounds_ : list of float
        ``lower_bound_`` of every iteration of the best start.
    history_ : list of dict
        Per iteration: ``iteration``, ``mean_loglik``, ``change``, ``seconds``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Feature labels seen in ``fit`` (DataFrame columns, Dataset variables, a
        DataArray's feature coordinate), when they are strings.
    feature_dim_ : str
        The feature dimension of xarray input.

    Examples
    --------
    >>> import dask.array as da
    >>> from dask_em import GaussianMixture
    >>> X = da.random.default_rng(0).normal(size=(10_000, 2), chunks=(2_500, 2))
    >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> gm.predict(X)  # doctest: +ELLIPSIS
    dask.array<predict-gaussian-full-..., shape=(10000,), dtype=int64, ...>
    """

    _parameter_constraints = {
        **MIXTURE_CONSTRAINTS,
        "covariance_type": [Options(COVARIANCE_TYPES)],
        "reg_covar": [Interval("float", 0, None, "left")],
        "init_params": [Options(INIT_METHODS)],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.nan_policy = nan_policy
        self.persist = persist
        self.algorithm = algorithm

    # -- validation -------------------------------------------------------------
    def _check_init_params(self, n_features):
        K, D = self.n_components, n_features
        if self.weights_init is not None:
            check_weights_init(self.weights_init, K)
        if self.means_init is not None:
            check_array_init("means_init", self.means_init, (K, D))
        if self.precisions_init is not None:
            check_precisions(self.precisions_init, self.covariance_type, K, D)

    # -- engine plumbing ----------------------------------------------------------
    def _family(self):
        return get_family(f"gaussian-{self.covariance_type}")

    def _m_step_options(self):
        return {"reg_covar": self.reg_covar}

    def _given_inits(self):
        return [self.weights_init, self.means_init, self.precisions_init]

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        cov_type = self.covariance_type
        given = self._given_inits()
        if all(g is not None for g in given):
            states = [MixtureState(np.zeros(self.n_components), {}) for _ in seeds]
        else:
            starts = initialize_on_sample(
                rows,
                family,
                self.n_components,
                self.init_params,
                seeds,
                weights=weights,
                centers=self.means_init,
                options=options,
                em_on_sample=em_on_sample and not any(g is not None for g in given),
                tol=sample_em_tol(self.tol),
                max_iter_sample=SAMPLE_EM_MAX_STEPS,
                rank=len(seeds) > 1,
            )
            states = [start.state for start in starts]
        for state in states:
            if self.weights_init is not None:
                state.weights = np.array(self.weights_init, dtype=np.float64)
            if self.means_init is not None:
                state.params["means"] = np.array(self.means_init, dtype=np.float64)
            if self.precisions_init is not None:
                prec = np.asarray(self.precisions_init, dtype=np.float64)
                chol = cholesky_from_precisions(prec, cov_type)
                state.params["precisions_cholesky"] = chol
                state.params["covariances"] = covariances_from_cholesky(chol, cov_type)
        return states

    def _get_state(self):
        return MixtureState(
            weights=self.weights_,
            params={
                "means": self.means_,
                "covariances": self.covariances_,
                "precisions_cholesky": self.precisions_cholesky_,
            },
        )

    def _set_state(self, state):
        self.weights_ = state.weights
        self.means_ = state.params["means"]
        self.covariances_ = state.params["covariances"]
        self.precisions_cholesky_ = state.params["precisions_cholesky"]
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)


GaussianMixture.__doc__ = GaussianMixture.__doc__.replace("{edge}", _EDGE_DOC)
