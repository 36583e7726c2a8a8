"""Checks of constructor parameters from a constraints table, with scikit-learn's messages.

Each estimator declares ``_parameter_constraints``: for every constructor parameter
a list of accepted forms (:class:`Interval`, :class:`Options`, ``"array-like"``,
``"boolean"``, ``"random_state"``, ``None``). ``fit`` checks the table first,
before it reads any data, and a rejected value gets a message such as
"The 'n_components' parameter of GaussianMixture must be an int in the range
[1, inf). Got 0 instead."
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em.exceptions import NotFittedError


@dataclass(frozen=True)
class Interval:
    """Real numbers (``kind="float"``, ints included) or ints in a range; NaN never.

    ``closed`` is ``"left"``, ``"right"``, ``"both"`` or ``"neither"``; a bound of
    ``None`` is unbounded.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    closed: str = "left"

    def accepts(self, value: Any) -> bool:
        types = (numbers.Integral,) if self.kind == "int" else (numbers.Real,)
        if not isinstance(value, types) or isinstance(value, (bool, np.bool_)):
            return False
        if isinstance(value, numbers.Real) and math.isnan(value):
            return False
        low_ok = self.low is None or value > self.low or (value == self.low and self.closed in ("left", "both"))
        high_ok = self.high is None or value < self.high or (value == self.high and self.closed in ("right", "both"))
        return low_ok and high_ok

    def __str__(self) -> str:
        left = "[" if self.closed in ("left", "both") and self.low is not None else "("
        right = "]" if self.closed in ("right", "both") and self.high is not None else ")"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        article = "an int" if self.kind == "int" else "a float"
        return f"{article} in the range {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings, booleans)."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (np.ndarray, list, dict)):
            return False
        return any(value is v or (type(value) is type(v) and value == v) for v in self.values)

    def __str__(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in self.values) + "}"


def _accepts(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if constraint == "boolean":
        return isinstance(value, (bool, np.bool_))
    if constraint == "array-like":
        return hasattr(value, "__array__") or isinstance(value, (list, tuple))
    if constraint == "random_state":
        return value is None or isinstance(value, (np.random.RandomState, np.random.Generator)) or (
            isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value < 2**32
        )
    if constraint == "callable":
        return callable(value)
    return constraint.accepts(value)


def _describe(constraint) -> str:
    return {
        None: "None",
        "boolean": "an instance of 'bool'",
        "array-like": "an array-like",
        "random_state": "an int in the range [0, 4294967295], an instance of 'numpy.random.RandomState' "
        "or 'numpy.random.Generator'",
        "callable": "a callable",
    }.get(constraint, str(constraint)) if not isinstance(constraint, (Interval, Options)) else str(constraint)


def validate_params(owner: str, params: dict, constraints: dict) -> None:
    """Raise a ``ValueError`` naming the first parameter whose value no constraint accepts.

    Parameters
    ----------
    owner : str
        The estimator's class name, for the message.
    params : dict
        ``get_params(deep=False)``.
    constraints : dict
        ``{name: [constraint, ...]}``; every parameter in ``params`` must be listed.
    """
    for name, value in params.items():
        accepted = constraints[name]
        if any(_accepts(c, value) for c in accepted):
            continue
        described = [_describe(c) for c in accepted]
        text = described[0] if len(described) == 1 else ", ".join(described[:-1]) + " or " + described[-1]
        raise ValueError(f"The {name!r} parameter of {owner} must be {text}. Got {value!r} instead.")


def check_number(owner, name, value, kind, low=None, high=None, low_open=False, high_open=False):
    """Raise a ``ValueError`` naming the parameter unless ``value`` is in range (NaN never is)."""
    closed = {(False, False): "both", (True, False): "right", (False, True): "left", (True, True): "neither"}
    interval = Interval(kind, low, high, closed[(low_open, high_open)])
    validate_params(owner, {name: value}, {name: [interval]})


def check_option(owner, name, value, options):
    """Raise a ``ValueError`` listing ``options`` unless ``value`` is one of them."""
    validate_params(owner, {name: value}, {name: [Options(tuple(options))]})


def seed_from(random_state) -> int:
    """An integer seed from a ``random_state`` parameter (fresh entropy for None)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int64).max))
    return int(random_state)


def seeds_from(random_state, n: int) -> list[int]:
    """``n`` independent integer seeds derived from ``random_state`` (one per start)."""
    seed = seed_from(random_state)
    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(n)]


def check_is_fitted(estimator, attribute: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has ``attribute``."""
    if not hasattr(estimator, attribute):
        name = type(estimator).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet. Call 'fit' with appropriate "
            f"arguments before using this estimator."
        )
