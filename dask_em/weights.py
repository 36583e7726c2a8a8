"""Sample weights at the data edge: one per row, chunked like the rows of ``X``.

In-memory weights are checked here at once (cheap). Dask weights are checked
inside the passes: the E-step counts negative and non-finite weights
(``n_bad_weight``) and the fit's pass check raises, so no extra pass is made.
"""

import dask.array as da
import numpy as np


def bad_weight_error(n_bad, n_total=None):
    """The error for negative, NaN or infinite sample weights."""
    of = "" if n_total is None else f" (of {n_total})"
    return ValueError(
        f"sample_weight contains {n_bad} negative, NaN or infinite values{of}; sample "
        f"weights must be finite and >= 0 (a weight of 0 drops the row). Fix them, e.g. "
        f"w = np.clip(np.nan_to_num(w), 0, None)."
    )


def as_row_weights(sample_weight, X):
    """Return ``sample_weight`` as a 1-D float dask array chunked like the rows of ``X``.

    Parameters
    ----------
    sample_weight : None, array-like or dask.array.Array of shape (N,)
    X : dask.array.Array of shape (N, D)
        Row-chunked data (from :func:`dask_em.data.as_row_chunked`).

    Returns
    -------
    dask.array.Array of shape (N,) or None

    Raises
    ------
    ValueError
        Wrong shape, non-numeric dtype; for in-memory weights also negative or
        non-finite values, or all weights zero.
    """
    if sample_weight is None:
        return None
    n = X.shape[0]
    if isinstance(sample_weight, da.Array):
        w = sample_weight
    else:
        w = np.asarray(sample_weight)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(
            f"sample_weight should have shape ({n},) (one weight per row of X), got "
            f"shape {w.shape}."
        )
    if not (np.issubdtype(w.dtype, np.number) or w.dtype == bool) or np.issubdtype(w.dtype, np.complexfloating):
        raise ValueError(f"sample_weight must hold real numbers, got dtype {w.dtype}.")
    if isinstance(w, da.Array):
        if any(np.isnan(c) for c in w.chunks[0]):
            raise ValueError(
                "sample_weight has unknown chunk sizes; call "
                "sample_weight = sample_weight.compute_chunk_sizes() first."
            )
        return w.astype(np.float64).rechunk((X.chunks[0],))
    w = w.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(w) | (w < 0)))
    if bad:
        raise bad_weight_error(bad, n)
    if not np.any(w > 0):
        raise ValueError("sample_weight is zero for every row; at least one row needs a positive weight.")
    return da.from_array(w, chunks=(X.chunks[0],))
