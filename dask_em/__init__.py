"""dask-em: mixture models fitted by Expectation-Maximization on chunked, larger-than-memory data.

>>> from dask_em import GaussianMixture
"""

from dask_em._version import __version__
from dask_em.estimators import GaussianMixture
from dask_em.exceptions import ConvergenceWarning, ModelFileError, NotFittedError
from dask_em.persistence import load

__all__ = ["ConvergenceWarning", "GaussianMixture", "ModelFileError", "NotFittedError", "__version__", "load"]
