"""KMeans: scikit-learn's estimator as hard-assignment EM on the same engine.

One Lloyd iteration is one pass and one ``dask.compute``; all ``n_init`` starts
share every pass. Convergence follows scikit-learn: stop when no row changes
cluster (strict convergence) or when the squared shift of the centres, summed,
is at most ``tol`` times the mean per-feature variance of the data.
"""

import logging
import time
import warnings

import dask.array as da
import numpy as np
from dask.base import tokenize
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from dask_em._math import as_float64
from dask_em._validation import check_is_fitted, check_number, check_random_state_param, seed_from
from dask_em.data import as_row_chunked, count_nonfinite_rows
from dask_em.engine import MixtureState, estep_block, m_step, map_rows, run_pass, score_block
from dask_em.estimators._base import verbosity
from dask_em.estimators._init_checks import check_array_init
from dask_em.exceptions import ConvergenceWarning
from dask_em.families import get_family
from dask_em.families.kmeans import data_variance
from dask_em.initialization import initial_centers
from dask_em.weights import as_row_weights, bad_weight_error

logger = logging.getLogger(__name__)

INITS = {"k-means||": "kmeans", "k-means++": "k-means++", "random": "random_from_data"}


def _distance_block(X, payload):
    """Euclidean distance of each row to each centre (n, K)."""
    family, state = payload
    return np.sqrt(np.maximum(-family.log_prob(as_float64(X), state.params), 0.0))


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means clustering (Lloyd) on chunked, larger-than-memory data.

    scikit-learn's :class:`sklearn.cluster.KMeans` API; from the same ``init`` array
    and ``max_iter`` it gives the same centres, labels and inertia. Each iteration
    is one pass over the data; empty clusters are re-seeded at the rows farthest
    from their centre (found within the pass), never left at NaN.

    Parameters
    ----------
    n_clusters : int, default=8
    init : {"k-means||", "k-means++", "random"} or array of shape (n_clusters, n_features), default="k-means||"
        "k-means||": scalable k-means|| seeding (Bahmani et al., 2012; 7 passes);
        "k-means++": greedy k-means++ on a uniform sample of ``max(10_000, 100 K)``
        rows (1 pass); "random": K distinct rows drawn uniformly (1 pass);
        an array: these centres (no pass). With sample weights, sampling is
        proportional to the weights.
    n_init : "auto" or int, default="auto"
        Number of starts (all share every pass); the lowest inertia wins. "auto":
        10 for ``init="random"``, else 1. An ``init`` array allows only 1.
    max_iter : int, default=300
        Maximum number of Lloyd iterations (passes) per start.
    tol : float, default=1e-4
        Relative tolerance: stop when the summed squared centre shift is at most
        ``tol * mean(var(X, axis=0))`` (the variance comes from the first pass;
        with sample weights it is the weighted variance).
    verbose : int, default=0
        1: one log line per iteration on stderr.
    random_state : int, RandomState, Generator or None, default=None

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,), or a lazy dask array for dask input
    inertia_ : float
        Sum of (weighted) squared distances of the rows to their closest centre.
    n_iter_ : int
    converged_ : bool
    n_features_in_ : int

    Notes
    -----
    Passes: the initialisation's (above), one per iteration, and one more that
    computes ``inertia_`` for the final centres unless the partition stopped changing.

    Examples
    --------
    >>> import dask.array as da
    >>> from dask_em import KMeans
    >>> X = da.random.default_rng(0).normal(size=(10_000, 2), chunks=(2_500, 2))
    >>> km = KMeans(n_clusters=3, random_state=0).fit(X)
    >>> km.cluster_centers_.shape
    (3, 2)
    """

    def __init__(
        self, n_clusters=8, *, init="k-means||", n_init="auto", max_iter=300, tol=1e-4, verbose=0,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state

    # -- validation -------------------------------------------------------------
    def _check_params(self, n_features):
        owner = "KMeans"
        check_number(owner, "n_clusters", self.n_clusters, "int", 1)
        check_number(owner, "max_iter", self.max_iter, "int", 1)
        check_number(owner, "tol", self.tol, "float", 0)
        check_number(owner, "verbose", self.verbose, "int", 0)
        check_random_state_param(owner, self.random_state)
        if isinstance(self.init, str):
            if self.init not in INITS:
                raise ValueError(
                    f"The 'init' parameter of KMeans must be one of 'k-means||', 'k-means++', "
                    f"'random' or an array of shape (n_clusters, n_features). Got {self.init!r} instead."
                )
        else:
            check_array_init("init", self.init, (self.n_clusters, n_features))
        if self.n_init == "auto":
            return 10 if isinstance(self.init, str) and self.init == "random" else 1
        check_number(owner, "n_init", self.n_init, "int", 1)
        if not isinstance(self.init, str) and self.n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in "
                f"KMeans instead of n_init={self.n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            return 1
        return self.n_init

    def _validate_X(self, X, reset):
        Xd, is_numpy = as_row_chunked(X)
        if is_numpy and count_nonfinite_rows(np.asarray(X)):
            raise ValueError("Input X contains NaN or infinite values; remove or impute them first.")
        if reset:
            self.n_features_in_ = Xd.shape[1]
        elif Xd.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Xd.shape[1]} features, but KMeans is expecting {self.n_features_in_} features as input."
            )
        return Xd, is_numpy

    def _pass_check(self, stats):
        if stats["n_nonfinite"]:
            raise ValueError(
                f"Input X contains {stats['n_nonfinite']} rows with NaN or infinite values; "
                f"remove or impute them before fitting."
            )
        if stats.get("n_bad_weight", 0):
            raise bad_weight_error(stats["n_bad_weight"])
        if stats["n_rows"] < self.n_clusters:
            raise ValueError(
                f"n_samples={stats['n_rows']} (with a positive weight) should be >= "
                f"n_clusters={self.n_clusters}."
            )

    # -- fitting ---------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering, one pass over ``X`` per iteration.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or path of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Row weights (0 drops a row; negative is an error).

        Returns
        -------
        self
        """
        Xd, is_numpy = self._validate_X(X, reset=True)
        n_init = self._check_params(Xd.shape[1])
        K = self.n_clusters
        if Xd.shape[0] < K:
            raise ValueError(f"n_samples={Xd.shape[0]} should be >= n_clusters={K}.")
        weights = as_row_weights(sample_weight, Xd)
        family = get_family("kmeans")
        seed = seed_from(self.random_state)
        seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(n_init)]
        with verbosity(self.verbose):
            if is_numpy:
                Xd = Xd.persist()
                weights = None if weights is None else weights.persist()
            if isinstance(self.init, str):
                centers = initial_centers(
                    Xd, K, INITS[self.init], seeds, check=self._pass_check, sample_weight=weights,
                    lloyd_max_iter=0,
                )
            else:
                centers = [as_float64(self.init).copy()]
            best = self._lloyd(Xd, weights, family, centers)
        self.cluster_centers_, self.inertia_, self.n_iter_, self.converged_ = best
        if not self.converged_:
            warnings.warn(
                f"KMeans did not converge in max_iter={self.max_iter} iterations; increase "
                f"max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.labels_ = self.predict(X)
        return self

    def _pass(self, Xd, weights, family, states):
        stats = run_pass(Xd, estep_block, (family, states), name="lloyd-kmeans", extra=weights, row_wise=True)
        self._pass_check(stats[0])
        return stats

    def _lloyd(self, Xd, weights, family, centers):
        """Lock-step Lloyd iterations; returns (centres, inertia, n_iter, converged) of the best."""
        K = self.n_clusters
        states = [MixtureState(np.full(K, 1.0 / K), {"means": c}) for c in centers]
        n = len(states)
        n_iter, strict, done, inertia = [0] * n, [False] * n, [False] * n, [np.inf] * n
        prev = [None] * n
        tol_abs = None
        for it in range(1, self.max_iter + 1):
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            start = time.perf_counter()
            stats_list = self._pass(Xd, weights, family, [states[i] for i in active])
            if tol_abs is None:
                tol_abs = self.tol * float(np.mean(data_variance(stats_list[0], states[active[0]].params)))
            for i, stats in zip(active, stats_list):
                new = m_step(family, stats, states[i], {})
                shift = float(((new.params["means"] - states[i].params["means"]) ** 2).sum())
                signature = (stats["nk"], stats["sig"])
                strict[i] = prev[i] is not None and all(map(np.array_equal, signature, prev[i]))
                prev[i], states[i], n_iter[i] = signature, new, it
                inertia[i] = -stats["loglik"]  # for the centres before this M-step
                done[i] = strict[i] or shift <= tol_abs
                logger.info(
                    "%siteration %d: inertia %.8g, centre shift %.3g, %.3f s",
                    f"init {i}: " if n > 1 else "", it, inertia[i], shift, time.perf_counter() - start,
                )
        redo = [i for i in range(n) if not strict[i]]
        if redo:  # inertia for the final centres (scikit-learn re-runs the E-step too)
            for i, stats in zip(redo, self._pass(Xd, weights, family, [states[i] for i in redo])):
                inertia[i] = -stats["loglik"]
        best = int(np.argmin(inertia))
        return states[best].params["means"], float(inertia[best]), n_iter[best], bool(done[best])

    # -- using the fit ---------------------------------------------------------
    def _state(self):
        check_is_fitted(self, "cluster_centers_")
        K = self.n_clusters
        return MixtureState(np.full(K, 1.0 / K), {"means": self.cluster_centers_})

    def _map(self, X, kernel, payload_tail, what, out_cols):
        Xd, is_numpy = self._validate_X(X, reset=False)
        payload = (get_family("kmeans"), self._state(), *payload_tail)
        if is_numpy:
            return kernel(np.asarray(X), payload)
        dtype = np.int64 if what == "predict" else np.float64
        name = f"{what}-kmeans-{tokenize(Xd, payload)}"
        return map_rows(Xd, kernel, payload, name=name, dtype=dtype, n_cols=out_cols)

    def predict(self, X):
        """Index of the closest centre for each row.

        Returns
        -------
        labels : ndarray of shape (n_samples,), or a lazy dask array for dask input
        """
        return self._map(X, score_block, ("labels",), "predict", None)

    def transform(self, X):
        """Euclidean distance of each row to each centre.

        Returns
        -------
        ndarray of shape (n_samples, n_clusters), or a lazy dask array
        """
        return self._map(X, _distance_block, (), "transform", self.n_clusters)

    def score(self, X, y=None, sample_weight=None):
        """Minus the (weighted) inertia of ``X`` for the fitted centres (computes for dask).

        Returns
        -------
        float
        """
        neg_d2 = self._map(X, score_block, ("score",), "score", None)
        if sample_weight is not None:
            w = as_row_weights(sample_weight, as_row_chunked(X)[0])
            neg_d2 = neg_d2 * (w if isinstance(neg_d2, da.Array) else w.compute())
        total = neg_d2.sum()
        return float(total.compute() if isinstance(total, da.Array) else total)


__all__ = ["KMeans"]
