"""nan_policy="marginalize": missing features integrated out, against a row-by-row reference."""

import logging
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dask_em import GaussianMixture
from dask_em.engine import estep_block
from dask_em.engine.marginal import marginalizing
from dask_em.families import get_family
from tests._missing_reference import em_step, full_covs, loglik_and_resp

TYPES = ("full", "tied", "diag", "spherical")
TRUE_MEANS = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]])


def _gappy(seed=1, n=300, fraction=0.2):
    """Three correlated clusters in 3-D, ``fraction`` of the entries NaN, two rows all NaN."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    mix = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]])
    X = TRUE_MEANS[y] + rng.standard_normal((n, 3)) @ mix
    X[rng.random(X.shape) < fraction] = np.nan
    X[[5, 17]] = np.nan
    return X


def _as(X, kind):
    return X if kind == "numpy" else da.from_array(X, chunks=(70, 3))


def _covs(gm):
    return full_covs(gm.covariances_, gm.covariance_type, gm.n_components, gm.means_.shape[1])


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_score_proba_and_fixed_point_match_reference(covariance_type, kind):
    X = _gappy()
    gm = GaussianMixture(3, covariance_type=covariance_type, nan_policy="marginalize", tol=1e-13,
                         max_iter=3000, random_state=0).fit(_as(X, kind))
    assert gm.converged_
    keep = ~np.isnan(X).all(axis=1)
    ll, resp = loglik_and_resp(X[keep], gm.weights_, gm.means_, _covs(gm))
    assert gm.score(_as(X, kind)) == pytest.approx(ll.mean(), rel=1e-12)
    proba = np.asarray(gm.predict_proba(_as(X, kind)))
    np.testing.assert_allclose(proba[keep], resp, atol=1e-12)
    assert np.isnan(proba[~keep]).all()
    weights, means, covs = em_step(X[keep], gm.weights_, gm.means_, _covs(gm), covariance_type, gm.reg_covar)
    assert np.abs(weights - gm.weights_).max() < 1e-6
    assert np.abs(means - gm.means_).max() < 1e-6
    assert np.abs(covs - gm.covariances_).max() < 1e-6


@pytest.mark.parametrize("kernels", ["numpy", "numba"])  # numpy's kernels and the compiled ones (dask_em/compiled.py)
@pytest.mark.parametrize("covariance_type", TYPES)
def test_one_step_from_a_given_start_matches_reference(covariance_type, kernels):
    """Away from the fixed point too: one EM pass from given parameters is the reference step."""
    X = _gappy(seed=2)
    K, D = 3, 3
    weights = np.array([0.2, 0.5, 0.3])
    means = TRUE_MEANS + 0.7
    cov = {"full": np.array([np.eye(D) * (1 + k) + 0.4 for k in range(K)]), "tied": np.eye(D) * 1.5 + 0.4,
           "diag": np.array([[1.0, 2.0, 0.5], [0.7, 1.1, 1.9], [1.3, 0.6, 1.0]]),
           "spherical": np.array([0.8, 1.5, 2.2])}[covariance_type]
    prec = np.linalg.inv(cov) if covariance_type in ("full", "tied") else 1.0 / cov
    gm = GaussianMixture(K, covariance_type=covariance_type, nan_policy="marginalize", weights_init=weights,
                         means_init=means, precisions_init=prec, max_iter=1)
    with pytest.warns(Warning), dask.config.set({"dask_em.kernels": kernels}):  # one iteration does not converge
        gm.fit(da.from_array(X, chunks=(64, 3)))
    keep = ~np.isnan(X).all(axis=1)
    ref = em_step(X[keep], weights, means, full_covs(cov, covariance_type, K, D), covariance_type, gm.reg_covar)
    np.testing.assert_allclose(gm.weights_, ref[0], rtol=1e-10)
    np.testing.assert_allclose(gm.means_, ref[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, ref[2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_observed_loglik_never_decreases(covariance_type):
    X = _gappy(seed=3, n=600, fraction=0.3)
    gm = GaussianMixture(3, covariance_type=covariance_type, nan_policy="marginalize", tol=1e-10,
                         max_iter=200, init_params="random", random_state=1).fit(X)
    ll = np.array(gm.lower_bounds_)
    assert len(ll) > 5
    assert np.all(np.diff(ll) >= -1e-12 * np.abs(ll[1:]))


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_without_nan_the_fit_is_the_ordinary_fit_bit_for_bit(covariance_type, kind):
    X = _gappy(fraction=0.0)
    X = X[~np.isnan(X).any(axis=1)]
    fits = [GaussianMixture(3, covariance_type=covariance_type, nan_policy=p, n_init=2, random_state=0).fit(_as(X, kind))
            for p in ("raise", "marginalize")]
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_", "n_iter_"):
        np.testing.assert_array_equal(getattr(fits[0], attr), getattr(fits[1], attr))
    np.testing.assert_array_equal(np.asarray(fits[0].score_samples(_as(X, kind))),
                                  np.asarray(fits[1].score_samples(_as(X, kind))))


# --------------------------------------------------------------------------- closer to the truth
MEANS_4D = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [0.0, 4.0, 4.0, 4.0]])


def _four_d(seed, cluster_gaps, n=20_000):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = MEANS_4D[y] + rng.standard_normal((n, 4))
    if cluster_gaps:
        # a bright first feature saturates the others: gaps in the upper half of the second cluster
        miss = np.zeros(X.shape, dtype=bool)
        miss[:, 1:] = (X[:, [0]] > 4.0) & (rng.random((n, 3)) < 0.7)
    else:
        miss = rng.random(X.shape) < 0.15  # 15% of the entries, at random
    X[miss] = np.nan
    return X


def _mean_error(gm):
    cost = ((gm.means_[:, None] - MEANS_4D[None]) ** 2).sum(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].sum()))


def _errors(cluster_gaps):
    out = {}
    for policy in ("omit", "marginalize"):
        out[policy] = sum(_mean_error(GaussianMixture(3, nan_policy=policy, random_state=0).fit(_four_d(s, cluster_gaps)))
                          for s in range(3))
    return out


def test_marginalize_is_closer_to_the_truth_than_omit_and_more_so_when_gaps_depend_on_the_cluster():
    random_gaps = _errors(cluster_gaps=False)
    cluster_gaps = _errors(cluster_gaps=True)
    assert random_gaps["marginalize"] < random_gaps["omit"]
    assert cluster_gaps["marginalize"] < cluster_gaps["omit"]
    assert cluster_gaps["omit"] - cluster_gaps["marginalize"] > 5 * (random_gaps["omit"] - random_gaps["marginalize"])
    assert cluster_gaps["marginalize"] < 0.1 * cluster_gaps["omit"]


# --------------------------------------------------------------------------- outputs
def test_rows_with_gaps_get_labels_rows_without_any_value_are_left_out(caplog):
    X = _gappy()
    with caplog.at_level(logging.INFO, logger="dask_em"):
        gm = GaussianMixture(3, nan_policy="marginalize", random_state=0).fit(da.from_array(X, chunks=(70, 3)))
    empty = np.isnan(X).all(axis=1)
    assert f"left out {empty.sum()} rows with every feature missing" in caplog.text
    labels = gm.predict(X)
    gaps = np.isnan(X).any(axis=1) & ~np.isnan(X).all(axis=1)
    assert gaps.sum() > 100
    assert (labels[gaps] >= 0).all() and (labels[empty] == -1).all()
    lazy = gm.predict(da.from_array(X, chunks=(70, 3)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), labels)
    scores = gm.score_samples(X)
    assert np.isfinite(scores[gaps]).all() and np.isnan(scores[empty]).all()


def _reference_impute(X, gm):
    covs = _covs(gm)
    out = X.copy()
    keep = ~np.isnan(X).all(axis=1)
    _, resp = loglik_and_resp(X[keep], gm.weights_, gm.means_, covs)
    for i, r in zip(np.flatnonzero(keep), resp):
        o = ~np.isnan(X[i])
        m = ~o
        if m.any():
            out[i, m] = sum(r[k] * (gm.means_[k][m] + covs[k][np.ix_(m, o)] @ np.linalg.solve(
                covs[k][np.ix_(o, o)], X[i, o] - gm.means_[k][o])) for k in range(len(r)))
    out[~keep] = gm.weights_ @ gm.means_
    return out


@pytest.mark.parametrize("covariance_type", TYPES)
def test_impute_is_the_conditional_expectation(covariance_type):
    X = _gappy()
    gm = GaussianMixture(3, covariance_type=covariance_type, nan_policy="marginalize", random_state=0).fit(X)
    expected = _reference_impute(X, gm)
    filled = gm.impute(X)
    np.testing.assert_allclose(filled, expected, rtol=1e-10, atol=1e-12)
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(filled[observed], X[observed])
    lazy = gm.impute(da.from_array(X, chunks=(70, 3)))
    assert isinstance(lazy, da.Array) and lazy.chunks == ((70, 70, 70, 70, 20), (3,))
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-10, atol=1e-12)


def test_impute_xarray_in_xarray_out():
    xr = pytest.importorskip("xarray")
    X = _gappy(n=240)
    cube = xr.DataArray(X.T.reshape(3, 12, 20), dims=("band", "y", "x"),
                        coords={"band": ["b1", "b2", "b3"], "y": np.arange(12), "x": np.arange(20)}).chunk({"y": 6})
    gm = GaussianMixture(3, nan_policy="marginalize", random_state=0).fit(cube, feature_dim="band")
    filled = gm.impute(cube)
    assert isinstance(filled, xr.DataArray) and filled.dims == cube.dims
    assert list(filled["band"].values) == ["b1", "b2", "b3"]
    values = filled.values
    assert not np.isnan(values).any()
    np.testing.assert_array_equal(values[~np.isnan(cube.values)], cube.values[~np.isnan(cube.values)])
    flat = cube.transpose("y", "x", "band").values.reshape(-1, 3)
    with pytest.warns(UserWarning, match="feature names"):
        expected = gm.impute(flat)
    np.testing.assert_allclose(filled.transpose("y", "x", "band").values.reshape(-1, 3), expected, rtol=1e-12)


def test_a_family_without_missing_math_refuses_marginalize():
    """Every built-in model has the math; a family without it (``Family.missing``) is refused."""
    from dataclasses import replace

    from dask_em.engine.marginal import marginalizing
    from dask_em.families import get_family

    lacking = replace(get_family("gaussian-diag"), missing=None)
    with pytest.raises(ValueError, match="nan_policy='marginalize' is not available.*nan_policy='omit'"):
        marginalizing(lacking)


def test_too_few_rows_without_nan_to_initialise():
    X = _gappy(fraction=0.0)
    X[3:, 0] = np.nan
    with pytest.raises(ValueError, match="initialises on the rows without NaN"):
        GaussianMixture(4, nan_policy="marginalize").fit(X)


# --------------------------------------------------------------------------- the kernel
def _state(covariance_type, seed):
    gm = GaussianMixture(3, covariance_type=covariance_type, max_iter=2, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two iterations may not converge
        gm.fit(_gappy(seed=seed, fraction=0.0)[np.r_[0:5, 6:17, 18:300]])
    return gm._get_state()


@pytest.mark.parametrize("covariance_type", TYPES)
def test_kernel_adds_over_blocks_stacks_starts_and_counts_weights(covariance_type):
    family = marginalizing(get_family(f"gaussian-{covariance_type}"))
    X = _gappy(seed=4)
    states = [_state(covariance_type, s) for s in (0, 1)]
    whole = estep_block(X, None, (family, states), 0)
    parts = [estep_block(X[a:b], None, (family, states), 0) for a, b in ((0, 100), (100, 300))]
    alone = [estep_block(X, None, (family, [s]), 0)[0] for s in states]
    for j in range(2):
        for key in ("nk", "s1", "s2", "loglik", "n_rows", "n_nonfinite"):
            np.testing.assert_allclose(whole[j][key], parts[0][j][key] + parts[1][j][key], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(whole[j][key], alone[j][key], rtol=1e-12, atol=1e-9)
    n_empty = int(np.isnan(X).all(axis=1).sum())
    assert n_empty >= 2 and whole[0]["n_nonfinite"] == n_empty and whole[0]["n_rows"] == 300 - n_empty
    # an integer weight counts as copies of the row
    w = np.ones(X.shape[0])
    w[:50] = 2.0
    weighted = estep_block(X, w, (family, states[:1]), 0)[0]
    copies = estep_block(np.concatenate([X, X[:50]]), None, (family, states[:1]), 0)[0]
    for key in ("nk", "s1", "s2", "loglik", "weight"):
        np.testing.assert_allclose(weighted[key], copies[key], rtol=1e-12, atol=1e-9)


def test_float32_data_fit_on_observed_features():
    X = _gappy()
    gm64 = GaussianMixture(3, nan_policy="marginalize", random_state=0).fit(X)
    gm32 = GaussianMixture(3, nan_policy="marginalize", random_state=0).fit(X.astype(np.float32))
    assert gm32.means_.dtype == np.float32
    np.testing.assert_allclose(gm32.means_, gm64.means_, atol=1e-4)


# --------------------------------------------------------------------------- discrete mixtures
def _discrete_data(kind, seed=0, n=600):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if kind == "bernoulli":
        P = np.array([[0.1, 0.8, 0.3, 0.9, 0.2], [0.7, 0.2, 0.6, 0.1, 0.8]])
        X = (rng.random((n, 5)) < P[y]).astype(float)
    elif kind == "poisson":
        L = np.array([[1.0, 5.0, 2.0, 8.0, 0.5], [6.0, 1.0, 4.0, 2.0, 3.0]])
        X = rng.poisson(L[y]).astype(float)
    else:
        P = np.array([[[0.7, 0.2, 0.1]] * 5, [[0.1, 0.2, 0.7]] * 5])
        X = np.array([[rng.choice(3, p=P[c, d]) for d in range(5)] for c in y], dtype=float)
    X[rng.random(X.shape) < 0.2] = np.nan
    X[3] = np.nan
    return X


def _discrete_reference(kind, X, model):
    """Row-by-row: observed-data log-likelihoods, responsibilities and the parameters of one
    EM step (missing features contribute their expectation), with scipy.stats' pmfs."""
    from scipy.special import logsumexp
    from scipy.stats import bernoulli, poisson

    K = len(model.weights_)
    ll, resp = [], []
    for x in X:
        o = np.flatnonzero(~np.isnan(x))
        lp = np.log(model.weights_).copy()
        for k in range(K):
            for d in o:
                if kind == "bernoulli":
                    lp[k] += bernoulli.logpmf(x[d], model.means_[k, d])
                elif kind == "poisson":
                    lp[k] += poisson.logpmf(x[d], model.means_[k, d])
                else:
                    lp[k] += np.log(model.probs_[k, d, int(x[d])])
        ll.append(logsumexp(lp))
        resp.append(np.exp(lp - ll[-1]))
    resp = np.array(resp)
    nk = resp.sum(axis=0)
    a = model.alpha
    if kind == "categorical":
        counts = np.zeros_like(model.probs_)
        for x, r in zip(X, resp):
            for d in range(X.shape[1]):
                value = model.probs_[:, d] if np.isnan(x[d]) else np.eye(counts.shape[2])[int(x[d])][None]
                counts[:, d] += r[:, None] * value
        new = (counts + a) / (nk[:, None, None] + counts.shape[2] * a)
    else:
        completed = np.where(np.isnan(X)[None], model.means_[:, None, :], X[None])  # (K, n, D)
        s1 = np.einsum("nk,knd->kd", resp, completed)
        new = (s1 + a) / (nk[:, None] + (2 * a if kind == "bernoulli" else a))
    return np.array(ll), resp, nk / len(X), new


@pytest.mark.parametrize("kind", ["bernoulli", "poisson", "categorical"])
@pytest.mark.parametrize("dask_input", [False, True])
def test_discrete_mixtures_match_reference(kind, dask_input):
    from dask_em import BernoulliMixture, CategoricalMixture, PoissonMixture

    X = _discrete_data(kind)
    model = {"bernoulli": BernoulliMixture(2), "poisson": PoissonMixture(2),
             "categorical": CategoricalMixture(2, n_categories=3)}[kind]
    model.set_params(nan_policy="marginalize", tol=1e-12, max_iter=3000, random_state=0)
    data = da.from_array(X, chunks=(100, 5)) if dask_input else X
    model.fit(data)
    assert model.converged_
    keep = ~np.isnan(X).all(axis=1)
    ll, resp, weights, new = _discrete_reference(kind, X[keep], model)
    assert model.score(data) == pytest.approx(ll.mean(), rel=1e-12)
    np.testing.assert_allclose(np.asarray(model.predict_proba(data))[keep], resp, atol=1e-12)
    fitted = model.probs_ if kind == "categorical" else model.means_
    assert np.abs(new - fitted).max() < 1e-6
    assert np.abs(weights - model.weights_).max() < 1e-6
    filled = np.asarray(model.impute(data))
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(filled[observed], X[observed])
    assert not np.isnan(filled).any()
