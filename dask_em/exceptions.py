"""Warnings and exceptions raised by dask-em."""


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``.

    Inherits from both ``ValueError`` and ``AttributeError``, as scikit-learn's
    ``NotFittedError`` does, so existing ``except`` clauses keep working.
    """


class ConvergenceWarning(UserWarning):
    """Raised when EM stops at ``max_iter`` before the change fell below ``tol``."""


class ModelFileError(ValueError):
    """A saved model or checkpoint cannot be read: not a dask-em file, corrupt, or
    written in a format version this dask-em does not read."""
