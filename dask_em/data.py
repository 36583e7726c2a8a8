"""The data edge: any supported input becomes a row-chunked 2-D dask array.

Supported: NumPy arrays (and array-likes), dask arrays chunked along rows, Zarr
arrays and paths to them. Every problem gets an error that says how to fix it.
"""

import logging
import os

import dask.array as da
import numpy as np

logger = logging.getLogger(__name__)

#: Target size in bytes of one row block when NumPy input is wrapped in dask.
NUMPY_BLOCK_BYTES = 16 * 2**20


def _open_zarr(path):
    import zarr

    try:
        arr = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for missing / corrupt stores
        raise ValueError(
            f"Could not open a Zarr array at {str(path)!r} ({type(exc).__name__}: {exc}). "
            f"Check the path, or pass a zarr.Array or dask array instead."
        ) from exc
    if not hasattr(arr, "shape"):
        names = sorted(getattr(arr, "array_keys", lambda: [])())
        raise ValueError(
            f"{str(path)!r} is a Zarr group, not an array; open one of its arrays "
            f"({', '.join(names) or 'it holds none'}), e.g. zarr.open(path)['name']."
        )
    return da.from_zarr(arr)


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


def as_row_chunked(X, *, what="X"):
    """Return ``X`` as a 2-D dask array with a single chunk along features.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, str or os.PathLike
        A path is opened as a Zarr array, lazily.
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
    if isinstance(X, (str, os.PathLike)):
        X = _open_zarr(X)
    elif type(X).__module__.startswith("zarr") and hasattr(X, "shape"):
        X = da.from_zarr(X)
    elif not isinstance(X, da.Array):
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
