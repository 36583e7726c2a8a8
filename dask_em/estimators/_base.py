"""What every mixture estimator shares: validation, fitting through the engine, scoring.

Subclasses say which family they use, how their parameters map to a
:class:`~dask_em.engine.MixtureState`, and which attributes they expose.
"""

import contextlib
import logging
import sys
import warnings

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from sklearn.base import BaseEstimator, DensityMixin

from dask_em._validation import (
    check_is_fitted,
    check_number,
    check_random_state_param,
    seed_from,
)
from dask_em.data import as_source, count_nonfinite_rows
from dask_em.engine import MixtureState, map_rows, run_em, score_block
from dask_em.engine.omit import score_block_omit
from dask_em.estimators._outofcore import Checkpointer, chain_callbacks, decide_persist, resolve_nan_policy
from dask_em.exceptions import ConvergenceWarning
from dask_em.weights import as_row_weights, bad_weight_error

logger = logging.getLogger("dask_em")


@contextlib.contextmanager
def verbosity(verbose):
    """Show dask-em's log on stderr while fitting when ``verbose > 0``.

    ``verbose=1`` shows INFO messages (one line per EM iteration: time, mean
    log-likelihood, change); ``verbose>=2`` adds DEBUG (initialisation details).
    Without ``verbose``, messages go to whatever logging the application configured.
    """
    if not verbose:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[dask-em] %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class BaseMixture(DensityMixin, BaseEstimator):
    """Base class of the EM estimators; not for direct use."""

    # -- to be provided by subclasses -----------------------------------------
    def _family(self):
        raise NotImplementedError

    def _m_step_options(self):
        return {}

    def _initial_states(self, X, family, seeds, options, check, sample_weight=None):
        raise NotImplementedError

    def _set_state(self, state):
        raise NotImplementedError

    def _get_state(self):
        raise NotImplementedError

    _fitted_attribute = "weights_"
    #: Fitted attributes besides the parameters that ``save`` writes (when set).
    _saved_attributes = (
        "converged_",
        "n_iter_",
        "lower_bound_",
        "lower_bounds_",
        "history_",
        "n_features_in_",
        "feature_dim_",
        "feature_names_in_",
    )

    # -- validation -------------------------------------------------------------
    def _check_common_params(self):
        owner = type(self).__name__
        check_number(owner, "n_components", self.n_components, "int", 1)
        check_number(owner, "tol", self.tol, "float", 0)
        check_number(owner, "max_iter", self.max_iter, "int", 0)
        check_number(owner, "n_init", self.n_init, "int", 1)
        check_number(owner, "verbose", self.verbose, "int", 0)
        check_random_state_param(owner, self.random_state)
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(
                f"The 'warm_start' parameter of {owner} must be a bool. Got {self.warm_start!r} instead."
            )

    def _check_params(self, n_features):
        """Validate all constructor parameters; ``n_features`` checks shapes."""
        self._check_common_params()

    def _validate_X(self, X, reset):
        """Row-chunked dask array from any input; checks features against the fit."""
        source, _ = self._validate_source(X, reset)
        return source.X, source.is_numpy

    def _validate_source(self, X, reset, array=None, feature_dim=None, nan_policy=None):
        """:class:`~dask_em.data.Source` of any input, and the resolved NaN policy.

        On ``reset`` the feature count (and for xarray the feature dimension and
        Dataset variables) are recorded; otherwise they are checked against the fit.
        """
        if not reset and feature_dim is None:
            feature_dim = getattr(self, "feature_dim_", None)
        names = None if reset else getattr(self, "feature_names_in_", None)
        source = as_source(X, array=array, feature_dim=feature_dim, feature_names=names)
        Xd = source.X
        policy = resolve_nan_policy(nan_policy, source)
        if source.is_numpy and policy == "raise":
            bad = count_nonfinite_rows(np.asarray(X))
            if bad:
                raise ValueError(
                    f"Input X contains {bad} rows with NaN or infinite values (of "
                    f"{Xd.shape[0]} rows); remove or impute them first, or pass nan_policy='omit'."
                )
        if reset:
            self.n_features_in_ = Xd.shape[1]
            for attr in ("feature_dim_", "feature_names_in_"):
                self.__dict__.pop(attr, None)
            if source.layout is not None:
                self.feature_dim_ = source.layout.feature_dim
                if source.layout.feature_names is not None:
                    self.feature_names_in_ = list(source.layout.feature_names)
        elif Xd.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Xd.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return source, policy

    def _pass_check(self, nan_policy="raise"):
        """The check run on the row counts of every pass during fit.

        With ``nan_policy="omit"`` rows holding NaN or inf are left out (the engine
        skips them) and their number is logged once; with ``"raise"`` they are an error.
        """
        K = self.n_components
        logged = []

        def check(stats):
            if stats["n_nonfinite"] and nan_policy == "omit":
                if not logged:
                    total = stats["n_rows"] + stats["n_nonfinite"]
                    logger.info(
                        "left out %d rows with NaN or infinite values (of %d rows); they get no label",
                        stats["n_nonfinite"],
                        total,
                    )
                    logged.append(stats["n_nonfinite"])
            elif stats["n_nonfinite"]:
                total = stats["n_rows"] + stats["n_nonfinite"]
                raise ValueError(
                    f"Input X contains {stats['n_nonfinite']} rows with NaN or infinite "
                    f"values (of {total} rows); remove or impute them before fitting, e.g. "
                    f"X = X[da.isfinite(X).all(axis=1)].compute_chunk_sizes()."
                )
            if stats.get("n_bad_weight", 0):
                raise bad_weight_error(stats["n_bad_weight"])
            if stats["n_rows"] < K:
                raise ValueError(
                    f"Expected n_samples >= n_components but got n_components = {K}, "
                    f"n_samples = {stats['n_rows']} (rows with a positive sample weight)."
                )

        return check

    # -- fitting ---------------------------------------------------------------
    def fit(
        self,
        X,
        y=None,
        sample_weight=None,
        *,
        array=None,
        feature_dim=None,
        nan_policy=None,
        persist="auto",
        checkpoint=None,
        callback=None,
    ):
        """Estimate the parameters by EM, one pass over ``X`` per iteration.

        Parameters
        ----------
        X : array-like, dask array, Zarr store, or xarray object
            Data of shape (n_samples, n_features): a NumPy or dask array (one chunk
            along features), a Zarr store path / URL / ``zarr.Array`` / ``zarr.Group``
            (format 2 or 3, read lazily), or an xarray ``DataArray`` / ``Dataset``
            whose ``feature_dim`` holds the features and whose other dimensions are
            samples (a Dataset's data variables are the features).
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row (initialisation included): an integer weight counts
            as that many copies of the row, a weight of 0 drops it. Negative or
            non-finite weights are an error (found inside the passes for dask input).
            For xarray input, give a DataArray over the sample dimensions (or an
            array of their shape): it is flattened like the data. A flat array is
            accepted only where its C order is the data's row order.
        array : str, optional
            The array inside a Zarr group, e.g. ``fit("cube.zarr", array="reflectance")``.
        feature_dim : str, optional
            Feature dimension of xarray input (or of an N-D store read through xarray).
        nan_policy : {"raise", "omit"} or None, default=None
            What to do with rows holding NaN or inf: ``"omit"`` leaves them out of
            the fit and logs their number; ``"raise"`` is an error. ``None`` means
            ``"omit"`` for xarray input and ``"raise"`` otherwise.
        persist : {"auto", True, False}, default="auto"
            Keep the data in (cluster) memory between iterations (True) or stream
            them from their source every iteration (False). ``"auto"`` persists when
            they take at most half of the workers' free memory (memory limit less
            what the worker processes use; the free RAM without a distributed
            client). The log says which was used.
        checkpoint : str or os.PathLike, optional
            File to save the EM state to after every iteration. If it exists and
            was written by the same fit (settings and data shape and chunks;
            ``max_iter`` may differ), the fit resumes from it, and ends as an
            uninterrupted fit would. Format: :mod:`dask_em.persistence`.
        callback : callable, optional
            ``callback(iteration, results)`` after every EM iteration, where
            ``results`` is a list of :class:`~dask_em.engine.EMResult` (one per start).

        Returns
        -------
        self
        """
        source, policy = self._validate_source(X, True, array, feature_dim, nan_policy)
        Xd, is_numpy = source.X, source.is_numpy
        self._check_params(Xd.shape[1])
        n, K = Xd.shape[0], self.n_components
        if n < K:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {K}, n_samples = {n}."
            )
        weights = as_row_weights(source.row_weights(sample_weight), Xd)
        family = self._family()
        options = self._m_step_options()
        check = self._pass_check(policy)
        warm = self.warm_start and hasattr(self, "converged_")
        saver = Checkpointer(checkpoint, self, Xd) if checkpoint is not None else None
        seed = seed_from(self.random_state)
        seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(self.n_init)]
        with verbosity(self.verbose):
            resume = saver.resume() if saver is not None else None
            if is_numpy:  # keep the wrapped blocks in place instead of re-slicing each pass
                Xd = Xd.persist()
                weights = None if weights is None else weights.persist()
            elif decide_persist(Xd, persist):
                Xd = Xd.persist()
                weights = None if weights is None else weights.persist()
            if resume is not None:
                inits = None
            elif warm:
                inits = [self._get_state()]
            else:
                logger.info("initialising %d start(s) with %r", len(seeds), self._init_name())
                inits = self._initial_states(Xd, family, seeds, options, check, sample_weight=weights)
            results = run_em(
                Xd,
                family,
                inits,
                tol=self.tol,
                max_iter=self.max_iter,
                options=options,
                sample_weight=weights,
                check=check,
                callback=chain_callbacks(saver, callback),
                resume=resume,
            )
        best = results[0]
        for res in results[1:]:
            if res.lower_bound > best.lower_bound:
                best = res
        self._set_state(best.state)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = [h["mean_loglik"] for h in best.history]
        self.history_ = best.history
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _init_name(self):
        return getattr(self, "init_params", "")

    def fit_predict(self, X, y=None, **fit_params):
        """Fit, then return the label of each row (one more pass).

        ``fit_params`` are those of :meth:`fit`; ``array``, ``feature_dim`` and
        ``nan_policy`` also apply to the prediction.

        Returns
        -------
        labels : ndarray, dask array or xarray.DataArray of shape (n_samples,)
        """
        keep = ("array", "feature_dim", "nan_policy")
        return self.fit(X, **fit_params).predict(X, **{k: v for k, v in fit_params.items() if k in keep})

    def save(self, path):
        """Write the fitted model to ``path`` (a plain NPZ + JSON file, never pickle).

        Load it with :func:`dask_em.load`. The format is documented in
        :mod:`dask_em.persistence`.

        Returns
        -------
        str
            ``path``.
        """
        from dask_em.estimators._saving import save_model

        check_is_fitted(self, self._fitted_attribute)
        return save_model(self, path)

    # -- scoring ---------------------------------------------------------------
    def _apply(self, X, what, array=None, feature_dim=None, nan_policy=None):
        check_is_fitted(self, self._fitted_attribute)
        source, policy = self._validate_source(X, False, array, feature_dim, nan_policy)
        Xd = source.X
        family = self._family()
        payload = (family, self._get_state(), what)
        kernel = score_block_omit if policy == "omit" else score_block
        if source.is_numpy:
            return kernel(np.asarray(X), payload)
        name = f"{'predict' if what == 'labels' else what}-{family.name}-{tokenize(Xd, payload, policy)}"
        per_row = what in ("labels", "score")
        out = map_rows(
            Xd,
            kernel,
            payload,
            name=name,
            dtype=np.int64 if what == "labels" else np.float64,
            n_cols=None if per_row else self.n_components,
        )
        return source.wrap(out, what)

    def predict(self, X, *, array=None, feature_dim=None, nan_policy=None):
        """Label of the most probable component for each row.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object (see :meth:`fit`)
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.
        nan_policy : {"raise", "omit"} or None
            ``"omit"``: rows with NaN / inf get label -1 (NaN in xarray output).
            ``None``: omit for xarray input, raise otherwise.

        Returns
        -------
        labels : ndarray of shape (n_samples,), a lazy dask array for dask / Zarr
            input, or a lazy ``xarray.DataArray`` on the sample dimensions (with the
            input's coordinates; float, NaN where a row was left out) for xarray input.
        """
        return self._apply(X, "labels", array, feature_dim, nan_policy)

    def predict_proba(self, X, *, array=None, feature_dim=None, nan_policy=None):
        """Posterior probability of each component for each row.

        Parameters are those of :meth:`predict`; left-out rows hold NaN.

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components), a lazy dask array, or a
            lazy ``xarray.DataArray`` with the sample dimensions plus ``component``
        """
        return self._apply(X, "proba", array, feature_dim, nan_policy)

    def score_samples(self, X, *, array=None, feature_dim=None, nan_policy=None):
        """Log-likelihood of each row under the model.

        Parameters are those of :meth:`predict`; left-out rows hold NaN.

        Returns
        -------
        log_prob : ndarray of shape (n_samples,), a lazy dask array, or a lazy
            ``xarray.DataArray`` on the sample dimensions
        """
        return self._apply(X, "score", array, feature_dim, nan_policy)

    def score(self, X, y=None, *, array=None, feature_dim=None, nan_policy=None):
        """Mean log-likelihood per row (computes when ``X`` is lazy).

        Rows left out by ``nan_policy="omit"`` do not count.

        Returns
        -------
        float
        """
        scores = self.score_samples(X, array=array, feature_dim=feature_dim, nan_policy=nan_policy)
        scores = getattr(scores, "data", scores)  # xarray -> its dask array
        if isinstance(scores, da.Array):
            return float(da.nanmean(scores).compute())
        return float(np.nanmean(scores))

    def _n_parameters(self):
        state = self._get_state()
        return self._family().n_parameters(state.params) + len(state.weights) - 1

    def _total_loglik(self, X):
        """Summed log-likelihood of ``X`` and the number of rows it counts (one pass).

        Rows left out by the NaN policy count in neither.
        """
        scores = self.score_samples(X)
        scores = getattr(scores, "data", scores)  # xarray -> its dask array
        if isinstance(scores, da.Array):
            total, n = dask.compute(da.nansum(scores), da.count_nonzero(~da.isnan(scores)))
        else:
            total, n = np.nansum(scores), np.count_nonzero(~np.isnan(scores))
        return float(total), int(n)

    def bic(self, X):
        """Bayesian information criterion for ``X`` (lower is better).

        Returns
        -------
        float
        """
        total, n = self._total_loglik(X)
        return -2 * total + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion for ``X`` (lower is better).

        Returns
        -------
        float
        """
        total, _ = self._total_loglik(X)
        return -2 * total + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture (in memory).

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each sample, in order.
        """
        check_is_fitted(self, self._fitted_attribute)
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at "
                f"least one sample."
            )
        state = self._get_state()
        rng = np.random.default_rng(seed_from(self.random_state))
        counts = rng.multinomial(n_samples, state.weights)
        X = self._family().sample(state.params, counts, rng)
        y = np.repeat(np.arange(len(counts)), counts)
        return X, y


__all__ = ["BaseMixture", "MixtureState", "verbosity"]
