"""dask-em: mixture models fitted by Expectation-Maximization on chunked, larger-than-memory data.

>>> from dask_em import GaussianMixture
"""

from dask_em._version import __version__
from dask_em.estimators import (
    BayesianGaussianMixture,
    BernoulliMixture,
    CategoricalMixture,
    GaussianMixture,
    KMeans,
    PoissonMixture,
)
from dask_em.estimators._saving import load
from dask_em.exceptions import ConvergenceWarning, ModelFileError, NotFittedError, StoreReadError
from dask_em.selection import select_n_components

__all__ = [
    "BayesianGaussianMixture",
    "BernoulliMixture",
    "CategoricalMixture",
    "ConvergenceWarning",
    "GaussianMixture",
    "KMeans",
    "ModelFileError",
    "NotFittedError",
    "PoissonMixture",
    "StoreReadError",
    "__version__",
    "load",
    "select_n_components",
]
