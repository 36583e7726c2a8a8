"""BayesianGaussianMixture fitted by stochastic variational inference: ``algorithm="stepwise"``
and ``partial_fit`` (Hoffman et al. 2013), and SQUAREM refused for it.

The SVI step is checked against a direct computation of the natural-gradient update
of the Normal-Wishart / stick-breaking posterior written here (natural parameters
from the posterior's parameters, responsibilities from the expected log-densities);
the fits against batch variational EM from the same start; passes are counted from
the chunk reads of a Zarr store on disk.
"""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import optimize
from scipy.special import digamma, logsumexp

from dask_em import BayesianGaussianMixture
from dask_em.engine import MixtureState, estep_block, m_step
from dask_em.engine.accelerate import Squarem
from dask_em.engine.stepwise import blend_stats, recentred, scale_stats
from dask_em.families import bayesian_gaussian as vb
from dask_em.testing import CountingStore
from tests.conftest import make_blobs

N = 6_000


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n=N, n_features=2, n_components=3, seed=5, spread=8.0)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _align(got, want):
    cost = ((got[:, None, :] - want[None, :, :]) ** 2).sum(axis=2)
    _, cols = optimize.linear_sum_assignment(cost)
    return cols.argsort()


# --------------------------------------------------------------------------- the SVI step
def _expected_log_joint(X, q):
    """E_q[log pi_k] + E_q[log N(x | mu_k, Lambda_k^-1)] of each row (n, K), Bishop (10.64-10.66)
    with the stick-breaking E[log pi_k]; q holds m, beta, Winv (the scale matrix's inverse), nu, a, b."""
    n, D = X.shape
    K = len(q["beta"])
    out = np.empty((n, K))
    sticks = digamma(q["a"]) - digamma(q["a"] + q["b"])
    rest = digamma(q["b"]) - digamma(q["a"] + q["b"])
    log_pi = sticks + np.concatenate([[0.0], np.cumsum(rest)[:-1]])
    for k in range(K):
        W = np.linalg.inv(q["Winv"][k])
        e_log_det = np.sum(digamma(0.5 * (q["nu"][k] - np.arange(D)))) + D * np.log(2) + np.linalg.slogdet(W)[1]
        diff = X - q["m"][k]
        maha = q["nu"][k] * np.einsum("nd,de,ne->n", diff, W, diff)
        out[:, k] = log_pi[k] + 0.5 * e_log_det - 0.5 * D * np.log(2 * np.pi) - 0.5 * (D / q["beta"][k] + maha)
    return out


def _natural(q):
    """Natural parameters of the Normal-Wishart factors and the Beta sticks."""
    return {
        "beta": q["beta"],
        "beta_m": q["beta"][:, None] * q["m"],
        "Winv_plus": q["Winv"] + q["beta"][:, None, None] * np.einsum("kd,ke->kde", q["m"], q["m"]),
        "nu": q["nu"],
        "a": q["a"],
        "b": q["b"],
    }


def _from_natural(eta):
    m = eta["beta_m"] / eta["beta"][:, None]
    Winv = eta["Winv_plus"] - eta["beta"][:, None, None] * np.einsum("kd,ke->kde", m, m)
    return {"m": m, "beta": eta["beta"], "Winv": Winv, "nu": eta["nu"], "a": eta["a"], "b": eta["b"]}


def _q_of(params):
    """The posterior's parameters from the family's (covariances are W^-1 / nu there)."""
    wc = params["weight_concentration"]
    return {"m": params["means"], "beta": params["mean_precision"],
            "Winv": params["covariances"] * params["degrees_of_freedom"][:, None, None],
            "nu": params["degrees_of_freedom"], "a": wc[:, 0], "b": wc[:, 1]}


def test_blend_then_m_step_is_the_natural_gradient_step_of_svi(blobs):
    """From a posterior q, the SVI step on a mini-batch B with step rho is
    ``eta <- (1 - rho) eta(q) + rho (eta_0 + N/|B| sum_B r_nk t(x_n))``; the engine's
    step (re-centre the running statistics, blend, M-step) must give the same posterior."""
    X = blobs[:900]
    K, rho = 3, 0.37
    family = vb.FAMILIES[("full", "dirichlet_process")]
    options = {"reg_covar": 0.0}  # reg_covar adds n_k * reg to W^-1: a statistic, not part of SVI
    priors = {"mean_prior": np.array([0.5, -1.0]), "covariance_prior": np.array([[2.0, 0.3], [0.3, 1.5]]),
              "mean_precision_prior": np.asarray(0.8), "degrees_of_freedom_prior": np.asarray(3.0),
              "weight_concentration_prior": np.asarray(0.1)}
    start = MixtureState(np.full(K, 1 / K), {"means": X[[0, 300, 600]], **priors})
    A, B = X[:500], X[500:]
    # the current posterior: the M-step of batch A's statistics (responsibilities of a
    # plain assignment, at full-data scale N)
    hard = vb.ASSIGN_FAMILIES["full"]
    stats_a = scale_stats(estep_block(A, None, (hard, [start]), 0)[0], N / len(A))
    stats_a.pop("resp_log_resp", None)
    stats_a["resp_log_resp"] = 0.0
    old = m_step(family, stats_a, start, options)
    # the engine's step
    stats_b = scale_stats(estep_block(B, None, (family, [old]), 0)[0], N / len(B))
    blended = blend_stats(recentred(family, stats_a, start.params, old.params), stats_b, rho)
    new = m_step(family, blended, old, options).params
    # the reference: natural parameters
    q = _q_of(old.params)
    log_joint = _expected_log_joint(B, q)
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    scale = N / len(B)
    nk = scale * resp.sum(axis=0)
    sx = scale * resp.T @ B
    sxx = scale * np.einsum("nk,nd,ne->kde", resp, B, B)
    b0, m0, nu0, alpha = 0.8, priors["mean_prior"], 3.0, 0.1
    Winv0 = priors["covariance_prior"]
    target = {  # eta_0 + N/|B| sum r t(x)
        "beta": b0 + nk,
        "beta_m": b0 * m0 + sx,
        "Winv_plus": Winv0 + b0 * np.outer(m0, m0) + sxx,
        "nu": nu0 + nk,
        "a": 1.0 + nk,
        "b": alpha + np.concatenate([np.cumsum(nk[::-1])[-2::-1], [0.0]]),
    }
    eta = {k: (1 - rho) * v + rho * target[k] for k, v in _natural(q).items()}
    want = _from_natural(eta)
    got = _q_of(new)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-9, err_msg=key)


# --------------------------------------------------------------------------- stepwise fits
def _counting_store(tmp_path, X, chunk_rows):
    path = tmp_path / "X.zarr"
    z = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype)
    z[:] = X
    store = CountingStore(path)
    return store, zarr.open_array(store, mode="r")


KW = dict(n_components=6, weight_concentration_prior=1e-2, tol=1e-5 * N, max_iter=300)


def test_stepwise_fit_of_a_streamed_store(tmp_path, blobs):
    """``auto`` on a streamed store is SVI: the sampling pass, one stepwise pass, then
    batch variational passes to ``tol``; the same lower bound as batch variational EM from
    the same start, the unneeded components switched off, reproducible."""
    store, arr = _counting_store(tmp_path, blobs, 250)  # 24 chunks
    with dask.config.set(scheduler="threads"):
        svi = quiet(BayesianGaussianMixture(random_state=1, persist=False, **KW).fit, arr)
        passes = store.passes(arr)
        again = quiet(BayesianGaussianMixture(random_state=1, persist=False, **KW).fit, arr)
    batch = quiet(BayesianGaussianMixture(random_state=1, algorithm="em", **KW).fit, blobs)
    kinds = [h["kind"] for h in svi.history_]
    assert "stepwise" in kinds and kinds.count("batch") == svi.n_iter_ == len(svi.lower_bounds_)
    assert passes == 2 + svi.n_iter_
    assert svi.converged_ and svi.n_iter_ < batch.n_iter_
    assert abs(svi.lower_bound_ - batch.lower_bound_) / N < 1e-3
    assert np.all(np.diff(svi.lower_bounds_) >= -1e-9 * np.abs(svi.lower_bounds_[1:]))
    weights = np.sort(svi.weights_)[::-1]
    assert np.all(weights[:3] > 0.3) and np.all(weights[3:] < 1e-3), weights
    np.testing.assert_array_equal(svi.means_, again.means_)
    np.testing.assert_array_equal(svi.covariances_, again.covariances_)
    assert svi.lower_bound_ == again.lower_bound_


def test_stepwise_from_given_means_reaches_the_batch_lower_bound(blobs):
    """From ``means_init`` (no sample: the start is completed by a pass, as for batch EM)
    both algorithms start from the same posterior."""
    means = blobs[np.random.default_rng(0).choice(N, 6, replace=False)]
    Xd = da.from_array(blobs, chunks=(250, -1))
    fits = {a: quiet(BayesianGaussianMixture(means_init=means, algorithm=a, **KW).fit, Xd) for a in ("em", "stepwise")}
    em, svi = fits["em"], fits["stepwise"]
    assert em.converged_ and svi.converged_
    assert abs(svi.lower_bound_ - em.lower_bound_) / N < 1e-3
    order = _align(svi.means_, em.means_)
    big = em.weights_ > 0.1
    np.testing.assert_allclose(svi.weights_[order][big], em.weights_[big], atol=1e-3)
    np.testing.assert_allclose(svi.means_[order][big], em.means_[big], atol=1e-2)


# --------------------------------------------------------------------------- partial_fit
def test_partial_fit_chunk_by_chunk_reaches_the_batch_fit(blobs):
    """One SVI step per call, N the rows seen so far. (With spare components, merging
    a split cluster takes many more steps than a dozen calls: K is the clusters'.)"""
    kw = dict(n_components=3, tol=1e-5 * N, max_iter=300)
    batch = quiet(BayesianGaussianMixture(random_state=0, algorithm="em", **kw).fit, blobs)
    est = BayesianGaussianMixture(random_state=0, **kw)
    for start in range(0, N, 500):
        quiet(est.partial_fit, blobs[start:start + 500])
    assert est.n_iter_ == N // 500
    order = _align(est.means_, batch.means_)
    np.testing.assert_allclose(est.means_[order], batch.means_, atol=0.05)
    np.testing.assert_allclose(est.weights_[order], batch.weights_, atol=0.03)
    assert abs(est.score(blobs) - batch.score(blobs)) < 1e-2
    # the posterior is that of the N rows seen: degrees of freedom nu_0 + n_k sum to K nu_0 + N
    np.testing.assert_allclose(est.degrees_of_freedom_.sum(), 3 * 2 + N, rtol=1e-12)
    assert est.mean_prior_.shape == (2,) and est.lower_bounds_ == []
    with pytest.raises(ValueError, match="X has 3 features, but BayesianGaussianMixture is expecting 2"):
        est.partial_fit(np.ones((10, 3)))
    assert est.n_iter_ == N // 500
    # after fit, partial_fit continues from the fitted posterior
    quiet(batch.partial_fit, blobs[:500])
    np.testing.assert_allclose(np.sort(batch.means_[:, 0]), np.sort(est.means_[:, 0]), atol=0.3)


# --------------------------------------------------------------------------- SQUAREM
def test_squarem_is_refused_for_variational_fits(blobs):
    family = vb.FAMILIES[("full", "dirichlet_process")]
    with pytest.raises(ValueError, match="variational family"):
        Squarem(family, MixtureState(np.ones(2) / 2, {"means": np.zeros((2, 2))}))
    kw = dict(n_components=4, means_init=blobs[:4], tol=1e-3, max_iter=200, algorithm="em")
    plain = quiet(BayesianGaussianMixture(**kw).fit, blobs)
    with dask.config.set({"dask_em.accelerate": True}), \
            pytest.warns(UserWarning, match="does not apply to BayesianGaussianMixture"):
        asked = BayesianGaussianMixture(**kw).fit(blobs)
    assert all("squarem" not in h for h in asked.history_)
    np.testing.assert_array_equal(asked.means_, plain.means_)
    assert asked.lower_bounds_ == plain.lower_bounds_
