"""The data edge: any supported input becomes a row-chunked 2-D dask array.

Supported: NumPy arrays (and array-likes), dask arrays chunked along rows, Zarr
stores (paths, URLs, ``zarr.Array``, an array inside a group; formats 2 and 3) and
xarray ``DataArray`` / ``Dataset`` objects with a named feature dimension (see
:mod:`dask_em.io`). Every problem gets an error that says how to fix it.
"""

import functools
import logging
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dask_em.engine.inline import in_memory_blocks
from dask_em.engine.passes import active_client
from dask_em.io import from_xarray, is_xarray, is_zarr, open_zarr_array, zarr_to_dask
from dask_em.io.zarr_source import read_block, warn_missing_chunks_in
from dask_em.weights import as_row_weights

logger = logging.getLogger(__name__)

#: Target size in bytes of one row block when NumPy input is wrapped in dask.
NUMPY_BLOCK_BYTES = 16 * 2**20


def _check_dtype(dtype, what):
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"Complex data not supported: {what} has dtype {dtype}. Use the real part, the "
            f"modulus, or real and imaginary parts as separate features."
        )
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == bool):
        raise ValueError(
            f"{what} must hold real numbers, got dtype {dtype}; convert it, e.g. "
            f"{what}.astype('float64')."
        )


def _as_numeric_array(X, what):
    """An in-memory input as a NumPy array of numbers: sparse matrices are refused,
    object arrays of numbers converted (scikit-learn's rules)."""
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"Sparse data was passed for {what}, but dense data is required. Use "
            f"'.toarray()' to convert to a dense numpy array (or a dask array of its row blocks)."
        )
    arr = np.asarray(X)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:  # keep NumPy's kind: TypeError for a dict
            raise (TypeError if isinstance(exc, TypeError) else ValueError)(
                f"{what} holds objects that are not numbers ({exc}); convert it to a numeric "
                f"array first, e.g. np.asarray({what}, dtype='float64')."
            ) from None
    return arr


def dataframe_feature_names(X):
    """Column names of a DataFrame when they are all strings (scikit-learn's rule), else None."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "iloc"):
        return None
    names = np.asarray(columns, dtype=object)
    return names if len(names) and all(isinstance(n, str) for n in names) else None


def numpy_block_rows(n_rows, n_features, itemsize=8, cores=None):
    """Rows per block when NumPy input is wrapped in a dask array.

    Blocks of at most about 16 MiB (but about 1,024 rows at least), at least 4 of them (for
    2+ cores) when the data have more than 4,096 rows, of equal size, and as many as a
    multiple of ``cores`` (by default the threads of the scheduler that would compute
    them: :func:`~dask_em.engine.stepwise.scheduler_threads`) where the rows allow it
    (past 1,024 blocks, rounding the rows up may leave one fewer). A pass whose last
    round of blocks is short or partly empty leaves cores idle at its end: 1,000,000 x
    16 float64 rows on 2 cores make 8 blocks of 125,000 rows, not 7 of 131,072 and one
    of 82,496, and a full-covariance iteration is 3-4% shorter. The blocks, hence the
    order of the sums and the results' last bits, depend on the thread count.
    """
    from dask_em.engine.stepwise import scheduler_threads

    most = max(1, NUMPY_BLOCK_BYTES // max(1, n_features * itemsize))
    cores = max(1, int(cores or scheduler_threads()))
    blocks = max(-(-n_rows // most), 4)
    blocks = -(-blocks // cores) * cores
    if n_rows < blocks * 1024:  # blocks of 1,024 rows at least: fewer of them, still a multiple of the cores
        blocks = max(1, n_rows // 1024)
        if blocks >= cores:
            blocks -= blocks % cores
    return int(max(1, -(-n_rows // blocks)))


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
    feature_names : ndarray of str or None
        Column names of a DataFrame input.
    data : ndarray or None
        The in-memory input as a NumPy array (``is_numpy``), for checks done at once.
    """

    X: da.Array
    is_numpy: bool = False
    layout: object = None
    feature_names: object = None
    data: object = None

    @property
    def feature_labels(self):
        """Labels of the features: DataFrame columns, Dataset variables or the values of
        a DataArray's feature coordinate; None when the input has none."""
        if self.layout is not None:
            return self.layout.feature_names
        return self.feature_names

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

        where = os.fspath(source)
        try:  # block reads name the store and region when they fail
            ds = xr.open_zarr(where, consolidated=None,
                              from_array_kwargs={"getitem": functools.partial(read_block, where=where)})
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
        warn_missing_chunks_in(where, [array] if array is not None else list(ds.data_vars))
        return ds[array] if array is not None else ds
    arr = open_zarr_array(source, array)
    if arr.ndim != 2:
        raise ValueError(
            f"The Zarr array {what} is {arr.ndim}-D with shape {arr.shape}; name the dimension "
            f"that holds the features with feature_dim='name' (--feature-dim name), or give a "
            f"2-D (n_samples, n_features) array."
        )
    X = zarr_to_dask(arr, source if isinstance(source, (str, os.PathLike)) else None)
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
        _check_features(Xd, what)
        return Source(Xd, False, layout)
    names = dataframe_feature_names(X)
    if not isinstance(X, da.Array):
        X = _as_numeric_array(X, what)
    Xd, is_numpy = as_row_chunked(X, what=what)
    _check_features(Xd, what)
    return Source(Xd, is_numpy, feature_names=names, data=X if is_numpy else None)


def _check_features(Xd, what):
    if Xd.shape[1] == 0:
        raise ValueError(
            f"0 feature(s) (shape={Xd.shape}) while a minimum of 1 is required: {what} needs at "
            f"least one feature column."
        )


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
        X = _as_numeric_array(X, what)
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


# ----------------------------------------------------------------- the fit's data edge
#: What a fit does with rows holding NaN: refuse them, leave them out, or marginalise the
#: missing features (rows with every feature missing, or an infinite value, left out).
NAN_POLICIES = ("raise", "omit", "marginalize")
#: ``persist="auto"`` keeps the data in memory when they take at most this share of it.
PERSIST_FRACTION = 0.5


def resolve_nan_policy(nan_policy, source):
    """``"omit"``, ``"raise"`` or ``"marginalize"``; ``None`` means omit for xarray input,
    raise otherwise."""
    if nan_policy is None:
        return "omit" if source.layout is not None else "raise"
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES} or None. Got {nan_policy!r} instead.")
    return nan_policy


def _gib(n):
    return f"{n / 2**30:.3g} GiB"


def available_memory(X=None):
    """Memory the data could be kept in, and where.

    With a distributed client as the scheduler that would compute ``X``: the sum
    over workers of their memory limit minus the memory their processes already
    use (libraries, buffers). Otherwise (no client, or another scheduler chosen
    with ``dask.config.set(scheduler=...)`` while one is connected): free RAM.

    Returns
    -------
    bytes : int
    where : str
        ``"cluster"`` or ``"local"``.
    """
    import psutil

    client = active_client(X)
    if client is not None:
        total = 0
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            limit = w.get("memory_limit") or psutil.virtual_memory().total
            total += max(0, limit - w.get("metrics", {}).get("memory", 0))
        return int(total), "cluster"
    return int(psutil.virtual_memory().available), "local"


def decide_persist(X, persist):
    """Whether to keep ``X`` in (cluster) memory between passes; logs the choice.

    Parameters
    ----------
    X : dask.array.Array
    persist : {"auto", True, False}
        ``"auto"`` persists when ``X.nbytes`` is at most :data:`PERSIST_FRACTION` of
        :func:`available_memory` (the workers' memory limits less what their
        processes already use, or the free RAM without a cluster).
    """
    memory, where = available_memory(X)
    if isinstance(persist, str):  # "auto"
        persist = X.nbytes <= PERSIST_FRACTION * memory
        reason = f"{_gib(X.nbytes)} of data, {_gib(memory)} of {where} memory free"
    else:
        reason = f"persist={persist}"
    if persist:
        logger.info("keeping the data in %s memory between iterations (%s)", where, reason)
    else:
        logger.info("streaming the data from its source every iteration (%s)", reason)
    return bool(persist)


def nonfinite_rows_error(n_bad, n_total, fix):
    """The error for rows holding NaN or infinity under ``nan_policy="raise"``."""
    return ValueError(
        f"Input X contains {n_bad} rows with NaN or infinite values (of {n_total} rows); "
        f"{fix}, or pass nan_policy='omit' to leave them out (or 'marginalize' to fit "
        f"rows with NaN on their observed features)."
    )


@dataclass
class Prepared:
    """A fit's data, decided once at the edge for every model that uses it.

    Attributes
    ----------
    source : Source
        The input as rows x features, and how to give results back in its shape.
    X : dask.array.Array of shape (N, D)
        Row-chunked data; in memory between passes after :meth:`load` when decided.
    weights : dask.array.Array of shape (N,) or None
        Sample weights chunked like the rows.
    nan_policy : {"raise", "omit", "marginalize"}
        Resolved policy for rows with NaN or infinity.
    persist : {"auto", True, False}
        The requested persist policy; :meth:`load` decides and applies it.
    in_memory : bool
        After :meth:`load`: whether passes read the data from memory (NumPy
        input, or persisted) rather than from their source.
    finite : ndarray of bool or None
        For in-memory input holding NaN or infinity: which rows are finite.
    """

    source: Source
    X: da.Array
    weights: object
    nan_policy: str
    persist: object = "auto"
    loaded: bool = False
    in_memory: bool = False
    finite: object = None

    def finite_rows(self):
        """In-memory input's rows without NaN or infinity, as float64 (None for lazy input)."""
        if not self.source.is_numpy:
            return None
        data = self.source.data
        return np.asarray(data if self.finite is None else data[self.finite], dtype=np.float64)

    @property
    def n_features(self):
        return self.X.shape[1]

    @property
    def dtype(self):
        """dtype of the fitted attributes: float32 for float32 data, else float64."""
        return np.dtype(np.float32) if self.X.dtype == np.float32 else np.dtype(np.float64)

    def load(self):
        """Keep the data in (cluster) memory when the persist policy says so (once).

        In-memory input stays where it is (its blocks are only wrapped); otherwise
        :func:`decide_persist` decides. Call it inside the fit, after every check
        that needs no pass, since persisting reads the data.
        """
        if self.loaded:
            return self
        if self.source.is_numpy or decide_persist(self.X, self.persist):
            # NumPy input's graph already holds its blocks (da.from_array): nothing to read
            self.X = self.X if in_memory_blocks(self.X) is not None else self.X.persist()
            if self.weights is not None and in_memory_blocks(self.weights) is None:
                self.weights = self.weights.persist()
            self.in_memory = True
        self.loaded = True
        return self


def prepare(
    X,
    sample_weight=None,
    *,
    array=None,
    feature_dim=None,
    feature_labels=None,
    nan_policy=None,
    persist="auto",
):
    """Any supported input and its weights, ready for a fit: the data edge's policies.

    Nothing is read here beyond in-memory input: the NaN policy is resolved, the
    weights are put in row order and chunked like the rows, in-memory data are
    checked at once for NaN rows under ``"raise"`` (their finite rows are kept as
    :meth:`Prepared.finite_rows`, for the model's support check), and the persist
    decision is left to :meth:`Prepared.load`.

    Parameters
    ----------
    X : array-like, dask array, Zarr store or xarray object
        See :func:`as_source`.
    sample_weight : array-like, dask array or xarray.DataArray, optional
        One weight per row (for xarray input: over the sample dimensions).
    array, feature_dim : str, optional
        See :func:`as_source`.
    feature_labels : list, optional
        Labels of the features of a fitted model (xarray input is matched to them).
    nan_policy : {"raise", "omit", "marginalize"} or None
        None: ``"omit"`` for xarray input, ``"raise"`` otherwise.
    persist : {"auto", True, False}

    Returns
    -------
    Prepared
    """
    source = as_source(X, array=array, feature_dim=feature_dim, feature_names=feature_labels)
    policy = resolve_nan_policy(nan_policy, source)
    if source.is_numpy:
        data = source.data
        finite, n_bad = None, 0
        if data.dtype.kind == "f" and not np.isfinite(data).all():  # whole-array test first: 5x faster
            finite = np.isfinite(data).all(axis=1)
            n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad and policy == "raise":
            raise nonfinite_rows_error(n_bad, data.shape[0], "remove or impute them first")
    weights = as_row_weights(source.row_weights(sample_weight), source.X)
    prepared = Prepared(source, source.X, weights, policy, persist)
    if source.is_numpy and n_bad:
        prepared.finite = finite
    return prepared
