"""Per-row results when some rows are left out (``nan_policy="omit"``).

Rows with a NaN or infinite value get label ``-1`` and NaN probabilities / scores;
the other rows are scored by :func:`~dask_em.engine.estep.score_block` as usual,
slab by slab.
"""

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
    return score_block(X, payload, omit=True)
