"""The data edge: any supported input becomes a row-chunked 2-D dask array.

Supported: NumPy arrays (and array-likes), dask arrays chunked along rows, Zarr
stores (paths, URLs, ``zarr.Array``, an array inside a group; formats 2 and 3) and
xarray ``DataArray`` / ``Dataset`` objects with a named feature dimension (see
:mod:`dask_em.io`). Every problem gets an error that says how to fix it.
"""

import logging
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dask_em.io import from_xarray, is_xarray, is_zarr, open_zarr_array

logger = logging.getLogger(__name__)

#: Target size in bytes of one row block when NumPy input is wrapped in dask.
NUMPY_BLOCK_BYTES = 16 * 2**20


def _check_dtype(dtype, what):
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == bool):
        raise ValueError(
            f"{what} must hold real numbers, got dtype {dtype}; convert it, e.g. "
            f"{what}.astype('float64')."
        )


def numpy_block_rows(n_rows, n_features, itemsize=8):
    """Rows per block when NumPy input is wrapped in a dask array.

    Blocks of at most about 16 MiB, and at least 4 of them (for 2+ cores) when the
    data have more than 4,096 rows.
    """
    rows = NUMPY_BLOCK_BYTES // max(1, n_features * itemsize)
    rows = min(rows, -(-n_rows // 4))
    return int(max(1024, min(rows, max(n_rows, 1))))


@dataclass
class Source:
    """An input seen as rows x features, and how to give results back in its shape.

    Attributes
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked, one chunk along features.
    is_numpy : bool
        Whether the input was in memory (NumPy or array-like).
    layout : XarrayLayout or None
        For xarray input: the sample dimensions and coordinates of the results.
    """

    X: da.Array
    is_numpy: bool = False
    layout: object = None

    def row_weights(self, sample_weight):
        """``sample_weight`` in the row order of ``X``: for xarray input, a DataArray over
        the sample dimensions (or an array of their shape) is flattened like the data."""
        if sample_weight is None or self.layout is None:
            return sample_weight
        return self.layout.flatten(sample_weight, "sample_weight")

    def wrap(self, result, what):
        """Give a per-row result (N,) or (N, K) the shape of the input (xarray)."""
        return result if self.layout is None else self.layout.wrap(result, what)


def _from_zarr(source, array, feature_dim, what):
    if feature_dim is not None:  # a labelled cube: read it through xarray
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(
                f"feature_dim needs {what} as a store path, or open it with xarray yourself: "
                f"xr.open_zarr(path)[name]."
            )
        import xarray as xr

        try:
            ds = xr.open_zarr(os.fspath(source), consolidated=None)
        except Exception as exc:
            raise ValueError(
                f"Could not open {os.fspath(source)!r} with xarray ({type(exc).__name__}: {exc}); "
                f"the store needs dimension names (written by xarray, or Zarr format 3)."
            ) from exc
        if array is not None and array not in ds.data_vars:
            raise ValueError(
                f"The store {os.fspath(source)!r} has no variable {array!r}; its variables are: "
                f"{', '.join(ds.data_vars) or 'none'}."
            )
        return ds[array] if array is not None else ds
    arr = open_zarr_array(source, array)
    if arr.ndim != 2:
        raise ValueError(
            f"The Zarr array {what} is {arr.ndim}-D with shape {arr.shape}; name the dimension "
            f"that holds the features with feature_dim='name' (--feature-dim name), or give a "
            f"2-D (n_samples, n_features) array."
        )
    X = da.from_zarr(arr)
    if X.numblocks[1] != 1:
        logger.info(
            "the Zarr array has %d chunks along the features; rechunking to one chunk of %d "
            "features per row block (keeping %d rows per block)",
            X.numblocks[1],
            X.shape[1],
            X.chunks[0][0],
        )
        X = X.rechunk({1: -1})
    return X


def as_source(X, *, array=None, feature_dim=None, feature_names=None, what="X"):
    """Any supported input as a :class:`Source` (a row-chunked 2-D dask array).

    Parameters
    ----------
    X : array-like, dask array, zarr.Array / zarr.Group, str / os.PathLike, xarray object
        A path or URL is opened as a Zarr store, lazily. An xarray object has one
        feature dimension; every other dimension is a sample dimension.
    array : str, optional
        Name of the array (or xarray variable) inside a Zarr group.
    feature_dim : str, optional
        Feature dimension of xarray input (or of an N-D store read through xarray).
    feature_names : list of str, optional
        Data variables of a Dataset to use as features, in order.
    what : str
        Name used in error messages.

    Returns
    -------
    Source

    Raises
    ------
    ValueError
        Wrong number of dimensions, chunks along the feature axis of a dask array,
        unknown chunk sizes, a non-numeric dtype, or an unreadable store.
    """
    if isinstance(X, (str, os.PathLike)) or is_zarr(X):
        X = _from_zarr(X, array, feature_dim, what)
    elif array is not None:
        raise ValueError(f"array={array!r} only applies to Zarr stores and groups; {what} is a {type(X).__name__}.")
    if is_xarray(X):
        Xd, layout = from_xarray(X, feature_dim, feature_names, what)
        _check_dtype(Xd.dtype, what)
        return Source(Xd, False, layout)
    Xd, is_numpy = as_row_chunked(X, what=what)
    return Source(Xd, is_numpy)


def as_row_chunked(X, *, what="X"):
    """Return ``X`` as a 2-D dask array with a single chunk along features.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, str or os.PathLike
        A path is opened as a Zarr array, lazily (see :func:`as_source` for groups
        and xarray input).
    what : str
        Name used in error messages.

    Returns
    -------
    X : dask.array.Array of shape (N, D)
    is_numpy : bool
        Whether the input was in memory (NumPy or array-like).

    Raises
    ------
    ValueError
        Wrong number of dimensions, chunks along the feature axis, unknown chunk
        sizes, a non-numeric dtype, or an unreadable Zarr path.
    """
    is_numpy = False
    if isinstance(X, (str, os.PathLike)) or is_zarr(X) or is_xarray(X):
        return as_source(X, what=what).X, False
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        is_numpy = True
    if X.ndim != 2:
        hint = (
            " Reshape your data with X.reshape(-1, 1) if it has a single feature, or "
            "X.reshape(1, -1) if it is a single sample."
            if X.ndim == 1
            else ""
        )
        raise ValueError(f"Expected a 2-D {what} (n_samples, n_features), got {X.ndim}-D with shape {X.shape}.{hint}")
    _check_dtype(X.dtype, what)
    if is_numpy:
        rows = numpy_block_rows(X.shape[0], X.shape[1], X.dtype.itemsize)
        return da.from_array(X, chunks=(rows, -1)), True
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"{what} has unknown chunk sizes along the rows (after boolean indexing, for "
            f"example); call {what} = {what}.compute_chunk_sizes() first."
        )
    if X.numblocks[1] != 1:
        raise ValueError(
            f"{what} has {X.numblocks[1]} chunks along the feature axis (axis 1); every row "
            f"block must hold all features. Rechunk it with {what}.rechunk({{1: -1}})."
        )
    return X, False


def count_nonfinite_rows(X):
    """Number of rows of an in-memory array with any NaN or infinite value."""
    return int(X.shape[0] - np.count_nonzero(np.isfinite(X).all(axis=1)))
