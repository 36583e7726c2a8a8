"""Small NumPy helpers shared by the families and the engine (no dask here)."""

import numpy as np

LOG_2PI = np.log(2.0 * np.pi)


def as_float64(X):
    """Return ``X`` as a C-contiguous float64 array (no copy when it already is)."""
    return np.ascontiguousarray(X, dtype=np.float64)


def dot(a, b):
    """Matrix product of 2-D (or 1-D) arrays that lets other threads run meanwhile.

    Use it for products with a small result and a long inner dimension, such as sums
    over rows, (K, n) x (n, D). numpy's ``matmul`` (``@``) keeps the GIL while BLAS
    runs when the result has fewer than about 500 elements (numpy 2.x), so those
    products run one at a time on dask's threads; ``np.dot`` releases the GIL.
    """
    return np.dot(a, b)
