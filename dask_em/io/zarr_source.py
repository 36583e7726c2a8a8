"""Zarr in and out: open an array (path, URL, ``zarr.Array``, or an array inside a
group), and write a lazy result to a store chunk by chunk, atomically.

Works with Zarr format 2 and 3 stores (zarr-python 3 reads both). Nothing here
loads a whole array: readers return ``zarr.Array`` objects that dask reads lazily.
"""

import logging
import os
import shutil
import uuid

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
    """A fresh path next to ``target`` (same file system, so renaming is atomic)."""
    target = os.path.abspath(os.fspath(target))
    head, tail = os.path.split(target)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


def write_zarr(result, target, *, name=None, fill_value=None, attrs=None):
    """Write a lazy result to a Zarr store chunk by chunk; replace ``target`` atomically.

    Parameters
    ----------
    result : dask.array.Array, xarray.DataArray or xarray.Dataset
        Computed block by block on the active scheduler; never loaded whole.
    target : str or os.PathLike
        Local path of the output store (written to a temporary sibling first).
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
    """
    import dask.array as da

    tmp = temporary_sibling(target)
    try:
        if isinstance(result, da.Array):
            import zarr

            if name is None:
                store = zarr.open_array(
                    tmp, mode="w", shape=result.shape, dtype=result.dtype,
                    chunks=tuple(c[0] if c else 1 for c in result.chunks), fill_value=fill_value,
                )
                arr = store
            else:
                group = zarr.open_group(tmp, mode="w")
                arr = group.create_array(
                    name, shape=result.shape, dtype=result.dtype,
                    chunks=tuple(c[0] if c else 1 for c in result.chunks), fill_value=fill_value,
                )
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
            ds.to_zarr(tmp, mode="w")
        replace_path(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s", os.fspath(target))
    return os.fspath(target)
