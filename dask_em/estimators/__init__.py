"""scikit-learn compatible estimators; each validates and delegates to the engine."""

from dask_em.estimators.gaussian import GaussianMixture

__all__ = ["GaussianMixture"]
