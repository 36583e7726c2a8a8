"""BernoulliMixture and PoissonMixture: mixtures of independent binary or count features."""

import numpy as np

from dask_em._validation import Interval
from dask_em.estimators._discrete import DISCRETE_CONSTRAINTS, DiscreteMixture, check_means_in
from dask_em.estimators._facade import _EDGE_DOC
from dask_em.families import bernoulli, get_family

_COMMON_PARAMS = """n_components : int, default=1
        Number of mixture components K.
    tol : float, default=1e-3
        EM stops when the mean log-likelihood per row changes by less than ``tol``.
    alpha : float, default=1e-3
        Smoothing pseudo-count (> 0) of the M-step{alpha_note}.
    max_iter : int, default=100
        Maximum number of EM iterations (passes over the data).
    n_init : int, default=1
        Number of starting points; the best fit is kept. All starts share every pass.
    init_params : {{"kmeans", "k-means++", "random", "random_from_data"}}, default="kmeans"
        How starting points are chosen (see :mod:`dask_em.initialization`): the
        first three seed centres in feature space and derive weights and
        parameters from the nearest-centre assignment; "random" draws random
        responsibilities.
    weights_init : array-like of shape (n_components,), default=None
        Initial mixing weights.
    means_init : array-like of shape (n_components, n_features), default=None
        Initial {what}. With ``weights_init`` too, no initialisation pass is made;
        alone, one assignment pass computes the weights.
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation and of :meth:`sample`.
    warm_start : bool, default=False
        Start ``fit`` from the current parameters when fitted.
    verbose : int, default=0
        0: silent unless logging is configured; 1: one log line per iteration on
        stderr, or in a Jupyter notebook one progress line updated in place; 2: also
        initialisation details (log lines).
    """ + _EDGE_DOC.replace("{", "{{").replace("}", "}}")

_COMMON_ATTRS = """weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
        {what} of each feature in each component.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per row at the start of the last iteration.
    lower_bounds_, history_ : list
        Per iteration of the best start.
    n_features_in_ : int"""


class _IndependentMixture(DiscreteMixture):
    _family_name = None
    _open_range = (0.0, np.inf)
    _parameter_constraints = {**DISCRETE_CONSTRAINTS, "means_init": ["array-like", None]}

    def __init__(
        self,
        n_components=1,
        *,
        tol=1e-3,
        alpha=1e-3,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
    ):
        self.n_components = n_components
        self.tol = tol
        self.alpha = alpha
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.nan_policy = nan_policy
        self.persist = persist
        self.algorithm = algorithm

    def _family(self):
        return get_family(self._family_name)

    def _check_param_init(self, value, K, D):
        check_means_in(type(self).__name__, value, K, D, *self._open_range)


class BernoulliMixture(_IndependentMixture):
    __doc__ = f"""Mixture of multivariate Bernoulli distributions (binary features), by EM.

    Each component gives every feature an independent probability of being 1.
    As :class:`sklearn.naive_bayes.BernoulliNB`, the data are binarised at
    ``binarize`` (default 0.0: a value > 0 is a 1), block by block inside every
    pass, so any real data are valid. With ``binarize=None`` the data must hold
    only 0 and 1 (bool or numbers), and other values are an error naming the
    column and value. Each iteration is one pass over the data.

    Parameters
    ----------
    {_COMMON_PARAMS.format(alpha_note=": p = (s1 + alpha) / (n_k + 2 alpha), so no probability is exactly 0 or 1", what="probabilities of a 1, in (0, 1)")}
    binarize : float or None, default=0.0
        Threshold: a value ``x > binarize`` is a 1, any other a 0 (NaN stays
        missing), in ``fit`` and in every other method. None: the data are
        binary already, and a value other than 0 or 1 is an error.

    Attributes
    ----------
    {_COMMON_ATTRS.format(what="Probability of a 1")}

    Examples
    --------
    >>> import dask.array as da
    >>> from dask_em import BernoulliMixture
    >>> X = (da.random.default_rng(0).random((10_000, 20), chunks=(2_500, 20)) < 0.3)
    >>> bm = BernoulliMixture(n_components=3, random_state=0).fit(X)
    >>> bm.means_.shape
    (3, 20)
    """

    _family_name = "bernoulli"
    _open_range = (0.0, 1.0)
    _parameter_constraints = {
        **_IndependentMixture._parameter_constraints,
        "binarize": [Interval("float", None, None, "neither"), None],
    }

    def __init__(
        self,
        n_components=1,
        *,
        tol=1e-3,
        alpha=1e-3,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
        binarize=0.0,
    ):
        super().__init__(
            n_components, tol=tol, alpha=alpha, max_iter=max_iter, n_init=n_init, init_params=init_params,
            weights_init=weights_init, means_init=means_init, random_state=random_state, warm_start=warm_start,
            verbose=verbose, nan_policy=nan_policy, persist=persist, algorithm=algorithm,
        )
        self.binarize = binarize

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self.binarize is None  # a threshold takes any real value
        return tags

    def _family(self):
        return bernoulli.make_family(self.binarize)

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        if self.binarize is not None and rows is not None:  # start from the binarised sample,
            rows = bernoulli.binarize(rows, float(self.binarize))  # which the plain family takes
            family = bernoulli.FAMILY
        return super()._initial_states(rows, weights, family, seeds, options, em_on_sample)


class PoissonMixture(_IndependentMixture):
    __doc__ = f"""Mixture of independent Poisson distributions (count features), by EM.

    Each component gives every feature a Poisson rate. Data must be
    non-negative: counts, or non-negative reals (rates, normalised counts), as
    :class:`sklearn.naive_bayes.MultinomialNB` takes them. For a real ``x`` the
    log-likelihood uses ``log(x!) = lgamma(x + 1)``: the Poisson
    quasi-log-likelihood, whose M-step is the same weighted mean, but not a
    density over the reals (``score_samples``, ``bic`` and ``aic`` compare models
    on the same data only). A negative value is an error naming the column and
    value. Each iteration is one pass over the data.

    Parameters
    ----------
    {_COMMON_PARAMS.format(alpha_note=": rate = (s1 + alpha) / (n_k + alpha), so no rate is exactly 0", what="rates, > 0")}

    Attributes
    ----------
    {_COMMON_ATTRS.format(what="Rate")}

    Examples
    --------
    >>> import numpy as np
    >>> from dask_em import PoissonMixture
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.poisson(2.0, (500, 3)), rng.poisson(9.0, (500, 3))])
    >>> pm = PoissonMixture(n_components=2, random_state=0).fit(X)
    >>> np.sort(pm.means_[:, 0]).round(0)
    array([2., 9.])
    """

    _family_name = "poisson"
