"""xarray in and out: a labelled cube becomes rows x features, results get their labels back.

One named dimension holds the features; every other dimension is a sample
dimension, e.g. ``(time, y, x, band)`` with ``band`` as features gives rows of
``time * y * x`` samples. A ``Dataset`` contributes one feature per data variable.
Each block is flattened on its own (:func:`dask.array.reshape_blockwise`), so the
chunking of the sample dimensions is kept and nothing is rechunked along them;
results are folded back the same way, lazily, with the original coordinates.
"""

import logging
import math
from dataclasses import dataclass

import dask.array as da
import numpy as np

logger = logging.getLogger(__name__)

#: Names of the xarray results, by kind of per-row output.
RESULT_NAMES = {"labels": "labels", "proba": "probabilities", "score": "log_likelihood"}


def is_xarray(obj):
    """Whether ``obj`` is an ``xarray.DataArray`` or ``xarray.Dataset``."""
    return type(obj).__module__.startswith("xarray") and hasattr(obj, "dims") and hasattr(obj, "coords")


@dataclass
class XarrayLayout:
    """What is needed to put per-row results back on the sample dimensions.

    Attributes
    ----------
    sample_dims : tuple of str
    sample_shape : tuple of int
    sample_chunks : tuple of tuple of int
        Chunks of the sample dimensions (the row blocks of the 2-D view, in order).
    coords : dict
        Coordinates that do not involve the feature dimension.
    feature_dim : str
    feature_names : list or None
        Data variables of a Dataset, or the values of a DataArray's feature
        coordinate, in feature order.
    attrs : dict
        Attributes of the input, given to the results.
    """

    sample_dims: tuple
    sample_shape: tuple
    sample_chunks: tuple
    coords: dict
    feature_dim: str
    feature_names: list = None
    attrs: dict = None

    def flatten(self, values, what="sample_weight"):
        """Per-sample values as (N,), in the row order of the 2-D view of the data.

        Parameters
        ----------
        values : xarray.DataArray, array-like or dask array
            A DataArray over the sample dimensions (any order), or an array of the
            sample shape. A 1-D array of N values is taken as the rows in C order of
            the sample dimensions, which is the row order of the data only when the
            sample blocks split the first sample dimension alone; otherwise it is
            refused (the values would be matched to the wrong samples).
        what : str
            Name used in error messages.

        Returns
        -------
        array of shape (N,)
            NumPy for 1-D in-memory input, else a dask array chunked like the rows.
        """
        import xarray as xr

        n_rows = math.prod(self.sample_shape)
        if isinstance(values, xr.DataArray):
            if sorted(values.dims) != sorted(self.sample_dims):
                raise ValueError(
                    f"{what} has dimensions {values.dims}; it needs exactly the sample "
                    f"dimensions {self.sample_dims} of X (one value per sample)."
                )
            values = values.transpose(*self.sample_dims).data
        arr = values if isinstance(values, da.Array) else np.asarray(values)
        if arr.ndim == 1 and arr.shape[0] == n_rows and len(self.sample_dims) > 1:
            if all(len(c) == 1 for c in self.sample_chunks[1:]):
                return arr  # blocks split the first sample dimension only: C order is row order
            raise ValueError(
                f"{what} is a flat array, but the rows of X are its blocks flattened one "
                f"by one (X is chunked along {self.sample_dims[1:]} too), so a flat order "
                f"is ambiguous. Pass {what} as an xarray.DataArray over the sample "
                f"dimensions {self.sample_dims}, or as an array of shape {self.sample_shape}."
            )
        if arr.shape != self.sample_shape:
            return arr  # a shape error follows, naming the expected shape
        arr = arr.rechunk(self.sample_chunks) if isinstance(arr, da.Array) else da.from_array(arr, chunks=self.sample_chunks)
        return arr if arr.ndim == 1 else da.reshape_blockwise(arr, (n_rows,))

    def wrap(self, result, what):
        """Lazy ``xarray.DataArray`` from a per-row dask result of shape (N,) or (N, K).

        Labels become floats with NaN where a row was left out (label -1). The result
        keeps the input's coordinates (but the feature dimension's) and ``attrs``;
        probabilities get a ``component`` dimension with coordinate ``0 .. K-1``.
        """
        import xarray as xr

        coords = self.coords
        if result.ndim == 1:
            shape, chunks, dims = self.sample_shape, self.sample_chunks, self.sample_dims
        else:
            K = result.shape[1]
            shape, chunks = self.sample_shape + (K,), self.sample_chunks + ((K,),)
            dims = self.sample_dims + ("component",)
            coords = {**self.coords, "component": np.arange(K)}
        if what == "labels":
            result = da.where(result >= 0, result, np.nan)
        if len(self.sample_dims) > 1:
            result = da.reshape_blockwise(result, shape, chunks=chunks)
        return xr.DataArray(
            result, dims=dims, coords=coords, name=RESULT_NAMES.get(what, what), attrs=dict(self.attrs or {})
        )


def _dataset_to_array(ds, feature_dim, feature_names):
    names = list(ds.data_vars)
    if not names:
        raise ValueError("The Dataset has no data variables; each data variable is one feature.")
    if feature_names is not None:
        missing = [n for n in feature_names if n not in names]
        if missing:
            raise ValueError(
                f"The Dataset lacks the variables {missing} that the model was fitted on "
                f"(features: {list(feature_names)})."
            )
        names = list(feature_names)
    dims = {n: ds[n].dims for n in names}
    if len(set(dims.values())) != 1:
        raise ValueError(
            f"Every data variable of the Dataset must have the same dimensions to be used as "
            f"features; got {dims}. Select the variables that do, e.g. ds[['a', 'b']]."
        )
    return ds[names].to_dataarray(dim=feature_dim), names


def _plain(value):
    """A NumPy number or string as the Python one (for messages)."""
    return value.item() if isinstance(value, (np.integer, np.floating, np.str_, np.bool_)) else value


def _match_feature_coordinate(obj, feature_dim, fitted, what):
    """The DataArray with its features in the fitted order, and its feature labels.

    The labels are the values of the coordinate of ``feature_dim`` (None without one).
    With ``fitted`` labels (from a fit), a coordinate holding the same labels in
    another order is reordered to the fitted order; other labels are an error, so
    bands are never scored in the wrong order.
    """
    if feature_dim not in obj.coords:
        return obj, None
    labels = list(obj[feature_dim].values)
    if fitted is None or labels == list(fitted):
        return obj, labels
    fitted = list(fitted)
    if len(labels) == len(fitted) and set(map(str, labels)) == set(map(str, fitted)):
        logger.info("reordering %s's %r to the order the model was fitted on: %s", what, feature_dim, fitted)
        return obj.sel({feature_dim: [labels[[str(v) for v in labels].index(str(f))] for f in fitted]}), fitted
    labels = [_plain(v) for v in labels]  # 700, not np.int64(700), in the message
    missing = [f for f in fitted if str(f) not in set(map(str, labels))]
    extra = [v for v in labels if str(v) not in set(map(str, fitted))]
    raise ValueError(
        f"{what}'s {feature_dim!r} coordinate holds {labels}, but the model was fitted on {fitted} "
        f"(missing: {missing}; not fitted on: {extra}). Select the fitted features, e.g. "
        f"X.sel({feature_dim}={fitted!r})."
    )


def from_xarray(obj, feature_dim=None, feature_names=None, what="X"):
    """Row-chunked 2-D dask array (N, D) from a DataArray or Dataset, and its layout.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        NumPy-backed objects are wrapped in dask (lazy from here on).
    feature_dim : str, optional
        The dimension holding the features. For a DataArray it defaults to the last
        dimension when there are exactly two; for a Dataset it names the new feature
        dimension (``"variable"``).
    feature_names : list, optional
        Labels of the features of a fitted model: for a Dataset the variables to use,
        in this order; for a DataArray the values its feature coordinate must hold
        (reordered to this order when they come in another).
    what : str
        Name used in error messages.

    Returns
    -------
    X : dask.array.Array of shape (N, D)
    layout : XarrayLayout
    """
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        feature_dim = feature_dim or "variable"
        obj, feature_names = _dataset_to_array(obj, feature_dim, feature_names)
    else:
        if feature_dim is None:
            if obj.ndim != 2:
                raise ValueError(
                    f"{what} is a DataArray with dimensions {obj.dims}; say which one holds the "
                    f"features with feature_dim='name' (--feature-dim name)."
                )
            feature_dim = obj.dims[1]
            logger.info("using the last dimension %r of the DataArray as features", feature_dim)
        if feature_dim not in obj.dims:
            raise ValueError(
                f"{what} has no dimension {feature_dim!r} to use as features; its dimensions "
                f"are {obj.dims}."
            )
        obj, feature_names = _match_feature_coordinate(obj, feature_dim, feature_names, what)
    sample_dims = tuple(d for d in obj.dims if d != feature_dim)
    if not sample_dims:
        raise ValueError(f"{what} has only the feature dimension {feature_dim!r}; it needs a sample dimension.")
    obj = obj.transpose(*sample_dims, feature_dim)
    data = obj.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=("auto",) + (-1,) * (data.ndim - 1))
    if data.numblocks[-1] != 1:
        logger.info(
            "%s has %d chunks along the feature dimension %r; rechunking it to one "
            "(every row block must hold all features)",
            what,
            data.numblocks[-1],
            feature_dim,
        )
        data = data.rechunk({data.ndim - 1: -1})
    sample_shape = data.shape[:-1]
    n_rows = math.prod(sample_shape)
    X = data if data.ndim == 2 else da.reshape_blockwise(data, (n_rows, data.shape[-1]))
    coords = {k: v for k, v in obj.coords.items() if feature_dim not in v.dims}
    layout = XarrayLayout(
        sample_dims, sample_shape, data.chunks[:-1], coords, feature_dim, feature_names, dict(obj.attrs)
    )
    return X, layout


def label_dtype(n_labels):
    """The smallest signed integer dtype that holds the labels ``0 .. n_labels - 1`` and -1."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _regular_chunks(arr):
    """``arr`` rechunked where its dask chunks are not what Zarr needs (equal but the last)."""
    fix = {}
    for dim, chunks in zip(arr.dims, arr.chunks or ()):
        if len(set(chunks[:-1])) > 1 or chunks[-1] > chunks[0]:
            fix[dim] = max(chunks)
    return arr.chunk(fix) if fix else arr


def result_dataset(result, what, n_labels):
    """A per-row result as a Dataset that ``xarray.open_zarr`` reads back.

    Parameters
    ----------
    result : dask.array.Array of shape (N,) or (N, K), or xarray.DataArray
        What ``predict`` (``what="labels"``), ``predict_proba`` (``"proba"``) or
        ``score_samples`` (``"score"``) returned. A dask array gets the dimensions
        ``("sample",)`` or ``("sample", "component")``; a DataArray keeps its own.
    what : {"labels", "proba", "score"}
    n_labels : int
        Number of components (clusters), for the labels' dtype.

    Returns
    -------
    xarray.Dataset
        One variable named after ``what`` (``labels``, ``probabilities``,
        ``log_likelihood``), lazy. ``component`` has the coordinate ``0 .. K-1``.
        Labels are stored as :func:`label_dtype` (int8 up to 127 components) with
        -1 where a row was left out, and -1 as the Zarr fill value (``_FillValue``),
        so xarray reads them as floats with NaN there, as the estimators' xarray
        output; Zarr readers see the integers and -1.
    """
    import xarray as xr

    name = RESULT_NAMES[what]
    if isinstance(result, da.Array):
        dims = ("sample",) if result.ndim == 1 else ("sample", "component")
        result = xr.DataArray(result, dims=dims)
    if "component" in result.dims:
        result = result.assign_coords(component=np.arange(result.sizes["component"]))
    if what == "labels":
        if result.dtype.kind == "f":  # xarray labels: NaN where a row was left out
            result = result.fillna(-1)
        result = result.astype(label_dtype(n_labels))
        result.encoding.update({"_FillValue": -1, "fill_value": -1})  # xarray's mask; Zarr's fill value
        result.attrs["description"] = "component label; -1 (the fill value) where the row was left out"
    return _regular_chunks(result).to_dataset(name=name)
