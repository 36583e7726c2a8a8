"""Support checks shared by the discrete families: errors that name column and value."""

import numpy as np


def raise_if_invalid(X: np.ndarray, bad: np.ndarray, family: str, rule: str) -> None:
    """Raise a ``ValueError`` for the first ``True`` entry of ``bad`` (n, D).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    bad : ndarray of bool, shape (n, D)
        Entries outside the family's support.
    family : str
        Name for the message, e.g. ``"Poisson"``.
    rule : str
        What the values must be, and how to fix them.
    """
    if not bad.any():
        return
    i, j = np.argwhere(bad)[0]
    raise ValueError(
        f"{family} mixture: column {int(j)} of X holds the value {float(X[i, j]):g} "
        f"({int(np.count_nonzero(bad))} invalid values in a block of {X.shape[0]} rows); "
        f"{rule}"
    )


def non_integer(X: np.ndarray) -> np.ndarray:
    """Entries of ``X`` that are not whole numbers."""
    return X != np.floor(X)
