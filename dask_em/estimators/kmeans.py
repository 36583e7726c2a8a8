"""KMeans: scikit-learn's estimator as hard-assignment EM on the same engine.

One Lloyd iteration is one pass and one ``dask.compute``; all ``n_init`` starts
share every pass. Convergence follows scikit-learn: stop when no row changes
cluster (strict convergence) or when the squared shift of the centres, summed,
is at most ``tol`` times the mean per-feature variance of the data.
"""

import functools
import logging
import warnings

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from dask_em._math import as_float64
from dask_em._validation import Interval, Options, check_is_fitted, seeds_from
from dask_em.engine import MixtureState, as_float64_state, cast_state, score_block
from dask_em.engine.estep import rows_in_slabs, slab_rows
from dask_em.engine.marginal import gap_rows, patterns, score_block_marginal
from dask_em.engine.omit import score_block_omit
from dask_em.estimators._facade import _EDGE_DOC, EDGE_CONSTRAINTS, EMEstimator
from dask_em.estimators._init_checks import check_array_init
from dask_em.families import get_family
from dask_em.families.kmeans import mean_variance
from dask_em.fitting import ModelSpec
from dask_em.settings import SAMPLE_EM_MAX_ITER
from dask_em.initialization import lloyd
from dask_em.sample_init import initialize_on_sample, sample_inertia

logger = logging.getLogger(__name__)

#: ``init`` strings and the method that seeds on the initialisation sample:
#: "k-means||" (the scalable seeding's role: a good start for a pass-bound fit) is
#: k-means++ plus Lloyd iterations on the sample, in memory (the best of several
#: seedings when the sample is large: see :func:`dask_em.sample_init._centers_on_sample`).
INITS = {"k-means||": "kmeans", "k-means++": "k-means++", "random": "random_from_data"}


def _distances(X, family, state):
    """Euclidean distance of each (finite) row to each centre (n, K)."""
    return np.sqrt(np.maximum(-family.log_prob(as_float64(X), state.params), 0.0))


def _distance_block(X, payload, omit=False):
    """Euclidean distance of each row to each centre (n, K), in slabs of rows;
    with ``omit``, NaN for rows holding NaN or infinity."""
    family, state = payload
    K, D = state.params["means"].shape
    return rows_in_slabs(
        X, functools.partial(_distances, family=family, state=state), step=slab_rows(K, D), n_cols=K,
        omit=omit, what="transforming",
    )


def _distance_block_omit(X, payload):
    """:func:`_distance_block` with NaN for rows holding NaN or infinity."""
    return _distance_block(X, payload, omit=True)


def _distance_block_marginal(X, payload):
    """:func:`_distance_block_omit`, rows with gaps measured over their observed features."""
    out = _distance_block(X, payload, omit=True)
    gap = gap_rows(X)
    if gap.any():
        family, state = payload
        X_gaps = np.asarray(X[gap], dtype=np.float64)
        d = np.empty((X_gaps.shape[0], out.shape[1]))
        for observed, rows in patterns(X_gaps):
            factors = family.missing.factors(state.params, observed)
            d[rows] = np.sqrt(-family.missing.log_prob(X_gaps[rows], state.params, factors))
        out[gap] = d
    return out


class CentreShift:
    """Lloyd's stopping rule, as scikit-learn's: the partition stopped changing (strict
    convergence), or the summed squared shift of the centres is at most ``tol`` times
    the mean per-feature variance of the data (taken from the first pass).

    With ``keep_evaluated``, a fit that converged keeps the centres its last pass
    evaluated (their shift to the new centroids passed the test) rather than the
    centroids: that pass's statistics are then exactly the final centres' (the
    inertia among them), and no pass is needed to score them. Without it (the
    default, scikit-learn's behaviour) the centroids are kept, and scored by one
    more pass unless the partition stopped changing.
    """

    def __init__(self, tol, keep_evaluated=False):
        self.tol = tol
        self.keep_evaluated = keep_evaluated
        self.tol_abs = None
        self.previous = {}
        self.exact = {}

    def __call__(self, result, stats, old_state, change):
        if self.tol_abs is None:
            self.tol_abs = self.tol * mean_variance(stats, old_state.params)
        shift = float(((result.state.params["means"] - old_state.params["means"]) ** 2).sum())
        # the partition is that of the previous pass, and the evaluated centres are that
        # pass's centroids (not an accelerated extrapolation): they are a fixed point
        signature = (stats["nk"], stats["sig"])
        before = self.previous.get(id(result))
        strict = (before is not None and all(map(np.array_equal, signature, before[0]))
                  and np.array_equal(old_state.params["means"], before[1]))
        self.previous[id(result)] = (signature, result.state.params["means"])
        converged = strict or shift <= self.tol_abs
        kept = converged and not strict and self.keep_evaluated
        if kept:  # the centres this pass evaluated, whose statistics (inertia) it holds
            result.state = old_state
            result.history[-1]["kept"] = "evaluated"
        self.exact[id(result)] = strict or kept
        logger.info("centre shift %.3g (tol %.3g)%s%s", shift, self.tol_abs, " (partition unchanged)" if strict else "",
                    " (the evaluated centres are kept)" if kept else "")
        return converged

    def for_algorithm(self, algorithm):
        """The rule for a fit by ``algorithm``: a stepwise fit keeps the evaluated centres
        (its finish is not scikit-learn's Lloyd from a given start; a pass is saved)."""
        return CentreShift(self.tol, keep_evaluated=algorithm == "stepwise")

    def exact_last_pass(self, result):
        """Whether the last pass scored the final centres already: after strict
        convergence, or when the evaluated centres were kept."""
        return self.exact.get(id(result), False)


class KMeans(EMEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means clustering (Lloyd) on chunked, larger-than-memory data.

    scikit-learn's :class:`sklearn.cluster.KMeans` API; from the same ``init`` array
    and ``max_iter`` it gives the same centres, labels and inertia. Each iteration
    is one pass over the data; empty clusters are re-seeded at the rows farthest
    from their centre (found within the pass), never left at NaN.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (centres).
    init : {"k-means||", "k-means++", "random"} or array of shape (n_clusters, n_features), default="k-means||"
        Every string seeds in memory on one sample of ``max(1000 K, 100_000)`` rows
        drawn in one pass (:mod:`dask_em.sample_init`; the same whatever the
        chunking; weighted by the sample weights): "k-means||": greedy k-means++
        plus Lloyd iterations on the sample (the scalable good start k-means||
        gave, without its 7 passes; on a sample of more than ``max(10_000, 100 K)``
        rows, the best of 4 seedings, each run to Lloyd's fixed point on 10,000 of
        them); "k-means++": greedy k-means++ on the sample;
        "random": K distinct rows of the sample; an array: these centres (no pass).
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
        0: silent unless logging is configured; 1: one log line per iteration on
        stderr, or in a Jupyter notebook one progress line updated in place; 2: also
        initialisation details (log lines).
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation.
    {edge}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,), or a lazy dask array for dask input
    inertia_ : float
        Sum of (weighted) squared distances of the rows to their closest centre.
    n_iter_ : int
    converged_ : bool
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Feature labels seen in ``fit``, when they are strings.

    Notes
    -----
    Passes: the initialisation's (above), one per iteration, and one more that
    computes ``inertia_`` for the final centres unless the partition stopped changing.
    A stepwise fit (``algorithm="stepwise"``, the default for streamed data) keeps
    the centres its last Lloyd pass evaluated once their shift passes the test, so
    its ``inertia_`` comes from that pass, with no pass more.
    K-means is hard-assignment EM on the engine: the ``kmeans`` family (nearest
    centre, centroids) with Lloyd's stopping rule (:class:`CentreShift`); it shares
    the fit pipeline, inputs and options of the mixtures.

    Under ``nan_policy="marginalize"`` K-means is k-POD (Chi, Chi & Baraniuk 2016),
    the hard-assignment limit of spherical Gaussians with missing coordinates: a row
    with gaps is assigned to the centre nearest over its observed features, and
    enters that centre's mean completed with the centre's own coordinates where it
    has gaps. The inertia sums the observed-coordinate squared distances and never
    increases from one iteration to the next; at convergence each coordinate of a
    centre is the mean of that coordinate over the rows of its cluster that observe
    it (see :mod:`dask_em.families.kmeans_missing`).

    Examples
    --------
    >>> import dask.array as da
    >>> from dask_em import KMeans
    >>> X = da.random.default_rng(0).normal(size=(10_000, 2), chunks=(2_500, 2))
    >>> km = KMeans(n_clusters=3, random_state=0).fit(X)
    >>> km.cluster_centers_.shape
    (3, 2)
    """

    _parameter_constraints = {
        "n_clusters": [Interval("int", 1, None, "left")],
        "init": [Options(tuple(INITS)), "array-like"],
        "n_init": [Options(("auto",)), Interval("int", 1, None, "left")],
        "max_iter": [Interval("int", 1, None, "left")],
        "tol": [Interval("float", 0, None, "left")],
        "verbose": [Interval("int", 0, None, "left")],
        "random_state": ["random_state"],
        **EDGE_CONSTRAINTS,
        "algorithm": [Options(("auto", "lloyd", "stepwise"))],
    }
    _fitted_attribute = "cluster_centers_"
    _saved_attributes = (
        "inertia_", "n_iter_", "converged_", "n_features_in_", "feature_dim_", "feature_names_in_",
        "feature_coords_",
    )

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means||",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        verbose=0,
        random_state=None,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.nan_policy = nan_policy
        self.persist = persist
        self.algorithm = algorithm

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy in ("omit", "marginalize")
        return tags

    @property
    def _n_features_out(self):
        return self.n_clusters

    # -- the model spec -------------------------------------------------------------
    def _n_starts(self):
        if self.n_init == "auto":
            return 10 if isinstance(self.init, str) and self.init == "random" else 1
        if not isinstance(self.init, str) and self.n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in "
                f"KMeans instead of n_init={self.n_init}.",
                RuntimeWarning,
                stacklevel=4,
            )
            return 1
        return self.n_init

    def _model_spec(self, prepared):
        K = self.n_clusters
        given = None
        if not isinstance(self.init, str):
            given = check_array_init("init", self.init, (K, prepared.n_features)).copy()

        family = get_family("kmeans")

        def initialize(rows, weights, seeds, em_on_sample):
            if given is not None:
                return [MixtureState(np.full(K, 1.0 / K), {"means": given.copy()})]
            starts = initialize_on_sample(rows, family, K, INITS[self.init], seeds, weights=weights,
                                          em_on_sample=False, rank=len(seeds) > 1 and not em_on_sample)
            means = [s.state.params["means"] for s in starts]
            if em_on_sample:  # a stepwise fit keeps one start: Lloyd to a fixed partition ranks them
                rows64 = np.asarray(rows, dtype=np.float64)
                means = [lloyd(rows64, m, weights, tol=0.0, max_iter=SAMPLE_EM_MAX_ITER) for m in means]
                if len(means) > 1:
                    means.sort(key=lambda m: sample_inertia(rows64, weights, m))
            return [MixtureState(np.full(K, 1.0 / K), {"means": m}) for m in means]

        return ModelSpec(
            family=family,
            n_components=K,
            initialize=initialize,
            needs_sample=given is None,
            algorithm={"lloyd": "em"}.get(self.algorithm, self.algorithm),
            seeds=seeds_from(self.random_state, self._n_starts()),
            tol=self.tol,
            max_iter=self.max_iter,
            stopping=CentreShift(self.tol),
            pick="final",
            warn=False,  # as scikit-learn's KMeans
            too_few_rows=lambda n: f"n_samples={n} should be >= n_clusters={K}.",
            init_name=self.init if isinstance(self.init, str) else "array",
            verbose=self.verbose,
            identity=self,
        )

    def _set_fitted(self, result, prepared):
        best = result.best
        self._set_state(cast_state(best.state, prepared.dtype))
        self.inertia_ = float(-result.final_stats["loglik"])
        self.n_iter_ = best.n_iter
        self.converged_ = bool(best.converged)
        self.labels_ = self._map_prepared(
            prepared, score_block, self._payload("labels"), "labels", name="labels-kmeans", dtype=np.int64,
            omit_kernel=score_block_omit, marginal_kernel=score_block_marginal,
        )

    # -- fitted state -----------------------------------------------------------------
    def _family(self):
        return get_family("kmeans")

    def _get_state(self):
        K = self.n_clusters
        return MixtureState(np.full(K, 1.0 / K), {"means": self.cluster_centers_})

    def _set_state(self, state):
        self.cluster_centers_ = state.params["means"]

    def _payload(self, what=None):
        check_is_fitted(self, self._fitted_attribute)
        state = as_float64_state(self._get_state())
        family = get_family("kmeans")
        return (family, state) if what is None else (family, state, what)

    # -- using the fit ---------------------------------------------------------
    def fit_predict(self, X, y=None, sample_weight=None, **fit_params):
        """Fit, then return ``labels_``.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row (see :meth:`fit`).
        **fit_params : dict
            Other arguments of :meth:`fit` (``array``, ``feature_dim``, ``checkpoint``).

        Returns
        -------
        labels : ndarray, dask array or xarray.DataArray of shape (n_samples,)
            Index of each row's cluster (-1 for a row left out).
        """
        return self.fit(X, y, sample_weight, **fit_params).labels_

    def predict(self, X, *, array=None, feature_dim=None):
        """Index of the closest centre for each row.

        Rows with NaN or infinity are an error, or under ``nan_policy="omit"`` get -1.
        Under ``"marginalize"`` a row with some features missing (NaN) gets the
        centre nearest over its observed features; a row with every feature
        missing, or an infinite value, gets -1.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        labels : ndarray of shape (n_samples,), a lazy dask array for dask input, or a
            lazy ``xarray.DataArray`` on the sample dimensions for xarray input
        """
        return self._map(
            X, score_block, self._payload("labels"), "labels", name="predict-kmeans", dtype=np.int64,
            array=array, feature_dim=feature_dim, omit_kernel=score_block_omit,
            marginal_kernel=score_block_marginal,
        )

    def transform(self, X, *, array=None, feature_dim=None):
        """Euclidean distance of each row to each centre.

        Under ``nan_policy="marginalize"`` the distance of a row with gaps is taken
        over its observed features only (not rescaled); rows left out hold NaN.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        distances : ndarray, dask array or xarray.DataArray of shape (n_samples, n_clusters)
            A lazy dask array for dask input, or a lazy ``xarray.DataArray`` with the
            sample dimensions plus ``component`` for xarray input.
        """
        return self._map(
            X, _distance_block, self._payload(), "distance", name="transform-kmeans", dtype=np.float64,
            n_cols=self.n_clusters, array=array, feature_dim=feature_dim, omit_kernel=_distance_block_omit,
            marginal_kernel=_distance_block_marginal,
        )

    def fit_transform(self, X, y=None, sample_weight=None, **fit_params):
        """Fit, then return the distances of ``X`` to the centres (see :meth:`transform`).

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row (see :meth:`fit`).
        **fit_params : dict
            Other arguments of :meth:`fit` (``array``, ``feature_dim``, ``checkpoint``).

        Returns
        -------
        distances : ndarray, dask array or xarray.DataArray of shape (n_samples, n_clusters)
            Euclidean distance of each row to each fitted centre.
        """
        return self.fit(X, y, sample_weight, **fit_params).transform(X, **{
            k: v for k, v in fit_params.items() if k in ("array", "feature_dim")
        })

    def score(self, X, y=None, sample_weight=None):
        """Return minus the (weighted) inertia of ``X`` for the fitted centres.

        Computes when ``X`` is lazy.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row's squared distance.

        Returns
        -------
        float
            Minus the sum of (weighted) squared distances to the closest centre;
            rows left out by ``nan_policy="omit"`` do not count. Under
            ``"marginalize"`` a row with gaps counts its observed features.
        """
        neg_d2 = self._map(
            X, score_block, self._payload("score"), "score", name="score-kmeans", dtype=np.float64,
            omit_kernel=score_block_omit, marginal_kernel=score_block_marginal,
        )
        neg_d2 = getattr(neg_d2, "data", neg_d2)
        if sample_weight is not None:
            prepared = self._prepare(X, sample_weight, reset=False)
            w = prepared.weights
            neg_d2 = neg_d2 * (w if isinstance(neg_d2, da.Array) else w.compute())
        if isinstance(neg_d2, da.Array):
            return float(da.nansum(neg_d2, dtype=np.float64).compute())
        return float(np.nansum(neg_d2, dtype=np.float64))

    def impute(self, X, *, array=None, feature_dim=None):
        """``X`` with each NaN replaced by the coordinate of the row's nearest centre.

        The centre is the nearest over the row's observed features (the k-POD
        completion of ``nan_policy="marginalize"``). Observed values, rows with
        every feature missing (no centre is nearer than another) and rows with an
        infinite value are returned as they are. Works whatever the ``nan_policy``
        of the fit.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data with gaps (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`predict`.

        Returns
        -------
        X_imputed : ndarray of shape (n_samples, n_features), a lazy dask array
            chunked like ``X`` for dask / Zarr input, or a lazy xarray object of the
            input's kind and dimensions for xarray input; float32 for float32 data.
        """
        from dask_em.estimators._impute import impute

        return impute(self, X, array=array, feature_dim=feature_dim)


KMeans.__doc__ = KMeans.__doc__.replace("{edge}", _EDGE_DOC.replace(
    'algorithm : {"auto", "em", "stepwise"}', 'algorithm : {"auto", "lloyd", "stepwise"}'
).replace('``"em"``: batch EM (for KMeans, Lloyd)', '``"lloyd"``: batch Lloyd iterations'))


__all__ = ["KMeans"]
