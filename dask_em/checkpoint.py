"""Checkpoints of a fit: the EM state saved after every iteration, resumed on the next run.

Used by :func:`dask_em.fitting.fit_models`, so every model has them. The file
format is :mod:`dask_em.persistence`'s.
"""

import hashlib
import logging

import numpy as np

from dask_em.persistence import read_checkpoint, write_checkpoint

logger = logging.getLogger("dask_em")


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
