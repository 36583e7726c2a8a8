"""Checkpoints of a fit: the EM state saved after every iteration, resumed on the next run.

Used by :func:`dask_em.fitting.fit_models`, so every model has them. The file
format is :mod:`dask_em.persistence`'s.

A checkpoint is resumed only by the same fit: the same estimator class and
settings (array-valued ones such as ``means_init`` compared by value; only
``max_iter``, ``verbose`` and ``warm_start`` may change), the same data (shape,
dtype, row chunks, and the dask name of the input and of the sample weights,
which for NumPy input is a hash of its values and for a Zarr store depends on
its location), NaN policy and dask settings that change the result
(``dask_em.split_every``, ``dask_em.stepwise.*``). Anything else is an error
(:class:`~dask_em.exceptions.ModelFileError`) naming what differs: a checkpoint
holds hours of work, so it is never overwritten by another fit unasked; delete
it, or give another path, to start afresh. A file edited by hand (its checksum
does not match) or holding invalid values (NaN, wrong shapes, an iteration count
that disagrees with its history) is refused too.

Input whose dask name is not reproducible (``da.from_array`` of an object dask
cannot hash, such as an h5py dataset) gets a new name in every session, so its
checkpoint is refused as "differs in: data"; give it a stable name with
``da.from_array(..., name="my-data")``.
"""

import hashlib
import logging
import math

import numpy as np

from dask_em.exceptions import ModelFileError
from dask_em.families._checks import check_mixture_weights
from dask_em.persistence import read_checkpoint, write_checkpoint

logger = logging.getLogger("dask_em")


def fingerprint(prepared, settings=None):
    """What must match for a checkpoint to be resumed: the data and the settings
    beyond the estimator's parameters that change the result.

    Parameters
    ----------
    prepared : dask_em.data.Prepared
    settings : dict, optional
        JSON-able values of the other settings (``dask.config`` keys).

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``row_chunks`` (a hash), ``source`` (the dask name of
        the input as read, before any persist), ``weights`` (that of the sample
        weights, or None), ``nan_policy``, ``settings``.
    """
    X = prepared.source.X
    chunks = hashlib.sha256(np.asarray(X.chunks[0], dtype=np.int64).tobytes()).hexdigest()[:16]
    weights = prepared.weights
    return {
        "shape": list(X.shape),
        "dtype": str(X.dtype),
        "row_chunks": chunks,
        "source": X.name,
        "weights": None if weights is None else weights.name,
        "nan_policy": prepared.nan_policy,
        "settings": dict(settings or {}),
    }


def check_results(results, family, n_components, n_features, n_starts, where):
    """Raise :class:`ModelFileError` unless saved EM results are valid for this fit.

    Parameters
    ----------
    results : list of EMResult
    family : Family
        Its ``check_params`` validates every start's parameters.
    n_components, n_features : int
    n_starts : int
        Most starts the fit has (``n_init``).
    where : str
        The file, for the message.
    """
    def refuse(what):
        return ModelFileError(
            f"The checkpoint {where!r} is invalid: {what}; it is corrupt or was edited. Delete it to start afresh."
        )

    if not 1 <= len(results) <= n_starts:
        raise refuse(f"it holds {len(results)} EM starts, not 1 to {n_starts}")
    for i, res in enumerate(results):
        batch = [h for h in res.history if h.get("kind", "batch") == "batch"]
        if len(batch) != res.n_iter:
            raise refuse(f"start {i} says n_iter={res.n_iter} but its history holds {len(batch)} EM iterations")
        if res.converged and res.n_iter < 1:
            raise refuse(f"start {i} says it converged before any EM iteration")
        if res.n_iter and not (res.lower_bound == batch[-1].get("mean_loglik") or math.isnan(res.lower_bound)):
            raise refuse(
                f"start {i} has lower_bound={res.lower_bound!r} but its last iteration's mean log-likelihood "
                f"is {batch[-1].get('mean_loglik')!r}"
            )
        try:
            check_mixture_weights(res.state.weights, n_components)
            if family.check_params is not None:
                family.check_params(res.state.params, n_components, n_features)
        except ValueError as exc:
            raise refuse(f"start {i}: {exc}") from None


class Checkpointer:
    """Saves the EM results to ``path`` after every iteration; reads them back to resume.

    Parameters
    ----------
    path : str or os.PathLike
    spec : dask_em.fitting.ModelSpec
        The model: its ``identity`` (the estimator, whose class and parameters
        the file must match), family, number of components and starts.
    prepared : dask_em.data.Prepared
        The data (see :func:`fingerprint`).
    settings : dict, optional
        Other settings that change the result (see :func:`fingerprint`).
    """

    def __init__(self, path, spec, prepared, settings=None):
        self.path, self.spec = path, spec
        self.estimator = spec.identity
        self.n_features = prepared.n_features
        self.fingerprint = fingerprint(prepared, settings)

    def resume(self):
        """Saved results (list of EMResult) or None; logs where the fit resumes.

        Raises
        ------
        ModelFileError
            The file belongs to another fit, was edited, or holds invalid values.
        """
        results = read_checkpoint(self.path, self.estimator, self.fingerprint)
        if results is not None:
            spec = self.spec
            check_results(results, spec.family, spec.n_components, self.n_features, max(len(spec.seeds), 1),
                          str(self.path))
            logger.info(
                "resuming from checkpoint %s after iteration %d", self.path, max(r.n_iter for r in results)
            )
        return results

    def __call__(self, iteration, results):
        write_checkpoint(self.path, self.estimator, self.fingerprint, results)
        logger.debug("checkpoint written to %s after iteration %d", self.path, iteration)


def chain_callbacks(*callbacks):
    """One ``callback(iteration, results)`` calling each of ``callbacks`` that is not None."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def callback(iteration, results):
        for c in live:
            c(iteration, results)

    return callback
