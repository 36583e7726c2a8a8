"""What every mixture estimator shares: its model spec, fitted attributes, scoring.

Subclasses say which family they use, how their parameters map to a
:class:`~dask_em.engine.MixtureState`, and which attributes they expose; the fit
itself is :func:`dask_em.fitting.fit_models` (through :class:`EMEstimator`).
"""

import logging

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin

from dask_em._validation import Interval, Options, check_is_fitted, seed_from, seeds_from
from dask_em.engine import EMResult, as_float64_state, cast_state, score_block
from dask_em.engine.marginal import score_block_marginal
from dask_em.engine.omit import score_block_omit
from dask_em.estimators._facade import EDGE_CONSTRAINTS, EMEstimator
from dask_em.fitting import ModelSpec
from dask_em.settings import ALGORITHMS

logger = logging.getLogger("dask_em")

#: Constraints of the parameters every mixture estimator has.
MIXTURE_CONSTRAINTS = {
    "n_components": [Interval("int", 1, None, "left")],
    "tol": [Interval("float", 0, None, "left")],
    "max_iter": [Interval("int", 0, None, "left")],
    "n_init": [Interval("int", 1, None, "left")],
    "random_state": ["random_state"],
    "warm_start": ["boolean"],
    "verbose": [Interval("int", 0, None, "left")],
    "weights_init": ["array-like", None],
    **EDGE_CONSTRAINTS,
    "algorithm": [Options(ALGORITHMS)],
}


class BaseMixture(EMEstimator, DensityMixin, BaseEstimator):
    """Base class of the EM estimators; not for direct use."""

    # -- to be provided by subclasses -----------------------------------------
    def _family(self):
        raise NotImplementedError

    def _m_step_options(self):
        return {}

    def _check_init_params(self, n_features):
        """Check the ``*_init`` arrays against the data's number of features."""

    def _given_inits(self):
        """The user-given starting parameters (None where not given)."""
        return []

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        """Starting states, one per seed, from a sample of rows (see ModelSpec.initialize)."""
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
        "feature_coords_",
    )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy in ("omit", "marginalize")
        return tags

    # -- the model spec -------------------------------------------------------------
    def _model_spec(self, prepared):
        """The :class:`~dask_em.fitting.ModelSpec` of this estimator for ``prepared`` data."""
        self._check_init_params(prepared.n_features)
        family = self._family()
        options = self._m_step_options()
        warm = None
        if self.warm_start and hasattr(self, "converged_"):
            warm = EMResult(state=as_float64_state(self._get_state()), lower_bound=self.lower_bound_)

        def initialize(rows, weights, seeds, em_on_sample):
            return self._initial_states(rows, weights, family, seeds, options, em_on_sample)

        given = self._given_inits()

        return ModelSpec(
            family=family,
            n_components=self.n_components,
            initialize=initialize,
            seeds=seeds_from(self.random_state, self.n_init),
            tol=self.tol,
            max_iter=self.max_iter,
            options=options,
            needs_sample=not (given and all(g is not None for g in given)),
            algorithm=self.algorithm,
            warm=warm,
            init_name=self._init_name(),
            verbose=self.verbose,
            identity=self,
        )

    def _set_fitted(self, result, prepared):
        best = result.best
        self._set_state(cast_state(best.state, prepared.dtype))
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = [h["mean_loglik"] for h in best.history]
        self.history_ = best.history

    def _init_name(self):
        return getattr(self, "init_params", "")

    def fit_predict(self, X, y=None, **fit_params):
        """Fit, then return the label of each row (one more pass).

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        **fit_params : dict
            Arguments of :meth:`fit` (``sample_weight``, ``array``, ``feature_dim``,
            ``checkpoint``); ``array`` and ``feature_dim`` also apply to the prediction.

        Returns
        -------
        labels : ndarray, dask array or xarray.DataArray of shape (n_samples,)
            Most probable component of each row (see :meth:`predict`).
        """
        keep = ("array", "feature_dim")
        return self.fit(X, **fit_params).predict(X, **{k: v for k, v in fit_params.items() if k in keep})

    def _apply(self, X, what, array=None, feature_dim=None):
        check_is_fitted(self, self._fitted_attribute)
        family = self._family()
        payload = (family, as_float64_state(self._get_state()), what)
        name = f"{'predict' if what == 'labels' else what}-{family.name}"
        return self._map(
            X, score_block, payload, what, name=name,
            dtype=np.int64 if what == "labels" else np.float64,
            n_cols=None if what in ("labels", "score") else self.n_components,
            array=array, feature_dim=feature_dim, omit_kernel=score_block_omit,
            marginal_kernel=score_block_marginal if family.missing is not None else None,
        )

    def predict(self, X, *, array=None, feature_dim=None):
        """Label of the most probable component for each row.

        Rows with NaN or infinity are an error, or under ``nan_policy="omit"`` get
        label -1 (NaN in xarray output). Under ``"marginalize"`` rows with some
        features missing (NaN) are labelled from their observed features (so are
        their probabilities and scores); rows with every feature missing, or an
        infinite value, get -1.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        labels : ndarray of shape (n_samples,), a lazy dask array for dask / Zarr
            input, or a lazy ``xarray.DataArray`` on the sample dimensions (with the
            input's coordinates; float, NaN where a row was left out) for xarray input.
        """
        return self._apply(X, "labels", array, feature_dim)

    def predict_proba(self, X, *, array=None, feature_dim=None):
        """Posterior probability of each component for each row.

        Rows left out by ``nan_policy="omit"`` hold NaN.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        resp : ndarray, dask array or xarray.DataArray of shape (n_samples, n_components)
            A lazy dask array for dask input, or a lazy ``xarray.DataArray`` with the
            sample dimensions plus ``component`` (coordinate ``0 .. K-1``) for xarray
            input; float32 for float32 data.
        """
        return self._apply(X, "proba", array, feature_dim)

    def score_samples(self, X, *, array=None, feature_dim=None):
        """Log-likelihood of each row under the model.

        Rows left out by ``nan_policy="omit"`` hold NaN.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        log_prob : ndarray, dask array or xarray.DataArray of shape (n_samples,)
            A lazy dask array for dask input, or a lazy ``xarray.DataArray`` on the
            sample dimensions for xarray input.
        """
        return self._apply(X, "score", array, feature_dim)

    def score(self, X, y=None, *, array=None, feature_dim=None):
        """Mean log-likelihood per row (computes when ``X`` is lazy).

        Rows left out by ``nan_policy="omit"`` do not count.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        array, feature_dim : str, optional
            As for :meth:`fit`; the feature dimension defaults to the fitted one.

        Returns
        -------
        float
            Mean of :meth:`score_samples` over the rows counted.
        """
        scores = self.score_samples(X, array=array, feature_dim=feature_dim)
        scores = getattr(scores, "data", scores)  # xarray -> its dask array
        if isinstance(scores, da.Array):
            return float(da.nanmean(scores, dtype=np.float64).compute())
        return float(np.nanmean(scores, dtype=np.float64))

    def impute(self, X, *, array=None, feature_dim=None):
        """``X`` with each NaN replaced by its conditional expectation under the mixture.

        A row with some features missing gets ``sum_k p(k | x_o) E[x_m | x_o, k]``
        (for a Gaussian, ``E[x_m | x_o, k] = mu_m + S_mo S_oo^-1 (x_o - mu_o)``); a
        row with every feature missing gets the mixture's mean. Observed values,
        and rows with an infinite value, are returned as they are. Works whatever
        the ``nan_policy`` of the fit.

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

    def _n_parameters(self):
        check_is_fitted(self, self._fitted_attribute)
        state = self._get_state()
        return self._family().n_parameters(state.params) + len(state.weights) - 1

    def _total_loglik(self, X):
        """Summed log-likelihood of ``X`` and the number of rows it counts (one pass).

        Rows left out by the NaN policy count in neither.
        """
        scores = self.score_samples(X)
        scores = getattr(scores, "data", scores)  # xarray -> its dask array
        if isinstance(scores, da.Array):
            total, n = dask.compute(da.nansum(scores, dtype=np.float64), da.count_nonzero(~da.isnan(scores)))
        else:
            total, n = np.nansum(scores, dtype=np.float64), np.count_nonzero(~np.isnan(scores))
        return float(total), int(n)

    def bic(self, X):
        """Bayesian information criterion for ``X`` (lower is better).

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).

        Returns
        -------
        float
            ``-2 log L + p log n``, with ``p`` free parameters and ``n`` rows counted.
        """
        total, n = self._total_loglik(X)
        return -2 * total + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion for ``X`` (lower is better).

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            The data (see :meth:`fit`).

        Returns
        -------
        float
            ``-2 log L + 2 p``, with ``p`` free parameters.
        """
        total, _ = self._total_loglik(X)
        return -2 * total + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture (in memory).

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples to draw.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The samples, grouped by component.
        y : ndarray of shape (n_samples,)
            Component of each sample, in order.
        """
        check_is_fitted(self, self._fitted_attribute)
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at "
                f"least one sample."
            )
        state = as_float64_state(self._get_state())
        rng = np.random.default_rng(seed_from(self.random_state))
        counts = rng.multinomial(n_samples, state.weights)
        X = self._family().sample(state.params, counts, rng)
        y = np.repeat(np.arange(len(counts)), counts)
        return X, y


__all__ = ["MIXTURE_CONSTRAINTS", "BaseMixture"]
