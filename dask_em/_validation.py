"""Checks of constructor parameters, with scikit-learn-style messages."""

import numbers

import numpy as np

from dask_em.exceptions import NotFittedError


def check_number(owner, name, value, kind, low=None, high=None, low_open=False, high_open=False):
    """Raise a ``ValueError`` naming the parameter unless ``value`` is in range.

    ``kind`` is ``"int"`` or ``"float"`` (a float parameter also takes ints).
    Message: "The 'n_components' parameter of GaussianMixture must be an int in the
    range [1, inf). Got 0 instead."
    """
    types = (numbers.Integral,) if kind == "int" else (numbers.Real,)
    ok = isinstance(value, types) and not isinstance(value, bool)
    if ok:
        ok = not (
            (low is not None and (value < low or (low_open and value == low)))
            or (high is not None and (value > high or (high_open and value == high)))
        )
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        article = "an int" if kind == "int" else "a float"
        raise ValueError(
            f"The {name!r} parameter of {owner} must be {article} in the range "
            f"{left}{lo}, {hi}{right}. Got {value!r} instead."
        )


def check_option(owner, name, value, options):
    """Raise a ``ValueError`` listing ``options`` unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in options)
        raise ValueError(
            f"The {name!r} parameter of {owner} must be one of {{{listed}}}. Got {value!r} instead."
        )


def check_random_state_param(owner, value):
    """``random_state`` must be None, an int, a RandomState or a Generator."""
    if value is None or isinstance(value, (np.random.RandomState, np.random.Generator)):
        return
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return
    raise ValueError(
        f"The 'random_state' parameter of {owner} must be None, a non-negative int, a "
        f"numpy.random.RandomState or a numpy.random.Generator. Got {value!r} instead."
    )


def seed_from(random_state):
    """An integer seed from a ``random_state`` parameter (fresh entropy for None)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int64).max))
    return int(random_state)


def check_is_fitted(estimator, attribute):
    """Raise :class:`NotFittedError` unless ``estimator`` has ``attribute``."""
    if not hasattr(estimator, attribute):
        name = type(estimator).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet. Call 'fit' with appropriate "
            f"arguments before using this estimator."
        )
