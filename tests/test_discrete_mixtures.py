"""Bernoulli, Poisson and categorical mixtures against a direct NumPy EM written here,
recovery of known parameters from sampled data, and errors for invalid data."""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln, logsumexp
from scipy.stats import bernoulli, poisson

from dask_em import BernoulliMixture, CategoricalMixture, PoissonMixture

ALPHA = 1e-3


# ----------------------------------------------------------------- direct references
def _log_comp(X, kind, theta):
    """(n, K) component log-probabilities from scipy.stats (independent of dask_em)."""
    if kind == "bernoulli":
        return np.stack([bernoulli.logpmf(X, p).sum(axis=1) for p in theta], axis=1)
    if kind == "poisson":
        return np.stack([poisson.logpmf(X, lam).sum(axis=1) for lam in theta], axis=1)
    codes = X.astype(int)
    return np.stack(
        [np.log(p[np.arange(X.shape[1]), codes]).sum(axis=1) for p in theta], axis=1
    )


def direct_em(X, kind, weights, theta, n_iter, w=None, n_cat=None):
    """Plain NumPy EM with the documented smoothed M-steps; returns weights, theta, mean ll."""
    w = np.ones(len(X)) if w is None else w
    for _ in range(n_iter):
        lp = _log_comp(X, kind, theta) + np.log(weights)
        ll = logsumexp(lp, axis=1)
        r = np.exp(lp - ll[:, None]) * w[:, None]
        nk = r.sum(axis=0)
        weights = nk / nk.sum()
        if kind == "bernoulli":
            theta = (r.T @ X + ALPHA) / (nk[:, None] + 2 * ALPHA)
        elif kind == "poisson":
            theta = (r.T @ X + ALPHA) / (nk[:, None] + ALPHA)
        else:
            cmax = theta.shape[2]
            onehot = (X[:, :, None] == np.arange(cmax)).astype(float)
            counts = np.einsum("nk,ndc->kdc", r, onehot)
            theta = (counts + ALPHA) / (nk[:, None, None] + np.asarray(n_cat)[None, :, None] * ALPHA)
            theta[:, np.arange(cmax)[None, :] >= np.asarray(n_cat)[:, None]] = 0.0
    return weights, theta, (ll * w).sum() / w.sum()


def _data(kind, rng, n=600):
    if kind == "bernoulli":
        theta = np.array([[0.9, 0.8, 0.1, 0.2, 0.5], [0.1, 0.3, 0.9, 0.7, 0.5]])
        X = np.concatenate([rng.random((n // 2, 5)) < t for t in theta]).astype(float)
        start = np.array([[0.6, 0.5, 0.4, 0.5, 0.5], [0.4, 0.5, 0.6, 0.5, 0.5]])
    elif kind == "poisson":
        theta = np.array([[1.0, 5.0, 0.2], [6.0, 0.5, 3.0]])
        X = np.concatenate([rng.poisson(t, (n // 2, 3)) for t in theta]).astype(float)
        start = np.array([[2.0, 3.0, 1.0], [4.0, 2.0, 2.0]])
    else:
        n_cat = [3, 2, 4]
        X = np.stack([rng.integers(0, c, n) for c in n_cat], axis=1)
        X[: n // 2, 0] = 0
        X = X.astype(float)
        start = np.zeros((2, 3, 4))
        for d, c in enumerate(n_cat):
            p = rng.dirichlet(np.ones(c), size=2)
            start[:, d, :c] = p
        theta = None
    return X, start, theta


ESTIMATORS = {"bernoulli": BernoulliMixture, "poisson": PoissonMixture, "categorical": CategoricalMixture}


def _fit(kind, X, start, weights0, max_iter, **kw):
    key = "probs_init" if kind == "categorical" else "means_init"
    est = ESTIMATORS[kind](2, tol=0, max_iter=max_iter, alpha=ALPHA, weights_init=weights0, **{key: start})
    with pytest.warns(Warning):
        return est.fit(X, **kw)


@pytest.mark.parametrize("kernels", ["numpy", "numba"])  # numpy's kernels and the compiled ones (dask_em/compiled.py)
@pytest.mark.parametrize("kind", ["bernoulli", "poisson", "categorical"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_direct_numpy_em(kind, chunked, weighted, kernels):
    rng = np.random.default_rng(0)
    X, start, _ = _data(kind, rng)
    w = rng.integers(0, 3, len(X)).astype(float) if weighted else None
    weights0 = np.array([0.4, 0.6])
    n_cat = [3, 2, 4] if kind == "categorical" else None
    ref_w, ref_theta, ref_ll = direct_em(X, kind, weights0, start, 8, w=w, n_cat=n_cat)
    Xin = da.from_array(X, chunks=(137, -1)) if chunked else X
    kw = {} if w is None else {"sample_weight": da.from_array(w, chunks=137) if chunked else w}
    with dask.config.set({"dask_em.kernels": kernels}):
        est = _fit(kind, Xin, start, weights0, 8, **kw)
        scores = est.score_samples(Xin)
    theta = est.probs_ if kind == "categorical" else est.means_
    np.testing.assert_allclose(est.weights_, ref_w, rtol=1e-10)
    np.testing.assert_allclose(theta, ref_theta, rtol=1e-9, atol=1e-14)
    # lower_bound_ is the mean log-likelihood before the last M-step, as the reference
    assert est.lower_bound_ == pytest.approx(ref_ll, rel=1e-11)
    # score_samples of the fitted model against scipy.stats
    ref_scores = logsumexp(_log_comp(X, kind, theta) + np.log(est.weights_), axis=1)
    np.testing.assert_allclose(np.asarray(scores), ref_scores, rtol=1e-12)


@pytest.mark.parametrize("kind", ["bernoulli", "poisson"])
def test_recovers_parameters_from_own_samples(kind):
    rng = np.random.default_rng(1)
    _, _, theta = _data(kind, rng)
    est = ESTIMATORS[kind](2, random_state=0)
    est.weights_, est.means_ = np.array([0.3, 0.7]), theta
    est.n_features_in_ = theta.shape[1]
    Xs, ys = est.sample(20_000)
    assert np.bincount(ys).tolist() == pytest.approx([6000, 14000], abs=300)
    fit = ESTIMATORS[kind](2, random_state=0, n_init=2, tol=1e-6).fit(da.from_array(Xs, chunks=(5000, -1)))
    row, col = linear_sum_assignment(-fit.means_ @ theta.T if kind == "bernoulli" else
                                     np.abs(fit.means_[:, None] - theta[None]).sum(-1))
    np.testing.assert_allclose(fit.means_[row], theta[col], atol=0.05 * theta.max())
    np.testing.assert_allclose(fit.weights_[row], np.array([0.3, 0.7])[col], atol=0.02)


def test_categorical_recovers_parameters_and_infers_categories():
    n_cat = [3, 2, 3, 2]  # 2 latent classes need >= 3 features to be identifiable
    probs = np.zeros((2, 4, 3))
    probs[:, 0] = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    probs[:, 1, :2] = [[0.9, 0.1], [0.2, 0.8]]
    probs[:, 2] = [[0.2, 0.6, 0.2], [0.6, 0.2, 0.2]]
    probs[:, 3, :2] = [[0.7, 0.3], [0.3, 0.7]]
    cm = CategoricalMixture(2, n_categories=n_cat, random_state=0)
    cm.weights_, cm.probs_, cm.n_categories_, cm.n_features_in_ = np.array([0.5, 0.5]), probs, np.array(n_cat), 4
    Xs, _ = cm.sample(20_000)
    assert set(np.unique(Xs[:, 1])) == {0.0, 1.0}
    fit = CategoricalMixture(2, random_state=0, n_init=3, tol=1e-6).fit(da.from_array(Xs, chunks=(3000, -1)))
    assert fit.n_categories_.tolist() == n_cat  # inferred (one extra pass)
    order = np.argsort(fit.probs_[:, 0, 0])[::-1]
    np.testing.assert_allclose(fit.probs_[order], probs, atol=0.03)
    assert fit.probs_[:, 1, 2].max() == 0.0  # padding stays 0
    assert fit.bic(Xs) < CategoricalMixture(1).fit(Xs).bic(Xs)


@pytest.mark.parametrize(
    "est, X, match",
    [
        (BernoulliMixture(2, binarize=None), [[0, 1], [1, 0.5], [0, 0]], r"column 1 of X holds the value 0.5 "),
        (PoissonMixture(2), [[0, 1], [3, -2], [0, 0]],
         r"^Negative values in data .* column 1 of X holds the value -2 "),
        (CategoricalMixture(2, n_categories=3), [[0, 1], [3, 2], [0, 0]], r"column 0 of X holds the value 3 "),
        (CategoricalMixture(2), [[0, 1], [-1, 2], [0, 0]],
         r"^Negative values in data .* column 0 of X holds the value -1 "),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_invalid_values_name_column_and_value(est, X, match, chunked):
    X = np.asarray(X, dtype=float)
    X = da.from_array(np.repeat(X, 4, axis=0), chunks=(4, -1)) if chunked else X
    with pytest.raises(ValueError, match=match):
        est.fit(X)


def test_bernoulli_binarizes_at_its_threshold():
    X = np.random.default_rng(4).normal(size=(300, 4)) + np.array([0.0, 1.0, -1.0, 0.5])
    binary = (X > 0.3).astype(float)
    fit = BernoulliMixture(2, binarize=0.3, random_state=0).fit(da.from_array(X, chunks=(70, -1)))
    ref = BernoulliMixture(2, binarize=None, random_state=0).fit(da.from_array(binary, chunks=(70, -1)))
    np.testing.assert_allclose(fit.means_, ref.means_, rtol=1e-10)
    np.testing.assert_allclose(fit.score_samples(X), ref.score_samples(binary), rtol=1e-10)
    assert BernoulliMixture(binarize=None).__sklearn_tags__().input_tags.positive_only
    assert not BernoulliMixture().__sklearn_tags__().input_tags.positive_only


def test_poisson_scores_non_negative_reals_with_lgamma():
    X = np.random.default_rng(5).gamma(2.0, 1.5, size=(200, 3))  # rates, not counts
    pm = PoissonMixture(2, random_state=0).fit(X)
    lam, w = pm.means_, pm.weights_
    comp = X[:, None, :] * np.log(lam)[None] - lam[None] - gammaln(X + 1.0)[:, None, :]
    np.testing.assert_allclose(pm.score_samples(X), logsumexp(comp.sum(axis=2) + np.log(w), axis=1), rtol=1e-10)


def test_categorical_codes_are_integer_parts():
    codes = np.random.default_rng(6).integers(0, 3, size=(300, 4)).astype(float)
    noisy = codes + np.random.default_rng(7).uniform(0, 0.99, size=codes.shape)
    fit = CategoricalMixture(2, random_state=0).fit(noisy)
    ref = CategoricalMixture(2, random_state=0).fit(codes)
    assert fit.n_categories_.tolist() == ref.n_categories_.tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(fit.predict_proba(noisy), ref.predict_proba(codes), rtol=1e-10)
    with pytest.raises(ValueError, match="column 2 of X holds the value 3.5 "):
        ref.predict(np.array([[0, 1, 3.5, 0]]))


def test_predict_checks_values_of_dask_input():
    X = np.random.default_rng(3).poisson(3.0, (200, 2)).astype(float)
    pm = PoissonMixture(2, random_state=0).fit(X)
    bad = X.copy()
    bad[150, 1] = -4
    with pytest.raises(ValueError, match="column 1 of X holds the value -4 "):
        pm.predict(da.from_array(bad, chunks=(50, -1))).compute()
    assert pm.predict(da.from_array(X, chunks=(50, -1))).compute().shape == (200,)
