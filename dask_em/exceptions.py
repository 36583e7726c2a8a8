"""Warnings and exceptions raised by dask-em.

``NotFittedError`` and ``ConvergenceWarning`` are subclasses of scikit-learn's, so
code written for scikit-learn (``except sklearn.exceptions.NotFittedError``,
``warnings.filterwarnings("ignore", category=sklearn.exceptions.ConvergenceWarning)``)
handles dask-em's too.
"""

from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning
from sklearn.exceptions import NotFittedError as _SkNotFittedError


class NotFittedError(_SkNotFittedError):
    """Raised when a method that needs a fitted model is called before ``fit``.

    A subclass of :class:`sklearn.exceptions.NotFittedError` (itself a
    ``ValueError`` and an ``AttributeError``).
    """


class ConvergenceWarning(_SkConvergenceWarning):
    """Raised when EM stops at ``max_iter`` before the change fell below ``tol``.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning`.
    """


class ModelFileError(ValueError):
    """A saved model or checkpoint cannot be read.

    It is not a dask-em file, is corrupt, holds invalid values, or was written in
    a format version this dask-em does not read.
    """


class StoreReadError(OSError):
    """A chunk of an input store could not be read (corrupt, truncated, unreachable).

    The message names the store, the array, the chunk index and the rows it holds;
    the original error is its ``__cause__``.
    """
