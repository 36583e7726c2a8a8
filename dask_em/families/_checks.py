"""Support checks shared by the discrete families: errors that name column and value."""

import numpy as np


def raise_if_invalid(X: np.ndarray, bad: np.ndarray, family: str, rule: str, *, negative: bool = False) -> None:
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
    negative : bool
        The bad entries are negative values: the message starts as scikit-learn's
        ("Negative values in data passed to ...").
    """
    if not bad.any():
        return
    i, j = np.argwhere(bad)[0]
    head = f"Negative values in data passed to the {family} mixture" if negative else f"{family} mixture"
    raise ValueError(
        f"{head}: column {int(j)} of X holds the value {float(X[i, j]):g} "
        f"({int(np.count_nonzero(bad))} invalid values in a block of {X.shape[0]} rows); "
        f"{rule}"
    )


# --------------------------------------------------------------------------- parameters
def check_keys(params, names):
    """Raise a ``ValueError`` unless ``params`` has exactly the keys ``names``."""
    if sorted(params) != sorted(names):
        raise ValueError(f"the parameters are {sorted(params)}, not {sorted(names)}")


def check_shape(name, value, shape):
    """Raise a ``ValueError`` unless ``value`` is a real-number array of shape ``shape``.

    Parameters
    ----------
    name : str
        The parameter's name, for the message (e.g. ``"means"``).
    value : ndarray
    shape : tuple of int
    """
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise ValueError(f"{name} holds values of dtype {value.dtype}, not real numbers")
    if value.shape != tuple(shape):
        raise ValueError(f"{name} has the shape {value.shape}, not {tuple(shape)}")


def check_values(name, value, bad, rule):
    """Raise a ``ValueError`` naming the first entry of ``value`` flagged in ``bad``.

    Parameters
    ----------
    name : str
        The parameter's name, e.g. ``"means"``.
    value : ndarray
    bad : ndarray of bool, the shape of ``value``
    rule : str
        What the values must be, e.g. ``"must lie in the open interval (0, 1)"``.
    """
    if not np.any(bad):
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name}[{', '.join(map(str, index))}] is {float(value[index]):g} "
        f"({int(np.count_nonzero(bad))} bad values); {name} {rule}"
    )


def check_mixture_weights(weights, n_components, atol=1e-6):
    """Raise a ``ValueError`` unless ``weights`` are K mixing weights: a 1-D real array
    of ``n_components`` finite values >= 0 that sum to 1 (within ``atol``)."""
    weights = np.asarray(weights)
    if weights.dtype.kind not in "fiu" or weights.ndim != 1:
        raise ValueError(f"weights_ has the shape {weights.shape} and dtype {weights.dtype}, not a 1-D float array")
    if weights.shape[0] != n_components:
        raise ValueError(f"n_components is {n_components!r} but weights_ has {weights.shape[0]} entries")
    if np.isnan(weights).any():
        raise ValueError("weights_ holds NaN")
    check_values("weights_", weights, ~(np.isfinite(weights) & (weights >= 0)), "must be finite and >= 0")
    if not abs(weights.sum() - 1.0) <= atol:
        raise ValueError(f"weights_ sums to {weights.sum():.9g}, not 1")
