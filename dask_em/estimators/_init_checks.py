"""Checks of user-given starting parameters, shared by the mixture estimators."""

import numpy as np


def check_weights_init(weights_init, K):
    """``weights_init`` must be (K,), in [0, 1] and sum to 1 (scikit-learn's messages)."""
    w = np.asarray(weights_init, dtype=np.float64)
    if w.shape != (K,):
        raise ValueError(f"The parameter 'weights_init' should have the shape ({K},), but got {w.shape}.")
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
        raise ValueError(
            f"The parameter 'weights_init' should be in the range [0, 1], but got "
            f"max value {w.max():.5f}, min value {w.min():.5f}."
        )
    if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(
            f"The parameter 'weights_init' should be normalized, but got sum(weights) = {w.sum():.5f}."
        )
    return w


def check_array_init(name, value, shape):
    """A given starting array must have ``shape`` and finite values; returned as float64."""
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape:
        raise ValueError(f"The parameter {name!r} should have the shape {shape}, but got {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"The parameter {name!r} contains NaN or infinite values.")
    return m
