"""The file format of saved models and checkpoints: plain, documented, never pickle.

This module knows the format, not the estimators: saving and loading a model is
:mod:`dask_em.estimators._saving`, which builds on the pieces here.

A file is a ZIP archive in NumPy's ``.npz`` layout (``numpy.load`` opens it):

``metadata.json``
    UTF-8 JSON object with ``format`` (``"dask-em-model"`` or
    ``"dask-em-checkpoint"``), ``format_version`` (an int, :data:`FORMAT_VERSION`),
    ``dask_em_version``, ``estimator`` (class name, e.g. ``"GaussianMixture"``),
    ``params`` (the constructor parameters; an array-valued one is written as
    ``{"__array__": "<entry>"}``), and per format:

    - model: ``state`` ``{"weights": entry, "params": {name: entry}}`` and
      ``attributes`` (fitted values: ``n_iter_``, ``converged_``,
      ``lower_bound_``, ``lower_bounds_``, ``history_``, ``n_features_in_``, ...;
      an array-valued one, e.g. ``n_categories_``, as ``{"__array__": "<entry>"}``);
    - checkpoint: ``fingerprint`` (shape, dtype and row chunks of the data) and
      ``starts``: one object per EM start with ``state``, ``n_iter``,
      ``converged``, ``lower_bound``, ``history``.

    Non-finite floats are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``.
``<entry>.npy``
    One array per entry named in the metadata, in ``.npy`` format, read with
    ``allow_pickle=False``.

Files are written to a temporary sibling and renamed (at a URL such as
``s3://bucket/model.npz``: in one request, which an object store shows whole or
not at all), so an interrupted write never replaces a good file with a broken one.
"""

import io
import json
import logging
import math
import os
import zipfile

import numpy as np

from dask_em._version import __version__
from dask_em.exceptions import ModelFileError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FORMAT = "dask-em-model"
CHECKPOINT_FORMAT = "dask-em-checkpoint"


# ------------------------------------------------------------------ JSON values
def _encode(value):
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _decode(value, float_keys=("lower_bound", "lower_bound_", "mean_loglik", "change")):
    """Inverse of :func:`_encode` for the float fields that may be non-finite."""
    if isinstance(value, dict):
        return {
            k: (_NONFINITE[v] if k in float_keys and isinstance(v, str) else _decode(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_NONFINITE.get(v, v) if isinstance(v, str) else _decode(v) for v in value]
    return value


# ------------------------------------------------------------------ archives
def write_archive(path, metadata, arrays):
    """Write ``metadata.json`` and ``<name>.npy`` entries to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        A local path (written to a temporary sibling, then renamed) or a URL such
        as ``s3://bucket/model.npz`` (written in one request; see
        :func:`dask_em.io.locations.write_bytes`).
    metadata : dict
        JSON-able, non-finite floats allowed (written as strings).
    arrays : dict of str to ndarray
        Written as ``<name>.npy``, without pickle.
    """
    from dask_em.io.locations import write_bytes

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps(_encode(metadata), indent=1, allow_nan=False))
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())
    write_bytes(path, buffer.getvalue())


def read_archive(path, expected_format):
    """Metadata and arrays of a dask-em file of the format ``expected_format``.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or a URL (``s3://...``, ``file://...``).
    expected_format : str

    Returns
    -------
    metadata : dict
    arrays : dict of str to ndarray

    Raises
    ------
    ModelFileError
        No file, not a readable ZIP, not a dask-em file, another format or format version.
    """
    from dask_em.io.locations import read_bytes

    where = os.fspath(path)
    try:
        content = read_bytes(where)
    except (FileNotFoundError, IsADirectoryError):
        raise ModelFileError(f"No dask-em file at {where!r}; check the path.") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"Could not read {where!r} ({type(exc).__name__}: {exc}).") from exc
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            metadata = json.loads(zf.read("metadata.json").decode("utf-8"))
            arrays = {}
            for name in zf.namelist():
                if name.endswith(".npy"):
                    with zf.open(name) as fh:
                        arrays[name[:-4]] = np.lib.format.read_array(io.BytesIO(fh.read()), allow_pickle=False)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise ModelFileError(
            f"{where!r} is not a readable dask-em file ({type(exc).__name__}: {exc}); it may be "
            f"corrupt or not written by dask-em's save(). Save the model again."
        ) from exc
    if not isinstance(metadata, dict) or metadata.get("format") not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise ModelFileError(f"{where!r} is not a dask-em model or checkpoint (no dask-em format tag).")
    if metadata["format"] != expected_format:
        raise ModelFileError(
            f"{where!r} is a {metadata['format']!r} file, not a {expected_format!r} file."
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{where!r} was written by dask-em {metadata.get('dask_em_version', '?')} in file format "
            f"version {version!r}; this dask-em ({__version__}) reads format version "
            f"{FORMAT_VERSION}. Load it with the dask-em version that wrote it and re-fit or re-save."
        )
    if metadata.get("dask_em_version") != __version__:
        logger.info("%s was written by dask-em %s (this is %s)", where, metadata.get("dask_em_version"), __version__)
    return _decode(metadata), arrays


# ------------------------------------------------------------------ shared pieces
def header(file_format, estimator_name):
    """The metadata fields every file starts with: format, versions, estimator class name."""
    return {
        "format": file_format,
        "format_version": FORMAT_VERSION,
        "dask_em_version": __version__,
        "estimator": estimator_name,
    }


def encode_params(estimator, arrays, prefix="params"):
    """JSON-able constructor parameters of ``estimator``; array values go to ``arrays``.

    Parameters
    ----------
    estimator : scikit-learn style estimator
        Read through ``get_params(deep=False)`` only.
    arrays : dict
        Receives ``"<prefix>/<name>"``: ndarray for every array-valued parameter,
        which the result names as ``{"__array__": "<prefix>/<name>"}``.
    prefix : str

    Returns
    -------
    dict
    """
    out = {}
    for key, value in estimator.get_params(deep=False).items():
        if isinstance(value, (np.random.RandomState, np.random.Generator)):
            logger.warning("random_state %r is not saved (only int or None are); saved as None", value)
            value = None
        if isinstance(value, (np.ndarray, list, tuple)) and key != "random_state":
            value = put_array(arrays, f"{prefix}/{key}", value)
        out[key] = value
    return out


def put_array(arrays, entry, value):
    """Store ``value`` as the entry ``entry`` of ``arrays``; return its reference."""
    arrays[entry] = np.asarray(value)
    return {"__array__": entry}


def decode_params(params, arrays, where):
    """``params`` with every ``{"__array__": entry}`` replaced by that array.

    Raises
    ------
    ModelFileError
        An entry named in the metadata is missing from the file ``where``.
    """
    return {
        k: get_array(arrays, v["__array__"], where) if isinstance(v, dict) and "__array__" in v else v
        for k, v in params.items()
    }


def get_array(arrays, entry, where):
    """The array ``entry`` of a file read by :func:`read_archive`, or :class:`ModelFileError`."""
    try:
        return arrays[entry]
    except (KeyError, TypeError):
        raise ModelFileError(f"{where!r} is corrupt: the array {entry!r} named in its metadata is missing.") from None


def write_state(state, arrays, prefix):
    """Put a :class:`~dask_em.engine.MixtureState` into ``arrays``; return its metadata.

    Returns
    -------
    dict
        ``{"weights": entry, "params": {name: entry}}``.
    """
    arrays[f"{prefix}/weights"] = np.asarray(state.weights)
    names = {}
    for key, value in state.params.items():
        arrays[f"{prefix}/params/{key}"] = np.asarray(value)
        names[key] = f"{prefix}/params/{key}"
    return {"weights": f"{prefix}/weights", "params": names}


def read_state(spec, arrays, where):
    """The :class:`~dask_em.engine.MixtureState` that :func:`write_state` described by ``spec``.

    Only the layout is checked here; what the values must be is the reader's business.
    """
    from dask_em.engine import MixtureState

    try:
        return MixtureState(
            weights=get_array(arrays, spec["weights"], where),
            params={k: get_array(arrays, v, where) for k, v in spec["params"].items()},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{where!r} is corrupt: its parameter list is malformed ({exc}).") from None


# ------------------------------------------------------------------ checkpoints
def write_checkpoint(path, estimator, fingerprint, results):
    """Save every EM start (state, iteration count, history) after an iteration.

    Parameters
    ----------
    path : str or os.PathLike
    estimator : scikit-learn style estimator
        Its class name and ``get_params()`` identify the fit.
    fingerprint : dict
        JSON-able description of the data (shape, dtype, row chunks).
    results : sequence of :class:`~dask_em.engine.EMResult`
        One per EM start.
    """
    arrays = {}
    starts = [
        {
            "state": write_state(res.state, arrays, f"start{i}"),
            "n_iter": res.n_iter,
            "converged": bool(res.converged),
            "lower_bound": res.lower_bound,
            "history": res.history,
        }
        for i, res in enumerate(results)
    ]
    metadata = {
        **header(CHECKPOINT_FORMAT, type(estimator).__name__),
        "params": encode_params(estimator, {}),
        "fingerprint": fingerprint,
        "starts": starts,
    }
    write_archive(path, metadata, arrays)


#: Settings that may change between an interrupted fit and its resumption.
RESUMABLE_CHANGES = ("max_iter", "verbose", "warm_start")


def read_checkpoint(path, estimator, fingerprint):
    """EM results saved in ``path`` for this estimator and data, or ``None`` if no file.

    Parameters
    ----------
    path, estimator, fingerprint
        As for :func:`write_checkpoint`; ``estimator`` and ``fingerprint`` must
        match the file's (only :data:`RESUMABLE_CHANGES` may differ).

    Returns
    -------
    list of :class:`~dask_em.engine.EMResult` or None

    Raises
    ------
    ModelFileError
        The file is unreadable, or belongs to another fit (other settings or data).
    """
    from dask_em.engine import EMResult

    from dask_em.io.locations import exists

    where = os.fspath(path)
    if not exists(where):
        return None
    metadata, arrays = read_archive(where, CHECKPOINT_FORMAT)
    mine = _encode(encode_params(estimator, {}))
    theirs = metadata.get("params", {})
    differ = sorted(k for k in set(mine) | set(theirs) if k not in RESUMABLE_CHANGES and mine.get(k) != theirs.get(k))
    if metadata.get("estimator") != type(estimator).__name__:
        differ.insert(0, "estimator")
    if _encode(fingerprint) != metadata.get("fingerprint"):
        differ.append("data (shape, dtype or chunks)")
    if differ:
        raise ModelFileError(
            f"The checkpoint {where!r} belongs to a different fit (differs in: {', '.join(differ)}); "
            f"delete it to start afresh, or use another checkpoint path."
        )
    try:
        return [
            EMResult(
                state=read_state(s["state"], arrays, where),
                converged=bool(s["converged"]),
                n_iter=int(s["n_iter"]),
                lower_bound=float(s["lower_bound"]),
                history=list(s["history"]),
            )
            for s in metadata["starts"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"The checkpoint {where!r} is corrupt ({type(exc).__name__}: {exc}).") from exc
