"""scikit-learn compatible estimators; each validates and delegates to the engine."""

from dask_em.estimators.bayesian import BayesianGaussianMixture
from dask_em.estimators.categorical import CategoricalMixture
from dask_em.estimators.discrete import BernoulliMixture, PoissonMixture
from dask_em.estimators.gaussian import GaussianMixture
from dask_em.estimators.kmeans import KMeans

__all__ = ["BayesianGaussianMixture", "BernoulliMixture", "CategoricalMixture", "GaussianMixture", "KMeans", "PoissonMixture"]
