"""Zarr in and out: open an array (path, URL, ``zarr.Array``, or an array inside a
group), and write a lazy result to a store chunk by chunk, atomically.

Works with Zarr format 2 and 3 stores (zarr-python 3 reads both). Nothing here
loads a whole array: readers return ``zarr.Array`` objects that dask reads lazily,
through :func:`zarr_to_dask`, whose block reads name the store, chunk and rows when
they fail, and which warns when a local store lacks chunks (read as the fill value).
Where outputs go (paths and URLs) is :mod:`dask_em.io.locations`.
"""

import logging
import os
import shutil
import uuid

from dask_em.io.locations import check_output, commit_store, resolve

logger = logging.getLogger(__name__)


def is_zarr(obj):
    """Whether ``obj`` is a ``zarr.Array`` or ``zarr.Group``."""
    return type(obj).__module__.startswith("zarr") and (hasattr(obj, "shape") or hasattr(obj, "array_keys"))


def _array_names(group):
    try:
        return sorted(group.array_keys())
    except Exception:  # a broken group still gets a readable message
        return []


def open_zarr_array(source, array=None):
    """Open a Zarr array for reading, lazily.

    Parameters
    ----------
    source : str, os.PathLike, zarr.Array or zarr.Group
        A path or URL of a Zarr store (format 2 or 3), or an opened array / group.
    array : str, optional
        Path of the array inside the group (``"reflectance"``, ``"a/b"``); needed
        when ``source`` is a group.

    Returns
    -------
    zarr.Array

    Raises
    ------
    ValueError
        The store cannot be opened, ``array`` does not exist, or a group was given
        without ``array``; the message lists the arrays available.
    """
    obj = source
    if isinstance(source, (str, os.PathLike)):
        import zarr

        where = os.fspath(source)
        try:
            obj = zarr.open(where, mode="r")
        except Exception as exc:  # zarr raises several types for missing / corrupt stores
            raise ValueError(
                f"Could not open a Zarr store at {where!r} ({type(exc).__name__}: {exc}). "
                f"Check the path, or pass a zarr.Array or dask array instead."
            ) from exc
    else:
        where = str(getattr(obj, "store_path", "") or getattr(obj, "path", "") or "the Zarr object")
    if hasattr(obj, "shape"):
        if array is not None:
            raise ValueError(
                f"{where!r} is a Zarr array, not a group, so array={array!r} cannot be "
                f"selected in it; leave out `array` (--array)."
            )
        return obj
    names = _array_names(obj)
    if array is None:
        raise ValueError(
            f"{where!r} is a Zarr group, not an array; choose one of its arrays "
            f"({', '.join(names) or 'it holds none'}) with array='name' (--array name)."
        )
    try:
        arr = obj[array]
    except KeyError:
        raise ValueError(
            f"The Zarr group {where!r} has no array {array!r}; its arrays are: "
            f"{', '.join(names) or 'none'}."
        ) from None
    if not hasattr(arr, "shape"):
        raise ValueError(
            f"{array!r} in {where!r} is a group, not an array; its arrays are: "
            f"{', '.join(_array_names(arr)) or 'none'}."
        )
    return arr


def _store_name(arr, given=None):
    """How to name a Zarr array's store in messages: the path the user gave, or the store's."""
    if given is not None:
        return os.fspath(given)
    return str(getattr(arr, "store_path", "") or getattr(arr, "store", "") or "a Zarr store")


def _underlying_zarr(obj):
    """The ``zarr.Array`` under ``obj`` (itself, or under xarray's lazy-indexing wrappers)."""
    for _ in range(8):
        if obj is None or is_zarr(obj):
            return obj
        inner = getattr(obj, "array", None)
        obj = inner if inner is not None else getattr(obj, "_array", None)
    return None


def _chunk_message(arr, key, where, exc):
    """What a failed block read says: store, array, chunk index, rows, and the cause."""
    z = _underlying_zarr(arr)
    shape = getattr(arr, "shape", ())
    slices = [k if isinstance(k, slice) else slice(k, k + 1) for k in (key if isinstance(key, tuple) else (key,))]
    bounds = [s.indices(n)[:2] for s, n in zip(slices, shape)]
    if z is not None:
        index = tuple(int(start // c) for (start, _), c in zip(bounds, z.chunks))
        place = f"chunk {index}"
    else:
        place = "a block"
    if len(bounds) == 2:
        place += f", rows {bounds[0][0]}..{bounds[0][1] - 1}"
    elif bounds:
        place += ", region [" + ", ".join(f"{a}:{b}" for a, b in bounds) + "]"
    name = getattr(z, "path", "") or ""
    inside = f" (array {name!r})" if name else ""
    return (
        f"Could not read {place} of the Zarr store {where!r}{inside}: "
        f"{type(exc).__name__}: {exc}. The chunk is corrupt, truncated or unreachable; "
        f"restore the store (or rewrite that chunk) from the original data."
    )


def read_block(arr, key, asarray=True, lock=None, *, where):
    """dask's block getter for a Zarr array, naming the store and chunk when a read fails.

    Parameters
    ----------
    arr : zarr.Array, or xarray's lazily indexed wrapper of one
    key : tuple of slice
        The block's region (one Zarr chunk).
    asarray, lock
        As for :func:`dask.array.core.getter`.
    where : str
        The store as the user named it.

    Raises
    ------
    StoreReadError
        Any error of the read (decompression, a truncated file, a network failure),
        with the store, array, chunk index and row range; the original is its cause.
    """
    from dask.array.core import getter

    from dask_em.exceptions import StoreReadError

    try:
        return getter(arr, key, asarray=asarray, lock=lock)
    except Exception as exc:
        raise StoreReadError(_chunk_message(arr, key, where, exc)) from exc


#: Zarr stores whose keys can be listed cheaply (no object-store requests).
_LISTABLE_STORES = ("LocalStore", "MemoryStore", "ZipStore", "DirectoryStore", "NestedDirectoryStore")


def _cheap_to_list(arr):
    store = getattr(arr, "store", None)
    name = type(store).__name__
    if name in _LISTABLE_STORES:
        return True
    fs = getattr(store, "fs", None)
    protocol = getattr(fs, "protocol", None)
    protocol = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    return name == "FsspecStore" and any(p in ("file", "local", "memory") for p in protocol)


def warn_missing_chunks(arr, where=None):
    """Log a warning when a Zarr array on a local or in-memory store lacks chunks.

    Zarr reads a missing chunk as the array's fill value, on purpose: stores written
    with ``write_empty_chunks=False`` (zarr-python 3's default) skip chunks that
    hold only the fill value. A store that lost chunk files reads the same way, so
    the count is logged. Stores on object storage are not listed (too costly).

    Returns
    -------
    int or None
        Missing chunks, or None when the store was not listed.
    """
    if not _cheap_to_list(arr):
        return None
    try:
        missing = int(arr.nchunks) - int(arr.nchunks_initialized)
    except Exception:  # listing is a courtesy; the read will say what is wrong
        return None
    if missing > 0:
        fill = getattr(arr.fill_value, "item", lambda: arr.fill_value)()  # 0.0, not np.float64(0.0)
        logger.warning(
            "the Zarr array %r lacks %d of its %d chunks; Zarr reads a missing chunk as the fill "
            "value (%r). That is expected for chunks that held only the fill value (stores "
            "written with write_empty_chunks=False), otherwise the store is incomplete.",
            _store_name(arr, where), missing, int(arr.nchunks), fill,
        )
    return missing


def warn_missing_chunks_in(where, names):
    """:func:`warn_missing_chunks` for the arrays ``names`` of the Zarr group at ``where``
    (a store read through xarray)."""
    import zarr

    if "://" in where and not where.startswith(("file://", "memory://")):
        return  # listing an object store is not cheap
    try:
        group = zarr.open_group(where, mode="r")
        arrays = [group[name] for name in names]
    except Exception:  # not a plain group (xarray opened it): nothing to count
        return
    for name, arr in zip(names, arrays):
        warn_missing_chunks(arr, f"{where}/{name}")


def zarr_to_dask(arr, where=None):
    """A Zarr array as a dask array of its chunks, whose reads name the store on failure.

    Parameters
    ----------
    arr : zarr.Array
    where : str or os.PathLike, optional
        The store as the user named it (path or URL), for messages.

    Returns
    -------
    dask.array.Array
        Chunked like ``arr``; each block read goes through :func:`read_block`. Logs
        a warning when the store lacks chunks (:func:`warn_missing_chunks`).
    """
    import functools

    import dask.array as da
    from dask.base import tokenize

    where = _store_name(arr, where)
    warn_missing_chunks(arr, where)
    getitem = functools.partial(read_block, where=where)
    name = "from-zarr-" + tokenize(arr, arr.chunks, where)
    return da.from_array(arr, chunks=arr.chunks, name=name, getitem=getitem)


def replace_path(tmp, target):
    """Move the finished ``tmp`` (file or directory) to ``target``, replacing it.

    An existing ``target`` is moved aside first and removed only after the new
    output is in place, so a failure never leaves a half-written ``target``.
    """
    tmp, target = os.fspath(tmp), os.fspath(target)
    if os.path.isdir(target) and not os.path.islink(target):
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def temporary_sibling(target):
    """A fresh path next to the local path ``target`` (same file system, so renaming is atomic)."""
    return resolve(target).sibling().path


def _memory_with_cluster(loc):
    """Whether ``loc`` is a ``memory://`` URL while a distributed client is the active
    scheduler (each worker process has its own memory file system)."""
    from dask_em.engine.passes import active_client

    protocol = loc.fs.protocol if not loc.is_local else ()
    protocol = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    return "memory" in protocol and active_client() is not None


def _discard(tmp):
    """Delete a partly written temporary store (nothing of it is visible at the target)."""
    if tmp.is_local:
        shutil.rmtree(tmp.path, ignore_errors=True)
        return
    try:
        tmp.fs.rm(tmp.path, recursive=True)
    except Exception:  # nothing was written there yet
        pass


def _write_store(result, url, *, name, fill_value, attrs):
    import dask.array as da
    import numpy as np

    if isinstance(result, np.ndarray):
        result = da.from_array(result)
    if isinstance(result, da.Array):
        import zarr

        chunks = tuple(c[0] if c else 1 for c in result.chunks)
        if name is None:
            arr = zarr.open_array(url, mode="w", shape=result.shape, dtype=result.dtype,
                                  chunks=chunks, fill_value=fill_value)
        else:
            group = zarr.open_group(url, mode="w")
            arr = group.create_array(name, shape=result.shape, dtype=result.dtype, chunks=chunks,
                                     fill_value=fill_value)
        if attrs:
            arr.attrs.update(attrs)
        # dask blocks must line up with the Zarr chunk grid (a no-op when they do)
        da.to_zarr(result.rechunk(arr.chunks), arr, compute=True)
    else:
        ds = result
        if not hasattr(result, "data_vars"):  # a DataArray
            ds = result.to_dataset(name=name or result.name or "result")
        if attrs:
            ds = ds.assign_attrs(attrs)
        ds.to_zarr(url, mode="w")


def write_zarr(result, target, *, name=None, fill_value=None, attrs=None):
    """Write a lazy result to a Zarr store chunk by chunk; replace ``target`` only when complete.

    Parameters
    ----------
    result : dask.array.Array, numpy.ndarray, xarray.DataArray or xarray.Dataset
        Computed block by block on the active scheduler; never loaded whole.
    target : str or os.PathLike
        Path or URL of the output store (``labels.zarr``, ``file:///...``,
        ``s3://bucket/labels.zarr``, ``memory://...``); checked before anything is
        computed (:func:`~dask_em.io.locations.check_output`). A local store is
        written to a temporary sibling and renamed into place; on a remote file
        system (no atomic rename) it is written under a temporary prefix and copied
        into place with its metadata last (:func:`~dask_em.io.locations.commit_store`).
        An existing Zarr store there is replaced; any other existing file or folder
        is an error.
    name : str, optional
        For a dask array: the array's name inside a new group (``"labels"``); without
        it the store is the array itself. xarray objects are written as a dataset
        with their coordinates (a DataArray becomes the variable ``name``).
    fill_value : scalar, optional
        Zarr ``fill_value`` of a dask array written here (e.g. ``-1`` for missing labels).
    attrs : dict, optional
        Attributes stored with the array (or dataset).

    Returns
    -------
    str
        ``target``.

    Raises
    ------
    ValueError
        ``target`` cannot be written (missing folder or bucket, a file or a
        non-Zarr folder there, ``memory://`` with a distributed client), before
        any work.
    """
    loc = check_output(target, "zarr", "output store")
    if _memory_with_cluster(loc):
        raise ValueError(
            f"Cannot write the output store to {loc.given!r}: a distributed client is active and "
            f"memory:// is private to each process, so its workers would write into their own "
            f"memory; write to a path or an object-store URL instead."
        )
    tmp = loc.sibling()
    try:
        _write_store(result, tmp.url(), name=name, fill_value=fill_value, attrs=attrs)
        if loc.is_local:
            replace_path(tmp.path, loc.path)
    except BaseException:
        _discard(tmp)
        raise
    if not loc.is_local:
        commit_store(tmp, loc)  # on failure it keeps the complete copy and says where
    logger.info("wrote %s", loc.given)
    return os.fspath(target)
