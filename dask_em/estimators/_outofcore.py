"""What the estimators add for out-of-core fits: the NaN policy, the persist
policy, and checkpoints (save after every iteration, resume on the next run).

Used by :class:`~dask_em.estimators._base.BaseMixture`; every estimator inherits it.
"""

import hashlib
import logging

import numpy as np

from dask_em.persistence import read_checkpoint, write_checkpoint

logger = logging.getLogger("dask_em")

NAN_POLICIES = ("raise", "omit")
PERSIST_OPTIONS = ("auto", True, False)
#: ``persist="auto"`` keeps the data in memory when they take at most this share of it.
PERSIST_FRACTION = 0.5


def resolve_nan_policy(nan_policy, source):
    """``"omit"`` or ``"raise"``; ``None`` means omit for xarray input, raise otherwise."""
    if nan_policy is None:
        return "omit" if source.layout is not None else "raise"
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES} or None. Got {nan_policy!r} instead.")
    return nan_policy


def _gib(n):
    return f"{n / 2**30:.3g} GiB"


def available_memory():
    """Memory the data could be kept in, and where.

    With a distributed client: the sum over workers of their memory limit minus the
    memory their processes already use (libraries, buffers). Without one: free RAM.

    Returns
    -------
    bytes : int
    where : str
        ``"cluster"`` (a distributed client is active) or ``"local"``.
    """
    import psutil

    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        total = 0
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            limit = w.get("memory_limit") or psutil.virtual_memory().total
            total += max(0, limit - w.get("metrics", {}).get("memory", 0))
        return int(total), "cluster"
    return int(psutil.virtual_memory().available), "local"


def decide_persist(X, persist):
    """Whether to keep ``X`` in (cluster) memory between iterations; logs the choice.

    Parameters
    ----------
    X : dask.array.Array
    persist : {"auto", True, False}
        ``"auto"`` persists when ``X.nbytes`` is at most :data:`PERSIST_FRACTION` of
        :func:`available_memory` (the workers' memory limits less what their
        processes already use, or the free RAM without a cluster).
    """
    if not (isinstance(persist, (bool, np.bool_)) or (isinstance(persist, str) and persist == "auto")):
        raise ValueError(f"persist must be 'auto', True or False. Got {persist!r} instead.")
    memory, where = available_memory()
    if persist == "auto":
        persist = X.nbytes <= PERSIST_FRACTION * memory
        reason = f"{_gib(X.nbytes)} of data, {_gib(memory)} of {where} memory free"
    else:
        reason = f"persist={persist}"
    if persist:
        logger.info("keeping the data in %s memory between iterations (%s)", where, reason)
    else:
        logger.info("streaming the data from its source every iteration (%s)", reason)
    return bool(persist)


def fingerprint(X):
    """What must match for a checkpoint to be resumed: shape, dtype, row chunks."""
    chunks = hashlib.sha256(np.asarray(X.chunks[0], dtype=np.int64).tobytes()).hexdigest()[:16]
    return {"shape": list(X.shape), "dtype": str(X.dtype), "row_chunks": chunks}


class Checkpointer:
    """Saves the EM results to ``path`` after every iteration; reads them back to resume."""

    def __init__(self, path, estimator, X):
        self.path, self.estimator, self.fingerprint = path, estimator, fingerprint(X)

    def resume(self):
        """Saved results (list of EMResult) or None; logs where the fit resumes."""
        results = read_checkpoint(self.path, self.estimator, self.fingerprint)
        if results is not None:
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
