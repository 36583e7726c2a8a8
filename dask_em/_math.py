"""Small NumPy helpers shared by the families and the engine (no dask here)."""

import numpy as np

LOG_2PI = np.log(2.0 * np.pi)


def as_float64(X):
    """Return ``X`` as a C-contiguous float64 array (no copy when it already is)."""
    return np.ascontiguousarray(X, dtype=np.float64)
