"""Seeded data and fixed starting points of the pipeline tests, per model
(``kmeans``, ``bernoulli``, ``poisson``, ``categorical``): K = 3 components over 4 features."""

import numpy as np

from dask_em import BernoulliMixture, CategoricalMixture, KMeans, PoissonMixture

MODELS = ["kmeans", "bernoulli", "poisson", "categorical"]
SHAPE = (3, 8, 10)  # time, y, x
BANDS = ["b1", "b2", "b3", "b4"]
K = 3
ALPHA = 1e-3
TOL = 1e-5  # small, so the mixtures run enough iterations to interrupt


def truth_of(model, rng):
    """True parameters: centres (K, B), probabilities or rates (K, B), or probs (K, B, 3)."""
    B = len(BANDS)
    if model == "kmeans":
        return rng.normal(scale=1.0, size=(K, B))  # overlapping: Lloyd needs ~10 iterations
    if model == "bernoulli":
        return np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.7], [0.5, 0.9, 0.9, 0.1]])
    if model == "poisson":
        return np.array([[1.0, 6.0, 2.0, 0.5], [7.0, 1.0, 3.0, 4.0], [3.0, 3.0, 9.0, 1.0]])
    return rng.dirichlet(np.full(3, 0.7), size=(K, B))  # categorical: (K, B, 3 codes)


def pixels(model, truth, comp, rng):
    """Rows (n, B) drawn from the components ``comp`` (n,)."""
    n = comp.size
    if model == "kmeans":
        return truth[comp] + rng.normal(size=(n, len(BANDS)))
    if model == "bernoulli":
        return (rng.random((n, len(BANDS))) < truth[comp]).astype(np.float64)
    if model == "poisson":
        return rng.poisson(truth[comp]).astype(np.float64)
    cum = truth[comp].cumsum(axis=2)  # (n, B, 3)
    return (rng.random((n, len(BANDS), 1)) > cum).sum(axis=2).astype(np.float64)


def start(model, truth):
    """A fixed starting point: perturbed truth (no initialisation pass is made)."""
    rng = np.random.default_rng(1)
    if model == "kmeans":
        return {"init": truth + rng.normal(scale=1.0, size=truth.shape)}
    weights = np.full(K, 1.0 / K)
    if model == "categorical":
        probs = truth + rng.uniform(0.05, 0.2, size=truth.shape)
        return {"weights_init": weights, "probs_init": probs / probs.sum(axis=2, keepdims=True)}
    low, high = (0.02, 0.98) if model == "bernoulli" else (0.1, np.inf)
    means = np.clip(truth * rng.uniform(0.7, 1.3, size=truth.shape), low, high)
    return {"weights_init": weights, "means_init": means}


def estimator(model, truth, max_iter, **params):
    """The model from its fixed start (``params`` are further constructor parameters)."""
    init = {**start(model, truth), **params}
    if model == "kmeans":
        return KMeans(K, max_iter=max_iter, **init)
    common = {"max_iter": max_iter, "tol": TOL, "alpha": ALPHA, **init}
    if model == "bernoulli":
        return BernoulliMixture(K, **common)
    if model == "poisson":
        return PoissonMixture(K, **common)
    return CategoricalMixture(K, n_categories=3, **common)


def params_of(est):
    """The fitted parameters of ``est`` by attribute name."""
    if isinstance(est, KMeans):
        return {"cluster_centers_": est.cluster_centers_}
    name = "probs_" if isinstance(est, CategoricalMixture) else "means_"
    return {"weights_": est.weights_, name: getattr(est, name)}
