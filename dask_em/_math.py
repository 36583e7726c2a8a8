"""Small NumPy helpers shared by the families and the engine (no dask here)."""

import numpy as np

LOG_2PI = np.log(2.0 * np.pi)


def logsumexp(a, axis=1):
    """Numerically stable ``log(sum(exp(a), axis))`` for finite or ``-inf`` entries.

    Parameters
    ----------
    a : ndarray of shape (n, K)
    axis : int

    Returns
    -------
    out : ndarray of shape (n,)
    """
    amax = np.max(a, axis=axis, keepdims=True)
    amax = np.where(np.isfinite(amax), amax, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - amax), axis=axis, keepdims=True))
    out += amax
    return np.squeeze(out, axis=axis)


def as_float64(X):
    """Return ``X`` as a C-contiguous float64 array (no copy when it already is)."""
    return np.ascontiguousarray(X, dtype=np.float64)
