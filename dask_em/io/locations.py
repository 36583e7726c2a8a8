"""Where outputs go: local paths and URLs (``s3://``, ``gs://``, ``file://``, ``memory://``).

Every output of dask-em (saved models, checkpoints, Zarr stores of labels) is
resolved here, checked before any pass over the data (:func:`check_output`), and
written so that a reader never sees a half-written result:

- a local path (or a ``file://`` URL) is written to a temporary sibling and
  renamed into place (atomic on one file system);
- a single file at a URL (a model, a checkpoint) is written in one request, which
  object stores make visible whole or not at all;
- a Zarr store at a URL is written under a temporary prefix next to the target
  and then copied into place with its Zarr metadata last
  (:func:`commit_store`): object stores have no rename.

URLs are opened with fsspec, so credentials and endpoints come from the usual
places (environment variables such as ``AWS_ENDPOINT_URL``, ``~/.aws``, fsspec's
configuration), as for inputs.
"""

import logging
import os
import posixpath
import uuid
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Names of the keys that make a Zarr store (format 2 or 3) readable.
ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


def is_url(target):
    """Whether ``target`` is a URL (``protocol://...``) rather than a local path."""
    return isinstance(target, str) and "://" in target


@dataclass(frozen=True)
class Location:
    """A resolved output location.

    Attributes
    ----------
    given : str
        The path or URL as the user gave it (for messages).
    path : str
        An absolute local path, or the file system's path (no protocol) for a URL.
    fs : fsspec.AbstractFileSystem or None
        None for a local path (and ``file://`` URLs, which are local paths).
    """

    given: str
    path: str
    fs: object = None

    @property
    def is_local(self):
        return self.fs is None

    def url(self, path=None):
        """``path`` (default: this location's) as a URL of this file system, or a local path."""
        path = self.path if path is None else path
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def sibling(self):
        """A fresh hidden location next to this one, for writing before the result is complete."""
        head, tail = posixpath.split(self.path.rstrip("/")) if not self.is_local else os.path.split(self.path)
        name = f".{tail}.tmp-{uuid.uuid4().hex[:8]}"
        return Location(self.given, (os.path.join if self.is_local else posixpath.join)(head, name), self.fs)


def resolve(target):
    """The :class:`Location` of a path or URL.

    Raises
    ------
    ValueError
        The URL's protocol is unknown, or its library (``s3fs``, ``gcsfs``, ...) is
        not installed; the message names it.
    """
    given = os.fspath(target)
    if not is_url(given):
        return Location(given, os.path.abspath(given))
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(given)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"Cannot write to {given!r}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        return Location(given, os.path.abspath(path))
    return Location(given, path, fs)


def _local_problem(loc, kind, what):
    parent = os.path.dirname(loc.path)
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            return f"{parent!r} is a file, not a folder; choose another path for the {what}"
        return f"the folder {parent!r} does not exist; create it first (mkdir -p {parent}) or choose another path"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent!r} is not writable; choose another path"
    if kind == "file" and os.path.isdir(loc.path):
        return (f"it is an existing folder; give a file path instead, e.g. "
                f"{os.path.join(loc.given, 'model.npz')!r}")
    if kind == "zarr":
        if os.path.exists(loc.path) and not os.path.isdir(loc.path):
            return "it is an existing file, not a Zarr store; remove it or choose another path"
        if os.path.isdir(loc.path) and os.listdir(loc.path) and not any(
            os.path.exists(os.path.join(loc.path, m)) for m in ZARR_METADATA
        ):
            return ("it is an existing folder that is not a Zarr store, and dask-em replaces only "
                    "Zarr stores; choose a new path such as "
                    f"{os.path.join(loc.given, 'labels.zarr')!r}")
    return None


def _remote_problem(loc, kind, what):
    fs = loc.fs
    fs.invalidate_cache()
    if fs.root_marker == "" and "/" in loc.path.strip("/"):  # an object store: the bucket must exist
        bucket = loc.path.strip("/").split("/")[0]
        if not fs.exists(bucket):
            return f"the bucket {bucket!r} does not exist or is not accessible; create it or check the credentials"
    if kind == "file" and fs.isdir(loc.path):
        return "it is an existing folder (prefix); give the URL of a file, e.g. ending in /model.npz"
    if kind == "zarr":
        if fs.isfile(loc.path):
            return "it is an existing file, not a Zarr store; remove it or choose another URL"
        if fs.isdir(loc.path) and not any(fs.exists(posixpath.join(loc.path, m)) for m in ZARR_METADATA):
            return "it is an existing folder (prefix) that is not a Zarr store; choose a new URL"
    return None


def check_output(target, kind="file", what="output"):
    """Check that ``target`` can be written, before any work is done.

    Parameters
    ----------
    target : str or os.PathLike
        Local path or URL, as the user gave it.
    kind : {"file", "zarr"}
        A single file (model, checkpoint: an existing folder there is an error) or
        a Zarr store (an existing file, or a folder that is not a Zarr store, is an
        error; an existing store is replaced).
    what : str
        What the output is, for the message (``"model file"``, ``"checkpoint"``).

    Returns
    -------
    Location

    Raises
    ------
    ValueError
        Naming ``target`` as given, what is wrong and the fix: a missing or
        unwritable folder, a folder where a file goes, a file where a store goes, a
        missing bucket, an unknown protocol.
    """
    loc = resolve(target)
    try:
        problem = (_local_problem if loc.is_local else _remote_problem)(loc, kind, what)
    except OSError as exc:  # a store that cannot be reached: say so now, not after the fit
        problem = f"it cannot be reached ({type(exc).__name__}: {exc})"
    if problem:
        raise ValueError(f"Cannot write the {what} to {loc.given!r}: {problem}.")
    return loc


def exists(target):
    """Whether a file exists at ``target`` (local path or URL)."""
    loc = resolve(target)
    if loc.is_local:
        return os.path.exists(loc.path)
    loc.fs.invalidate_cache()
    return loc.fs.exists(loc.path)


def read_bytes(target):
    """The content of the file at ``target`` (local path or URL).

    Raises
    ------
    FileNotFoundError
    """
    loc = resolve(target)
    if loc.is_local:
        with open(loc.path, "rb") as fh:
            return fh.read()
    loc.fs.invalidate_cache()
    return loc.fs.cat_file(loc.path)


def write_bytes(target, data):
    """Write ``data`` to ``target`` so that a reader sees the old content or the new, whole.

    A local path is written to a temporary sibling and renamed into place; a URL in
    one request (an object store shows an object only once its upload completes).
    """
    loc = resolve(target)
    if not loc.is_local:
        loc.fs.pipe_file(loc.path, data)
        return
    tmp = loc.sibling().path
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, loc.path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _is_metadata(key):
    return posixpath.basename(key) in ZARR_METADATA


def remove_store(fs, path):
    """Delete the Zarr store at ``path`` of ``fs``: its metadata first, so it stops being
    readable at once rather than piece by piece."""
    fs.invalidate_cache()
    keys = fs.find(path)
    meta = sorted((k for k in keys if _is_metadata(k)), key=lambda k: k.count("/"))
    if meta:
        fs.rm(meta)
    rest = [k for k in keys if not _is_metadata(k)]
    if rest:
        fs.rm(rest)


def commit_store(tmp, target):
    """Make the complete Zarr store at ``tmp`` visible at ``target`` (both :class:`Location`
    of the same remote file system), for file systems without an atomic rename.

    An old store at ``target`` is deleted first (its metadata first); then the data
    keys are copied, then the metadata keys, the deepest first and the root last, and
    ``tmp`` is deleted. A reader opening ``target`` meanwhile finds no store, then the
    complete one. If the copy fails, the complete result is kept at ``tmp`` and the
    error says where.
    """
    fs = tmp.fs
    fs.invalidate_cache()
    keys = fs.find(tmp.path)
    data = [k for k in keys if not _is_metadata(k)]
    meta = sorted((k for k in keys if _is_metadata(k)), key=lambda k: -k.count("/"))

    def dest(key):
        return target.path.rstrip("/") + key[len(tmp.path.rstrip("/")):]

    try:
        if fs.exists(target.path):
            remove_store(fs, target.path)
        if data:
            fs.copy(data, [dest(k) for k in data])
        for key in meta:
            fs.copy(key, dest(key))
    except Exception as exc:
        raise OSError(
            f"The result was written completely to {tmp.url()!r} but could not be copied to "
            f"{target.given!r} ({type(exc).__name__}: {exc}); copy it from there or run again."
        ) from exc
    try:
        fs.rm(tmp.path, recursive=True)
    except Exception as exc:  # the result is in place; only the leftover copy remains
        logger.warning("could not delete the temporary copy %s (%s)", tmp.url(), exc)
    fs.invalidate_cache()
