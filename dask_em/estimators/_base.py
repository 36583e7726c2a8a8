"""What every mixture estimator shares: validation, fitting through the engine, scoring.

Subclasses say which family they use, how their parameters map to a
:class:`~dask_em.engine.MixtureState`, and which attributes they expose.
"""

import contextlib
import logging
import sys
import warnings

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed
from sklearn.base import BaseEstimator, DensityMixin

from dask_em._validation import (
    check_is_fitted,
    check_number,
    check_random_state_param,
    seed_from,
)
from dask_em.data import as_row_chunked, count_nonfinite_rows
from dask_em.engine import MixtureState, run_em, score_block
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
        Xd, is_numpy = as_row_chunked(X)
        if is_numpy:
            bad = count_nonfinite_rows(np.asarray(X))
            if bad:
                raise ValueError(
                    f"Input X contains {bad} rows with NaN or infinite values (of "
                    f"{Xd.shape[0]} rows); remove or impute them first."
                )
        if reset:
            self.n_features_in_ = Xd.shape[1]
        elif Xd.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Xd.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return Xd, is_numpy

    def _pass_check(self):
        """The check run on the row counts of every pass during fit."""
        K = self.n_components

        def check(stats):
            if stats["n_nonfinite"]:
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
    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters by EM, one pass over ``X`` per iteration.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array or path of shape (n_samples, n_features)
            Row-chunked data; a dask array must have one chunk along features.
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row (initialisation included): an integer weight counts
            as that many copies of the row, a weight of 0 drops it. Negative or
            non-finite weights are an error (found inside the passes for dask input).

        Returns
        -------
        self
        """
        Xd, is_numpy = self._validate_X(X, reset=True)
        self._check_params(Xd.shape[1])
        n, K = Xd.shape[0], self.n_components
        if n < K:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {K}, n_samples = {n}."
            )
        weights = as_row_weights(sample_weight, Xd)
        family = self._family()
        options = self._m_step_options()
        check = self._pass_check()
        warm = self.warm_start and hasattr(self, "converged_")
        seed = seed_from(self.random_state)
        seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(self.n_init)]
        with verbosity(self.verbose):
            if is_numpy:  # keep the wrapped blocks in place instead of re-slicing each pass
                Xd = Xd.persist()
                weights = None if weights is None else weights.persist()
            if warm:
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

    def fit_predict(self, X, y=None):
        """Fit, then return the label of each row (one more pass).

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
        """
        return self.fit(X).predict(X)

    # -- scoring ---------------------------------------------------------------
    def _apply(self, X, what):
        check_is_fitted(self, self._fitted_attribute)
        Xd, is_numpy = self._validate_X(X, reset=False)
        family = self._family()
        payload = (family, self._get_state(), what)
        if is_numpy:
            return score_block(np.asarray(X), payload)
        K = self.n_components
        name = f"{'predict' if what == 'labels' else what}-{family.name}-{tokenize(Xd, payload)}"
        payload_d = delayed(payload, traverse=False)
        if what in ("labels", "score"):
            dtype = np.int64 if what == "labels" else np.float64
            return Xd.map_blocks(score_block, payload_d, dtype=dtype, drop_axis=1, name=name)
        return Xd.map_blocks(score_block, payload_d, dtype=np.float64, chunks=(Xd.chunks[0], (K,)), name=name)

    def predict(self, X):
        """Label of the most probable component for each row.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,), or a lazy dask array for dask input
        """
        return self._apply(X, "labels")

    def predict_proba(self, X):
        """Posterior probability of each component for each row.

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components), or a lazy dask array
        """
        return self._apply(X, "proba")

    def score_samples(self, X):
        """Log-likelihood of each row under the model.

        Returns
        -------
        log_prob : ndarray of shape (n_samples,), or a lazy dask array
        """
        return self._apply(X, "score")

    def score(self, X, y=None):
        """Mean log-likelihood per row (computes when ``X`` is a dask array).

        Returns
        -------
        float
        """
        scores = self.score_samples(X)
        return float(scores.mean().compute() if isinstance(scores, da.Array) else scores.mean())

    def _n_parameters(self):
        state = self._get_state()
        return self._family().n_parameters(state.params) + len(state.weights) - 1

    def bic(self, X):
        """Bayesian information criterion for ``X`` (lower is better).

        Returns
        -------
        float
        """
        n = as_row_chunked(X)[0].shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion for ``X`` (lower is better).

        Returns
        -------
        float
        """
        n = as_row_chunked(X)[0].shape[0]
        return -2 * self.score(X) * n + 2 * self._n_parameters()

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
