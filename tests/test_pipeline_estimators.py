"""What every estimator gets from the shared pipeline, checked on all five of them.

- ``nan_policy`` and ``persist`` are constructor parameters: ``clone`` and
  ``GridSearchCV`` keep them (a grid search over K with ``nan_policy="omit"`` runs on
  data with NaN rows);
- float32 data give float32 fitted attributes and float32 per-row outputs, for NumPy
  and dask input;
- ``warm_start`` with ``max_iter=1`` advances one EM iteration per ``fit`` exactly as
  scikit-learn's GaussianMixture does (same lower bounds, same call that converges);
- a saved and loaded KMeans predicts as the fitted one and as the nearest centre.
"""

import warnings

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning as SKConvergenceWarning
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from sklearn.model_selection import GridSearchCV, KFold

import dask_em
from dask_em import BernoulliMixture, CategoricalMixture, GaussianMixture, KMeans, PoissonMixture
from dask_em.exceptions import ConvergenceWarning
from tests._references import nearest_centre
from tests.conftest import make_blobs

ALL = [GaussianMixture, KMeans, BernoulliMixture, PoissonMixture, CategoricalMixture]


def k_param(cls):
    return "n_clusters" if cls is KMeans else "n_components"


def data_for(cls, n=600, seed=0):
    """Seeded data in the support of ``cls``: blobs, 0/1, counts or codes 0..3."""
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 2, size=n)
    if cls in (GaussianMixture, KMeans):
        return np.array([[0.0, 0.0, 0.0], [5.0, 5.0, -5.0]])[comp] + rng.normal(size=(n, 3))
    if cls is BernoulliMixture:
        return (rng.random((n, 4)) < np.array([[0.9, 0.1, 0.8, 0.2], [0.2, 0.9, 0.1, 0.7]])[comp]).astype(float)
    if cls is PoissonMixture:
        return rng.poisson(np.array([[1.0, 8.0, 3.0], [6.0, 2.0, 0.5]])[comp]).astype(float)
    cum = np.array([[0.7, 0.8, 0.9, 1.0], [0.1, 0.2, 0.3, 1.0]])[comp]  # codes 0..3, by component
    return np.stack([(rng.random(n)[:, None] > cum).sum(axis=1) for _ in range(3)], axis=1).astype(float)


# ----------------------------------------------------------------- clone, grid search
@pytest.mark.parametrize("cls", ALL)
def test_clone_keeps_edge_parameters(cls):
    est = cls(nan_policy="omit", persist=False)
    params = clone(est).get_params()
    assert params["nan_policy"] == "omit"
    assert params["persist"] is False
    est = cls(nan_policy="raise", persist=True)
    assert clone(est).get_params()["nan_policy"] == "raise"
    assert clone(est).get_params()["persist"] is True
    assert cls().get_params()["nan_policy"] is None and cls().get_params()["persist"] == "auto"


@pytest.mark.parametrize("cls", [GaussianMixture, KMeans, PoissonMixture])
def test_grid_search_over_k_with_nan_rows(cls):
    rng = np.random.default_rng(7)
    if cls is PoissonMixture:
        X = rng.poisson(np.array([[1.0, 9.0], [9.0, 1.0], [4.0, 4.0]])[rng.integers(0, 3, 600)]).astype(float)
    else:
        X = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])[rng.integers(0, 3, 600)] + rng.normal(size=(600, 2))
    X[rng.choice(600, 30, replace=False), rng.integers(0, 2, 30)] = np.nan
    template = cls(nan_policy="omit", persist=False, random_state=0)
    search = GridSearchCV(template, {k_param(cls): [1, 2, 3]}, cv=KFold(3, shuffle=True, random_state=0))
    search.fit(X)
    best = search.best_estimator_
    assert best.nan_policy == "omit" and best.persist is False
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    if cls is not KMeans:  # held-out likelihood picks the true K (inertia always prefers more)
        assert search.best_params_ == {k_param(cls): 3}
    labels = best.predict(X)
    nan_rows = ~np.isfinite(X).all(axis=1)
    assert np.all(labels[nan_rows] == -1) and np.all(labels[~nan_rows] >= 0)
    # the same template with the default policy refuses the NaN rows
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        clone(template).set_params(nan_policy="raise").fit(X)


# ----------------------------------------------------------------- float32 in, float32 out
def _float_attributes(est):
    out = {}
    for name, value in vars(est).items():
        public = name.endswith("_") and not name.startswith("_")
        if public and isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[name] = value
    return out


EXPECTED_FLOAT_ATTRS = {
    GaussianMixture: {"weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"},
    KMeans: {"cluster_centers_"},
    BernoulliMixture: {"weights_", "means_"},
    PoissonMixture: {"weights_", "means_"},
    CategoricalMixture: {"weights_", "probs_"},
}


@pytest.mark.parametrize("as_dask", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("cls", ALL)
def test_float32_in_float32_out(cls, as_dask):
    X64 = data_for(cls)
    X = X64.astype(np.float32)
    if as_dask:
        X = da.from_array(X, chunks=(150, -1))
    est = cls(**{k_param(cls): 2}, random_state=0).fit(X)
    attrs = _float_attributes(est)
    assert EXPECTED_FLOAT_ATTRS[cls] <= set(attrs), sorted(attrs)
    for name, value in attrs.items():
        assert value.dtype == np.float32, (name, value.dtype)
    methods = ["transform"] if cls is KMeans else ["predict_proba", "score_samples"]
    for method in methods:
        out = getattr(est, method)(X)
        assert out.dtype == np.float32, (method, out.dtype)
        assert isinstance(out, da.Array) == as_dask
        computed = np.asarray(out)
        assert computed.dtype == np.float32 and np.all(np.isfinite(computed))
    # float64 data of the same values give float64 attributes (the cast follows the data)
    est64 = cls(**{k_param(cls): 2}, random_state=0).fit(X64)
    assert all(v.dtype == np.float64 for v in _float_attributes(est64).values())


# ----------------------------------------------------------------- warm start
def test_warm_start_one_iteration_per_fit_as_scikit_learn():
    rng = np.random.default_rng(2)  # overlapping clusters: EM needs ~20 iterations at tol=1e-3
    X = np.concatenate([
        rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) * [2.0, 0.5] + [1.5, 0.0],
        rng.normal(size=(200, 2)) * 0.7 + [0.0, 1.5],
    ])
    init = {
        "weights_init": np.full(3, 1 / 3),
        "means_init": X[[0, 1, 2]],
        "precisions_init": np.stack([np.eye(2)] * 3),
    }
    settings = dict(n_components=3, covariance_type="full", max_iter=1, warm_start=True, tol=1e-3, **init)
    ours, theirs = GaussianMixture(**settings), SKGaussianMixture(**settings)
    ours_lb, theirs_lb = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", SKConvergenceWarning)
        for _ in range(300):
            ours.fit(X)
            ours_lb.append(ours.lower_bound_)
            if ours.converged_:
                break
        for _ in range(300):
            theirs.fit(X)
            theirs_lb.append(theirs.lower_bound_)
            if theirs.converged_:
                break
    assert theirs.converged_, "the reference must converge within the calls allowed"
    assert ours.converged_
    assert len(ours_lb) == len(theirs_lb) > 10
    assert ours.n_iter_ == theirs.n_iter_ == 1  # one iteration per call
    assert_allclose(ours_lb, theirs_lb, rtol=1e-10)
    assert_allclose(ours.means_, theirs.means_, rtol=1e-8, atol=1e-10)
    assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-8, atol=1e-10)
    # without warm_start every call starts afresh: one call never converges here
    cold = GaussianMixture(**{**settings, "warm_start": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold.fit(X).fit(X)
    assert not cold.converged_ and cold.lower_bound_ == pytest.approx(ours_lb[0], rel=1e-12)


# ----------------------------------------------------------------- save / load KMeans
def test_kmeans_save_load_round_trip(tmp_path):
    X = make_blobs(n=900, n_features=3, n_components=4, seed=5)
    km = KMeans(n_clusters=4, random_state=0).fit(da.from_array(X, chunks=(300, -1)))
    path = km.save(tmp_path / "kmeans.npz")
    back = dask_em.load(path)
    assert type(back) is KMeans
    assert back.get_params() == km.get_params()
    assert_array_equal(back.cluster_centers_, km.cluster_centers_)
    assert (back.inertia_, back.n_iter_, back.converged_, back.n_features_in_) == (
        km.inertia_, km.n_iter_, km.converged_, km.n_features_in_,
    )
    labels = back.predict(X)
    assert_array_equal(labels, km.predict(X))
    assert_array_equal(labels, nearest_centre(X, km.cluster_centers_))
    assert_array_equal(back.transform(X), km.transform(X))
    assert back.score(X) == pytest.approx(-((X - km.cluster_centers_[labels]) ** 2).sum(), rel=1e-12)


def test_kmeans_save_load_keeps_feature_names(tmp_path):
    import pandas as pd

    X = pd.DataFrame(make_blobs(n=300, n_features=2, n_components=2, seed=6), columns=["u", "v"])
    km = KMeans(n_clusters=2, random_state=0).fit(X)
    back = dask_em.load(km.save(tmp_path / "kmeans.npz"))
    assert back.feature_names_in_.tolist() == ["u", "v"]
    assert_array_equal(back.predict(X), km.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        back.predict(X[["v", "u"]])
