"""Per-row results when some rows are left out (``nan_policy="omit"``).

Rows with a NaN or infinite value get label ``-1`` and NaN probabilities / scores;
the other rows are scored by :func:`~dask_em.engine.estep.score_block` as usual.
"""

import numpy as np

from dask_em.engine.estep import score_block


def score_block_omit(X, payload):
    """As :func:`~dask_em.engine.estep.score_block`, with left-out rows filled.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    payload : tuple (family, MixtureState, what)

    Returns
    -------
    ndarray of shape (n,) or (n, K)
        Labels are ``-1`` for rows with NaN / inf; other outputs hold NaN there.
    """
    mask = np.isfinite(X).all(axis=1)
    if mask.all():
        return score_block(X, payload)
    _, state, what = payload
    K = len(state.weights)
    good = score_block(X[mask], payload)
    if what == "labels":
        out = np.full(X.shape[0], -1, dtype=np.int64)
    else:
        out = np.full((X.shape[0],) + ((K,) if what == "proba" else ()), np.nan)
    out[mask] = good
    return out
