"""Saving and loading fitted estimators, in the file format of :mod:`dask_em.persistence`.

An estimator takes part through three hooks: ``_get_state()`` and
``_set_state(state)`` (its parameters as a :class:`~dask_em.engine.MixtureState`),
and ``_saved_attributes`` (the other fitted attributes to keep). When it also has
``_family()``, the family's ``check_params`` validates the parameters read back.
Any class in :data:`dask_em.estimators.__all__` with ``_set_state`` can be loaded.
"""

import os

import numpy as np

from dask_em.exceptions import ModelFileError
from dask_em.families._checks import check_mixture_weights
from dask_em.io.locations import check_output
from dask_em.persistence import (
    MODEL_FORMAT,
    decode_params,
    encode_params,
    header,
    put_array,
    read_archive,
    read_state,
    write_archive,
    write_state,
)

#: Constructor parameters that give the number of components, by estimator.
_COMPONENT_PARAMS = ("n_components", "n_clusters")
#: How far the saved mixing weights may sum from 1.
_WEIGHTS_ATOL = 1e-6


def save_model(estimator, path):
    """Write a fitted estimator to ``path``.

    Parameters
    ----------
    estimator : estimator with ``_get_state`` and ``_saved_attributes``
        Fitted; the caller checks that.
    path : str or os.PathLike
        A local path or a URL (``s3://bucket/model.npz``, ``file://...``); its folder
        (or bucket) must exist.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        ``path`` cannot be written (a missing folder, an existing folder there),
        naming ``path``.
    """
    check_output(path, "file", "model file")
    arrays = {}
    attributes = {}
    for name in estimator._saved_attributes:
        if hasattr(estimator, name):
            value = getattr(estimator, name)
            if isinstance(value, np.ndarray):
                if value.dtype == object:  # feature names: saved as text, never pickled
                    value = value.astype(str)
                value = put_array(arrays, f"attributes/{name}", value)
            attributes[name] = value
    metadata = {
        **header(MODEL_FORMAT, type(estimator).__name__),
        "params": encode_params(estimator, arrays),
        "state": write_state(estimator._get_state(), arrays, "state"),
        "attributes": attributes,
    }
    write_archive(path, metadata, arrays)
    return os.fspath(path)


def load(path):
    """Load a model written by ``model.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or a URL (``s3://bucket/model.npz``, ``file://...``).

    Returns
    -------
    estimator
        A fitted estimator of the saved class, with its saved settings.

    Raises
    ------
    ModelFileError
        Missing, corrupt, not a dask-em model, another format version, or holding
        invalid values (NaN, weights that do not sum to 1, shapes that disagree with
        ``n_components`` or the number of features, precisions that are not
        positive definite, probabilities out of range, ...).
    """
    where = os.fspath(path)
    metadata, arrays = read_archive(where, MODEL_FORMAT)
    cls = estimator_class(metadata.get("estimator"), where)
    try:
        est = cls(**decode_params(metadata["params"], arrays, where))
        for key, value in decode_params(metadata.get("attributes", {}), arrays, where).items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "U":
                value = value.astype(object)  # feature names, as scikit-learn keeps them
            setattr(est, key, value)
        state = read_state(metadata["state"], arrays, where)
        check_state(est, state)
        est._set_state(state)
    except ModelFileError:
        raise
    except ValueError as exc:
        raise ModelFileError(
            f"{where!r} is invalid: {exc}; the file is corrupt or was edited; re-fit and save the model again."
        ) from exc
    except Exception as exc:
        raise ModelFileError(f"{where!r} is corrupt or inconsistent ({type(exc).__name__}: {exc}).") from exc
    return est


def estimator_class(name, where):
    """The class called ``name`` in :data:`dask_em.estimators.__all__` that can be loaded.

    Raises
    ------
    ModelFileError
        No such class, or it has no ``_set_state``.
    """
    import dask_em.estimators as estimators

    loadable = [n for n in estimators.__all__ if hasattr(getattr(estimators, n), "_set_state")]
    if name not in loadable:
        raise ModelFileError(f"{where!r} holds an unknown estimator {name!r}; this dask-em loads {loadable}.")
    return getattr(estimators, name)


def check_state(estimator, state):
    """Raise a ``ValueError`` saying what is wrong unless ``state`` fits ``estimator``.

    Parameters
    ----------
    estimator : estimator
        Built from the file's parameters and attributes (``n_features_in_``).
    state : MixtureState
        ``weights`` must have shape (K,) for the estimator's K, be finite and
        >= 0, and sum to 1; ``params`` are checked by the family's
        ``check_params`` when the estimator names its family.
    """
    weights = np.asarray(state.weights)
    if weights.dtype.kind not in "fiu" or weights.ndim != 1:
        raise ValueError(f"weights_ has the shape {weights.shape} and dtype {weights.dtype}, not a 1-D float array")
    K = weights.shape[0]
    given = estimator.get_params(deep=False)
    for name in _COMPONENT_PARAMS:
        if name in given and given[name] != K:
            raise ValueError(f"{name} is {given[name]!r} but weights_ has {K} entries")
    check_mixture_weights(weights, K, _WEIGHTS_ATOL)
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ValueError(f"n_features_in_ is {n_features!r}, not a positive int")
    family = estimator._family() if hasattr(estimator, "_family") else None
    if family is not None and family.check_params is not None:
        family.check_params(state.params, K, n_features)
