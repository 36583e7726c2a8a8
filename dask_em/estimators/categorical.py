"""CategoricalMixture: mixtures of independent categorical features (integer codes)."""

import numbers

import dask
import dask.array as da
import numpy as np

from dask_em._validation import Interval
from dask_em.estimators._discrete import DISCRETE_CONSTRAINTS, DiscreteMixture
from dask_em.estimators._facade import _EDGE_DOC
from dask_em.families.categorical import check_data, make_family


class CategoricalMixture(DiscreteMixture):
    """Mixture of independent categorical distributions (latent class analysis), by EM.

    Feature ``d`` holds integer codes ``0 .. C_d - 1``; each component gives every
    feature its own probability vector. As :class:`sklearn.naive_bayes.CategoricalNB`,
    the data must be non-negative integer codes (the estimator tags say so:
    ``input_tags.categorical`` and ``positive_only``); encode other data first,
    e.g. with :class:`sklearn.preprocessing.OrdinalEncoder`. As there, a value's
    code is its integer part (2.7 is code 2). Negative values and codes out of
    range (``>= n_categories_``, also in ``predict``) are an error naming the
    column and value.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    n_categories : None, int or sequence of int, default=None
        Number of codes per feature (an int: the same for all). None infers
        ``max + 1`` per column: free for in-memory data, one extra pass for dask
        input (give it to save that pass).
    tol : float, default=1e-3
        EM stops when the mean log-likelihood per row changes by less than ``tol``.
    alpha : float, default=1e-3
        Dirichlet smoothing pseudo-count (> 0):
        ``p = (count + alpha) / (n_k + C_d alpha)``, so no probability is 0.
    max_iter : int, default=100
        Maximum number of EM iterations (passes).
    n_init : int, default=1
        Number of starting points; all share every pass.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        Starting partition: nearest centre on the codes (the first three), or
        random responsibilities.
    weights_init : array-like of shape (n_components,), default=None
        Initial mixing weights (uniform if only ``probs_init`` is given).
    probs_init : array-like of shape (n_components, n_features, max(C_d)), default=None
        Initial probabilities; each ``probs_init[k, d, :C_d]`` sums to 1, entries
        past ``C_d`` are 0. When given, no initialisation pass is made.
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation and of :meth:`sample`.
    warm_start : bool, default=False
        Start ``fit`` from the current parameters when fitted.
    verbose : int, default=0
        0: silent unless logging is configured; 1: one log line per iteration on
        stderr, or in a Jupyter notebook one progress line updated in place; 2: also
        initialisation details (log lines).
    {edge}

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    probs_ : ndarray of shape (n_components, n_features, max(C_d))
        ``probs_[k, d, c]``: probability of code ``c`` of feature ``d`` in component ``k``.
    n_categories_ : ndarray of int, shape (n_features,)
    converged_, n_iter_, lower_bound_, lower_bounds_, history_, n_features_in_
        As for :class:`GaussianMixture`.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_em import CategoricalMixture
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.choice(3, (400, 5), p=[.8, .1, .1]),
    ...                     rng.choice(3, (400, 5), p=[.1, .1, .8])])
    >>> cm = CategoricalMixture(n_components=2, random_state=0).fit(X)
    >>> cm.probs_.shape, cm.n_categories_.tolist()
    ((2, 5, 3), [3, 3, 3, 3, 3])
    """

    _param = "probs"
    _saved_attributes = DiscreteMixture._saved_attributes + ("n_categories_",)
    _parameter_constraints = {
        **DISCRETE_CONSTRAINTS,
        "n_categories": [Interval("int", 1, None, "left"), "array-like", None],
        "probs_init": ["array-like", None],
    }

    def __init__(
        self,
        n_components=1,
        *,
        n_categories=None,
        tol=1e-3,
        alpha=1e-3,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        probs_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
    ):
        self.n_components = n_components
        self.n_categories = n_categories
        self.tol = tol
        self.alpha = alpha
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.probs_init = probs_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.nan_policy = nan_policy
        self.persist = persist
        self.algorithm = algorithm

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True  # integer codes, as CategoricalNB
        return tags

    def _family(self):
        return make_family(self.n_categories_)

    def _support_check(self):
        return self._family().check_data if hasattr(self, "n_categories_") else check_data

    def _learn_data_shape(self, prepared):
        source = prepared.source
        Xd = source.X
        D = Xd.shape[1]
        given = self.n_categories
        if given is None:
            if source.is_numpy:
                Xn = prepared.finite_rows()
                check_data(Xn)  # negative values, before max + 1
                lo, hi = Xn.min(axis=0, initial=0), Xn.max(axis=0, initial=0)
            else:  # one extra pass; give n_categories to save it
                lo, hi = dask.compute(da.nanmin(Xd, axis=0), da.nanmax(Xd, axis=0))
                check_data(np.nan_to_num(np.stack([lo, hi])))  # other codes: in the passes
            C = np.maximum(np.nan_to_num(hi).astype(np.int64) + 1, 1)
        elif isinstance(given, numbers.Integral) and not isinstance(given, bool):
            C = np.full(D, int(given))
        else:
            C = np.asarray(given)
            if C.shape != (D,) or not np.issubdtype(C.dtype, np.integer):
                raise ValueError(
                    f"The 'n_categories' parameter of CategoricalMixture must be None, an int "
                    f"or {D} ints (one per feature). Got {given!r} instead."
                )
        if np.any(C < 1):
            raise ValueError(f"n_categories must be >= 1 for every feature, got {C.tolist()}.")
        self.n_categories_ = C.astype(np.int64)

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        if rows is not None:  # start from the codes, as the passes read them
            rows = np.trunc(rows)
        return super()._initial_states(rows, weights, family, seeds, options, em_on_sample)

    def _check_param_init(self, value, K, D):
        C = self.n_categories_
        shape = (K, D, int(C.max()))
        p = np.asarray(value, dtype=np.float64)
        if p.shape != shape:
            raise ValueError(f"The parameter 'probs_init' should have the shape {shape}, but got {p.shape}.")
        valid = np.arange(shape[2])[None, :] < C[:, None]
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p[:, ~valid] != 0):
            raise ValueError(
                "The parameter 'probs_init' must be finite, >= 0, and 0 past n_categories[d] codes."
            )
        if not np.allclose(p.sum(axis=2), 1.0, rtol=0, atol=1e-6):
            raise ValueError("Each probs_init[k, d, :] must sum to 1.")


CategoricalMixture.__doc__ = CategoricalMixture.__doc__.replace("{edge}", _EDGE_DOC)
