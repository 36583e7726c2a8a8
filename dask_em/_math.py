"""Small NumPy helpers shared by the families and the engine (no dask here)."""

import math

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


class Workspace:
    """Reusable work arrays for one task.

    Slab after slab, an E-step needs the same large temporaries. Fresh ones are
    page-faulted in every time once ``malloc`` hands them back to the OS, which
    ``distributed`` makes it do early (its workers set ``MALLOC_TRIM_THRESHOLD_``):
    that halved the E-step's speed on workers. Reusing them avoids it.
    """

    def __init__(self):
        self._arrays = {}

    def empty(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` with undefined contents, in the memory of
        the last array called ``name`` when it is large enough. Two arrays in use at
        the same time need two names."""
        dtype = np.dtype(dtype)
        size = math.prod(shape)  # not np.prod: it makes an array of the tuple (~5 us a call)
        flat = self._arrays.get(name)
        if flat is None or flat.dtype != dtype or flat.size < size:
            flat = self._arrays[name] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)


def work_array(work, name, shape, dtype):
    """``work.empty(name, shape, dtype)``, or a new array when ``work`` is ``None``."""
    return np.empty(shape, dtype=dtype) if work is None else work.empty(name, shape, dtype)
