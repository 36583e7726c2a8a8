"""What every estimator shares as a facade over the fit pipeline.

An estimator validates its parameters against its constraints table, prepares the
data at the edge (:func:`dask_em.data.prepare`), describes its model as a
:class:`~dask_em.fitting.ModelSpec`, and sets its fitted attributes from the
result. The fit itself is :func:`dask_em.fitting.fit_models`, for every model.
"""

from __future__ import annotations

import warnings

import numpy as np
from dask.base import tokenize

from dask_em._validation import Options, check_is_fitted, validate_params
from dask_em.data import NAN_POLICIES, prepare
from dask_em.engine import as_float64_state, map_rows
from dask_em.fitting import fit_models
from dask_em.io.locations import check_output

#: Constraints of the data-edge parameters every estimator has.
EDGE_CONSTRAINTS = {
    "nan_policy": [Options(NAN_POLICIES), None],
    "persist": [Options(("auto",)), "boolean"],
}

_EDGE_DOC = """nan_policy : {"raise", "omit", "marginalize"} or None, default=None
        Rows holding NaN or infinity: ``"omit"`` leaves them out of the fit and
        logs their number (``predict`` gives them label -1, other outputs NaN);
        ``"raise"`` is an error. ``"marginalize"`` (every model: GaussianMixture and
        BayesianGaussianMixture, all covariance types, the discrete mixtures and KMeans) treats NaN as missing
        features: each row is fitted and scored on its observed features (missing
        ones integrated out; the E-step adds the complete row's expected
        statistics; for KMeans, k-POD), and ``impute`` fills them; rows with every feature missing,
        or an infinite value, are left out as under ``"omit"``. The initialisation sample is drawn from the rows without
        NaN. None: ``"omit"`` for xarray input, ``"raise"`` otherwise.
    persist : {"auto", True, False}, default="auto"
        Keep the data in (cluster) memory between passes (True) or stream them from
        their source every pass (False). ``"auto"`` keeps them when they take at
        most half of the workers' free memory (the free RAM without a distributed
        client). The log says which was used.
    algorithm : {"auto", "em", "stepwise"}, default="auto"
        How the parameters are fitted. ``"em"``: batch EM (for KMeans, Lloyd),
        one pass over the data per iteration until ``tol``: scikit-learn's
        algorithm, exact. ``"stepwise"``: for data read from their source, where
        each pass costs a read of the store: EM on the initialisation sample
        (in memory) ranks the ``n_init`` starts, the best runs stepwise (online)
        EM over mini-batches of chunks (an M-step after each; Cappé & Moulines
        2009; for KMeans, mini-batch k-means), then batch EM passes from there
        until ``tol``, so the result is an exact EM fixed point; a few passes in
        all. ``"auto"``: batch EM when the data are in memory (NumPy input, or
        persisted), stepwise when they are streamed. Tuning:
        :func:`dask_em.settings.stepwise_setting`."""


class EMEstimator:
    """Mixin of the dask-em estimators: validation, the fit through the pipeline,
    lazy per-row outputs. Subclasses define ``_parameter_constraints``,
    ``_model_spec(prepared)`` and ``_set_fitted(result, prepared)``."""

    _parameter_constraints: dict = {}
    _fitted_attribute = "n_features_in_"

    # -- validation ---------------------------------------------------------------
    def _validate_params(self):
        """Check every constructor parameter against the constraints table (no data read)."""
        validate_params(type(self).__name__, self.get_params(deep=False), self._parameter_constraints)

    def _support_check(self):
        """``check(rows)`` raising for values outside the model's support, or None."""
        return None

    def _learn_data_shape(self, prepared):
        """Hook for what ``fit`` infers from the data (categories per feature)."""

    def _prepare(self, X, sample_weight=None, *, reset, array=None, feature_dim=None, nan_policy=None):
        """The data edge for ``fit`` (``reset``) or for a method of the fitted model.

        On ``reset`` the number of features, the xarray feature dimension and the
        feature labels (DataFrame columns, Dataset variables, the coordinate of a
        DataArray's feature dimension) are recorded; otherwise the input is checked
        against them (xarray features in another order are reordered).
        ``nan_policy`` overrides the estimator's (``impute`` reads rows with NaN
        whatever the policy of the fit).
        """
        if not reset:
            check_is_fitted(self, self._fitted_attribute)
            if feature_dim is None:
                feature_dim = getattr(self, "feature_dim_", None)
        labels = None if reset else self._feature_labels()
        prepared = prepare(
            X,
            sample_weight,
            array=array,
            feature_dim=feature_dim,
            feature_labels=labels,
            nan_policy=self.nan_policy if nan_policy is None else nan_policy,
            persist=self.persist,
        )
        source = prepared.source
        if reset:
            self._record_features(source)
            self._learn_data_shape(prepared)
        else:
            self._check_features(source)
        check = self._support_check()
        if check is not None and source.is_numpy:
            check(prepared.finite_rows())
        return prepared

    def _feature_labels(self):
        labels = getattr(self, "feature_names_in_", None)
        return list(labels) if labels is not None else getattr(self, "feature_coords_", None)

    def _record_features(self, source):
        self.n_features_in_ = source.X.shape[1]
        for attr in ("feature_dim_", "feature_names_in_", "feature_coords_"):
            self.__dict__.pop(attr, None)
        if source.layout is not None:
            self.feature_dim_ = source.layout.feature_dim
        labels = source.feature_labels
        if labels is not None:
            if all(isinstance(v, str) for v in labels):
                self.feature_names_in_ = np.asarray(labels, dtype=object)
            else:
                self.feature_coords_ = [v.item() if hasattr(v, "item") else v for v in labels]

    def _check_features(self, source):
        n = source.X.shape[1]
        if n != self.n_features_in_:
            raise ValueError(
                f"X has {n} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        if source.layout is not None:
            return  # xarray features are matched by label in prepare
        fitted = getattr(self, "feature_names_in_", None)
        given = source.feature_names
        name = type(self).__name__
        if fitted is None and given is not None:
            warnings.warn(f"X has feature names, but {name} was fitted without feature names", UserWarning,
                          stacklevel=4)
        elif fitted is not None and given is None:
            warnings.warn(f"X does not have valid feature names, but {name} was fitted with feature names",
                          UserWarning, stacklevel=4)
        elif fitted is not None and list(given) != list(fitted):
            raise ValueError(
                f"The feature names should match those that were passed during fit. Fitted on "
                f"{list(fitted)}, got {list(given)}; reorder the columns, e.g. X[{list(fitted)!r}]."
            )

    # -- fitting ------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, *, array=None, feature_dim=None, checkpoint=None, callback=None):
        """Fit the model by EM (or Lloyd), one pass over ``X`` per iteration.

        Parameters
        ----------
        X : array-like, dask array, Zarr store, or xarray object
            Data of shape (n_samples, n_features): a NumPy array, DataFrame or dask
            array (one chunk along features), a Zarr store path / URL /
            ``zarr.Array`` / ``zarr.Group`` (format 2 or 3, read lazily), or an
            xarray ``DataArray`` / ``Dataset`` whose ``feature_dim`` holds the
            features and whose other dimensions are samples (a Dataset's data
            variables are the features).
        y : None
            Ignored; present for scikit-learn's API.
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
            Feature dimension of xarray input (or of an N-D store read through
            xarray). It describes the data, not the model, so it is an argument of
            ``fit`` (remembered as ``feature_dim_`` for the other methods).
        checkpoint : str or os.PathLike, optional
            File to save the EM state to after every iteration. If it exists and was
            written by the same fit (settings, array-valued ones such as
            ``means_init`` by value, ``max_iter`` may differ; the same data: shape,
            dtype, row chunks, source; see :mod:`dask_em.checkpoint`), the fit
            resumes from it and ends as an uninterrupted fit would; a file of
            another fit, edited or invalid is a
            :class:`~dask_em.exceptions.ModelFileError` saying what differs. A path
            of one run, not a setting of the model, so it is an argument of ``fit``
            (``clone`` and grid searches do not share it).
            A local path or a URL (``s3://bucket/fit.ckpt``); checked before any
            pass (a missing folder or a folder at that path is an error).
        callback : callable, optional
            ``callback(iteration, results)`` after every iteration, where ``results``
            is a list of :class:`~dask_em.engine.EMResult` (one per start).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        if checkpoint is not None:  # before any pass (inferring categories is one)
            check_output(checkpoint, "file", "checkpoint")
        prepared = self._prepare(X, sample_weight, reset=True, array=array, feature_dim=feature_dim)
        spec = self._model_spec(prepared)
        (result,) = fit_models(prepared, [spec], checkpoint=checkpoint, callback=callback)
        self._set_fitted(result, prepared)
        self.__dict__.pop("_stream", None)
        return self

    def partial_fit(self, X, y=None, sample_weight=None, *, array=None, feature_dim=None):
        """Update the model with one batch of rows: one step of stepwise (online) EM.

        For streams that never end, or data that arrive in pieces (it works inside
        ``dask_ml.wrappers.Incremental``). The first call initialises the model
        from its batch (``init_params``/``init`` on a sample of it, EM on that
        sample ranking the ``n_init`` starts) and records the features; every call
        then blends the batch's statistics into running statistics with a decaying
        step ``eta_t = (t + t0) ** -alpha`` and takes the M-step (see
        :func:`dask_em.partial_fit.partial_fit_step`). A later call with another
        number of features, or other feature labels, is an error. After ``fit``,
        the first ``partial_fit`` starts a new stream from the fitted parameters.

        Parameters
        ----------
        X : array-like, dask array, Zarr store or xarray object
            One batch of rows (see :meth:`fit`).
        y : None
            Ignored; present for scikit-learn's API.
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weight of each row of the batch (see :meth:`fit`).
        array, feature_dim : str, optional
            As for :meth:`fit`.

        Returns
        -------
        self : object
            The updated estimator.
        """
        from dask_em.partial_fit import partial_fit_step

        stream = getattr(self, "_stream", None)
        first = stream is None and not hasattr(self, self._fitted_attribute)
        if first or stream is None:
            self._validate_params()
        prepared = self._prepare(X, sample_weight, reset=first, array=array, feature_dim=feature_dim)
        spec = self._model_spec(prepared)
        if stream is None and not first:  # after fit: start from the fitted parameters
            spec.needs_sample = False
            spec.complete_starts = None  # the fitted state is complete (a variational posterior and its priors)
            state = self._get_state()
            spec.initialize = lambda rows, weights, seeds, rank: [as_float64_state(state)]
        self._stream, result = partial_fit_step(prepared, spec, stream)
        self._set_fitted(result, prepared)
        return self

    # -- per-row outputs ----------------------------------------------------------
    def _map(self, X, kernel, payload, what, *, name, dtype, n_cols=None, array=None, feature_dim=None,
             omit_kernel=None, marginal_kernel=None):
        """Lazy per-row output of ``kernel`` (eager for in-memory input), in the input's shape.

        ``what`` is the kind of output (``"labels"``, ``"proba"``, ``"score"``,
        ``"distance"``: the name of an xarray result); ``name`` prefixes the task
        names. ``omit_kernel`` replaces ``kernel`` under ``nan_policy="omit"`` (left-out
        rows get label -1 or NaN), and ``marginal_kernel`` under ``"marginalize"`` (rows
        with gaps scored on their observed features). Float outputs are float32 for
        float32 data.
        """
        prepared = self._prepare(X, reset=False, array=array, feature_dim=feature_dim)
        return self._map_prepared(prepared, kernel, payload, what, name=name, dtype=dtype, n_cols=n_cols,
                                  omit_kernel=omit_kernel, marginal_kernel=marginal_kernel)

    def _map_prepared(self, prepared, kernel, payload, what, *, name, dtype, n_cols=None, omit_kernel=None,
                      marginal_kernel=None):
        """:meth:`_map` on data already through the data edge."""
        source = prepared.source
        if prepared.nan_policy == "omit" and omit_kernel is not None:
            kernel = omit_kernel
        elif prepared.nan_policy == "marginalize":
            kernel = marginal_kernel or omit_kernel or kernel
        out_dtype = np.dtype(dtype)
        if out_dtype.kind == "f":
            out_dtype = prepared.dtype
        if source.is_numpy:
            return np.asarray(kernel(source.data, payload)).astype(out_dtype, copy=False)
        Xd = source.X
        name = f"{name}-{tokenize(Xd, payload, prepared.nan_policy)}"
        out = map_rows(Xd, kernel, payload, name=name, dtype=np.dtype(dtype), n_cols=n_cols)
        if out_dtype != out.dtype:
            out = out.astype(out_dtype)
        return source.wrap(out, what)

    def save(self, path):
        """Write the fitted model to ``path`` (a plain NPZ + JSON file, never pickle).

        Load it with :func:`dask_em.load`. The format is documented in
        :mod:`dask_em.persistence`. ``path`` is a local path or a URL
        (``s3://bucket/model.npz``, ``file://...``); a missing folder or bucket, or
        a folder at ``path``, is a ``ValueError`` naming ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            File to write (replaced if it exists).

        Returns
        -------
        str
            ``path``.
        """
        from dask_em.estimators._saving import save_model

        check_is_fitted(self, self._fitted_attribute)
        return save_model(self, path)
