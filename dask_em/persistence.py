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
    - checkpoint: ``params`` with array-valued ones (``means_init``, ...) as
      ``{"__array__": {"sha256": ..., "shape": [...]}}`` (a digest of their
      values, :func:`array_digest`), ``fingerprint`` (the data: shape, dtype,
      row chunks, dask name of the source and of the sample weights; the NaN
      policy and the dask settings that change the result), ``starts``: one
      object per EM start with ``state``, ``n_iter``, ``converged``,
      ``lower_bound``, ``history``, and ``digest``: a SHA-256 of the rest of
      the metadata and of the arrays, so a file edited by hand is refused.

    Non-finite floats are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``.
``<entry>.npy``
    One array per entry named in the metadata, in ``.npy`` format, read with
    ``allow_pickle=False``.

Files are written to a temporary sibling and renamed (at a URL such as
``s3://bucket/model.npz``: in one request, which an object store shows whole or
not at all), so an interrupted write never replaces a good file with a broken one.
"""

import hashlib
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


def write_anderson(acc, arrays, prefix):
    """Put an :class:`~dask_em.engine.anderson.Anderson` acceleration into ``arrays``;
    return its metadata (a resumed fit continues its sequence bit for bit)."""
    out = {
        "depth": int(acc.depth),
        "best": float(acc.best),
        "extrapolated": bool(acc.extrapolated),
        "state": write_state(acc.state, arrays, f"{prefix}/state"),
        "plain": None if acc.plain is None else write_state(acc.plain, arrays, f"{prefix}/plain"),
        "points": None,
    }
    if acc.xs:  # the accepted points and their steps, one row each
        out["points"] = {"xs": f"{prefix}/xs", "gs": f"{prefix}/gs"}
        arrays[f"{prefix}/xs"], arrays[f"{prefix}/gs"] = np.stack(acc.xs), np.stack(acc.gs)
    return out


def read_anderson(spec, arrays, where):
    """The :class:`~dask_em.engine.anderson.Anderson` that :func:`write_anderson` described."""
    from dask_em.engine.anderson import Anderson

    try:
        acc = Anderson(read_state(spec["state"], arrays, where), lower_bound=float(spec["best"]),
                       depth=int(spec["depth"]))
        acc.extrapolated = bool(spec["extrapolated"])
        acc.plain = None if spec["plain"] is None else read_state(spec["plain"], arrays, where)
        if spec["points"] is not None:
            xs, gs = (get_array(arrays, spec["points"][k], where) for k in ("xs", "gs"))
            if xs.ndim != 2 or xs.shape != gs.shape or len(xs) > acc.depth + 1:
                raise ValueError(f"points of shapes {xs.shape} and {gs.shape}")
            acc.xs, acc.gs = list(xs), list(gs)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{where!r} is corrupt: its acceleration state is malformed ({exc}).") from None
    return acc


# ------------------------------------------------------------------ checkpoints
def array_digest(value):
    """What identifies an array-valued setting by value: SHA-256 of its float64 bytes
    (numbers; other dtypes as they are), its shape and dtype kind."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind == "O":
        raise TypeError(f"cannot fingerprint an array of objects ({arr.shape})")
    digest = hashlib.sha256(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes()).hexdigest()
    return {"sha256": digest, "shape": list(arr.shape)}


def params_identity(estimator):
    """Constructor parameters of ``estimator`` as JSON-able values that identify a fit:
    an array-valued one (``means_init``, ...) as :func:`array_digest` of its values."""
    out = {}
    for key, value in estimator.get_params(deep=False).items():
        if isinstance(value, (np.random.RandomState, np.random.Generator)):
            value = None  # not a reproducible identity; saved as None, as in models
        elif isinstance(value, (np.ndarray, list, tuple)) and key != "random_state":
            value = {"__array__": array_digest(value)}
        out[key] = value
    return _encode(out)


def _checksum(metadata, arrays):
    """SHA-256 of a checkpoint's metadata (less ``digest``) and arrays."""
    h = hashlib.sha256()
    body = {k: v for k, v in _encode(metadata).items() if k != "digest"}
    h.update(json.dumps(body, sort_keys=True, allow_nan=False).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def write_checkpoint(path, estimator, fingerprint, results):
    """Save every EM start (state, iteration count, history) after an iteration.

    Parameters
    ----------
    path : str or os.PathLike
    estimator : scikit-learn style estimator
        Its class name and ``get_params()`` identify the fit (array-valued
        parameters by a digest of their values, :func:`params_identity`).
    fingerprint : dict
        JSON-able description of the data and settings of the fit (shape, dtype,
        row chunks, source).
    results : sequence of :class:`~dask_em.engine.EMResult`
        One per EM start.

    Notes
    -----
    The file carries ``digest``, a SHA-256 of its metadata and arrays, so that
    :func:`read_checkpoint` refuses a file edited by hand.
    """
    arrays = {}
    starts = [
        {
            "state": write_state(res.state, arrays, f"start{i}"),
            "n_iter": int(res.n_iter),
            "converged": bool(res.converged),
            "lower_bound": res.lower_bound,
            "history": res.history,
            **({} if res.accelerator is None else
               {"anderson": write_anderson(res.accelerator, arrays, f"start{i}/anderson")}),
        }
        for i, res in enumerate(results)
    ]
    metadata = {
        **header(CHECKPOINT_FORMAT, type(estimator).__name__),
        "params": params_identity(estimator),
        "fingerprint": fingerprint,
        "starts": starts,
    }
    metadata["digest"] = _checksum(metadata, arrays)
    write_archive(path, metadata, arrays)


#: Settings that may change between an interrupted fit and its resumption.
RESUMABLE_CHANGES = ("max_iter", "verbose", "warm_start")


def _differences(mine, theirs, ignore=()):
    """Sorted keys whose values differ between two dicts (missing counts as None)."""
    return sorted(k for k in set(mine) | set(theirs) if k not in ignore and mine.get(k) != theirs.get(k))


def _start_fields(s, where):
    """``n_iter``, ``converged``, ``lower_bound``, ``history`` of a saved start, with their types checked."""
    def bad(what):
        return ModelFileError(f"The checkpoint {where!r} is invalid: {what}; it is corrupt or was edited. "
                              f"Delete it to start afresh.")

    n_iter, converged = s.get("n_iter"), s.get("converged")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise bad(f"n_iter is {n_iter!r}, not an int >= 0")
    if not isinstance(converged, bool):
        raise bad(f"converged is {converged!r}, not true or false")
    lower_bound = s.get("lower_bound")
    if isinstance(lower_bound, bool) or not isinstance(lower_bound, (int, float)):
        raise bad(f"lower_bound is {lower_bound!r}, not a number")
    history = s.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history is not a list of objects")
    return n_iter, converged, float(lower_bound), history


def read_checkpoint(path, estimator, fingerprint):
    """EM results saved in ``path`` for this estimator and data, or ``None`` if no file.

    Parameters
    ----------
    path, estimator, fingerprint
        As for :func:`write_checkpoint`; ``estimator`` and ``fingerprint`` must
        match the file's (only :data:`RESUMABLE_CHANGES` may differ; array-valued
        parameters are compared by value).

    Returns
    -------
    list of :class:`~dask_em.engine.EMResult` or None

    Raises
    ------
    ModelFileError
        The file is unreadable, was edited after it was written (its checksum does
        not match), holds fields of the wrong type, or belongs to another fit (other
        settings, initial parameters or data). The values of the saved parameters
        are the caller's to check (:class:`dask_em.checkpoint.Checkpointer` does).
    """
    from dask_em.engine import EMResult

    from dask_em.io.locations import exists

    where = os.fspath(path)
    if not exists(where):
        return None
    metadata, arrays = read_archive(where, CHECKPOINT_FORMAT)
    if metadata.get("digest") != _checksum(metadata, arrays):
        raise ModelFileError(
            f"The checkpoint {where!r} was modified after dask-em wrote it (its checksum does not match), "
            f"or was written by a dask-em without checksums; it cannot be trusted to resume from. "
            f"Delete it to start afresh."
        )
    differ = _differences(params_identity(estimator), metadata.get("params") or {}, RESUMABLE_CHANGES)
    if metadata.get("estimator") != type(estimator).__name__:
        differ.insert(0, "estimator")
    saved = metadata.get("fingerprint") or {}
    data = _differences(_encode(fingerprint), saved)
    if data:
        differ.append(f"data or settings ({', '.join(data)})")
    if differ:
        raise ModelFileError(
            f"The checkpoint {where!r} belongs to a different fit (differs in: {', '.join(differ)}); "
            f"delete it to start afresh, or use another checkpoint path."
        )
    try:
        results = []
        for s in metadata["starts"]:
            n_iter, converged, lower_bound, history = _start_fields(s, where)
            results.append(
                EMResult(
                    state=read_state(s["state"], arrays, where),
                    converged=converged,
                    n_iter=n_iter,
                    lower_bound=lower_bound,
                    history=history,
                    accelerator=read_anderson(s["anderson"], arrays, where) if "anderson" in s else None,
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"The checkpoint {where!r} is corrupt ({type(exc).__name__}: {exc}).") from exc
    if not results:
        raise ModelFileError(f"The checkpoint {where!r} holds no EM start; delete it to start afresh.")
    return results
