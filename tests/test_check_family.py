"""Every built-in family passes dask_em.testing.check_family against scipy.stats."""

import numpy as np
import pytest
from scipy import stats

from dask_em.families import get_family
from dask_em.families.categorical import make_family
from dask_em.families.gaussian import precisions_cholesky_from_covariances
from dask_em.testing import check_family

MEANS = np.array([[0.0, 0.0, 0.0], [8.0, -6.0, 4.0]])


def _gaussian_params(cov_type):
    covs = {
        "full": np.array([[[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]], np.eye(3) * 0.7]),
        "tied": np.array([[1.0, 0.3, 0.1], [0.3, 2.0, 0.0], [0.1, 0.0, 0.5]]),
        "diag": np.array([[1.0, 2.0, 0.5], [0.3, 0.8, 1.5]]),
        "spherical": np.array([0.8, 2.0]),
    }[cov_type]
    return {
        "means": MEANS,
        "covariances": covs,
        "precisions_cholesky": precisions_cholesky_from_covariances(covs, cov_type),
    }


def _gaussian_reference(cov_type):
    def ref(X, params):
        covs = params["covariances"]
        out = []
        for k, mu in enumerate(params["means"]):
            cov = {"full": lambda: covs[k], "tied": lambda: covs, "diag": lambda: np.diag(covs[k]),
                   "spherical": lambda: np.eye(len(mu)) * covs[k]}[cov_type]()
            out.append(stats.multivariate_normal(mu, cov).logpdf(X))
        return np.stack(out, axis=1)

    return ref


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_families(cov_type):
    ran = check_family(
        get_family(f"gaussian-{cov_type}"),
        _gaussian_params(cov_type),
        reference=_gaussian_reference(cov_type),
        options={"reg_covar": 1e-6},
        compare=["means", "covariances"],
        weights=[0.3, 0.7],
    )
    assert ran == ["sample", "log_prob-reference", "log_prob-offset", "additivity", "shift-invariance", "recentre",
                   "m-step-recovers", "sample-then-fit"]


def test_bernoulli_family():
    p = np.array([[0.9, 0.8, 0.1, 0.2, 0.6], [0.1, 0.3, 0.9, 0.7, 0.4]])
    ref = lambda X, prm: np.stack([stats.bernoulli.logpmf(X, q).sum(1) for q in prm["means"]], 1)  # noqa: E731
    assert len(check_family(get_family("bernoulli"), {"means": p}, reference=ref)) == 7


def test_poisson_family():
    lam = np.array([[1.0, 5.0, 0.2], [9.0, 0.5, 3.0]])
    ref = lambda X, prm: np.stack([stats.poisson.logpmf(X, q).sum(1) for q in prm["means"]], 1)  # noqa: E731
    assert len(check_family(get_family("poisson"), {"means": lam}, reference=ref)) == 7


def test_categorical_family():
    n_cat = [3, 2, 4]
    probs = np.zeros((2, 3, 4))
    probs[:, 0, :3] = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    probs[:, 1, :2] = [[0.9, 0.1], [0.2, 0.8]]
    probs[:, 2, :4] = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]

    def ref(X, prm):
        return np.stack(
            [sum(stats.multinomial(1, p[d, :c]).logpmf(np.eye(c)[X[:, d].astype(int)]) for d, c in enumerate(n_cat))
             for p in prm["probs"]], axis=1)

    assert len(check_family(make_family(n_cat), {"probs": probs}, reference=ref, n_samples=5000)) == 7


def test_kmeans_family_on_given_data():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    X = MEANS[labels] + rng.normal(size=(1000, 3))
    ref = lambda X, prm: -((X[:, None, :] - prm["means"][None]) ** 2).sum(-1)  # noqa: E731
    ran = check_family(get_family("kmeans"), {"means": MEANS}, reference=ref, X=X, labels=labels)
    assert "sample" not in ran and "recentre" in ran and len(ran) == 6


def test_a_family_that_ignores_its_offset_fails():
    fam = get_family("poisson")
    broken = type(fam)(**{**fam.__dict__, "log_prob": lambda X, params, offset=None: fam.log_prob(X, params)})
    with pytest.raises(AssertionError, match="log_prob with an offset"):
        check_family(broken, {"means": np.array([[1.0, 5.0], [9.0, 0.5]])})


def test_a_broken_family_fails():
    fam = get_family("poisson")
    broken = type(fam)(**{**fam.__dict__, "m_step": lambda s, p, alpha=0: {"means": s["s1"] / 2.0}})
    with pytest.raises(AssertionError, match="M-step of the true-label statistics"):
        check_family(broken, {"means": np.array([[1.0, 5.0], [9.0, 0.5]])})
