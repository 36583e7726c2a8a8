"""SQUAREM on the sufficient statistics (dask_em.engine.accelerate), against plain EM."""

import math

import numpy as np
import pytest

from dask_em.engine import MixtureState, estep_block, m_step
from dask_em.engine.accelerate import Squarem, extrapolate, run_squarem, valid_state
from dask_em.families import get_family
from dask_em.sample_init import initialize_on_sample

OPTIONS = {"reg_covar": 1e-6}


def _overlapping(n, D, K, seed, spread):
    """Rows of K anisotropic Gaussians whose centres are closer than their spread:
    plain EM converges slowly on them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    labels = rng.integers(0, K, n)
    mixers = rng.normal(size=(K, D, D)) * 0.5 + np.eye(D) * 0.5
    return np.einsum("nd,nde->ne", rng.normal(size=(n, D)), mixers[labels]) + centers[labels]


def _slow_problem(cov="diag"):
    X = _overlapping(3000, 3, 4, 0, 0.8)
    family = get_family(f"gaussian-{cov}")
    start = initialize_on_sample(X, family, 4, "kmeans", [0], options=OPTIONS, em_on_sample=False)[0].state
    return X, family, start


def _estep(X, family):
    return lambda states: estep_block(X, None, (family, states), 0)


def _mean_loglik(X, family, state):
    stats = estep_block(X, None, (family, [state]), 0)[0]
    return stats["loglik"] / stats["weight"]


def _plain_em(X, family, state, tol, max_iter, options=OPTIONS):
    previous = -math.inf
    for iteration in range(1, max_iter + 1):
        stats = estep_block(X, None, (family, [state]), 0)[0]
        mean_ll = stats["loglik"] / stats["weight"]
        state = m_step(family, stats, state, options)
        if abs(mean_ll - previous) < tol:
            return state, iteration
        previous = mean_ll
    raise AssertionError(f"plain EM did not converge in {max_iter} iterations")


def test_same_fixed_point_as_plain_em_in_far_fewer_e_steps():
    X, family, start = _slow_problem()
    plain, n_plain = _plain_em(X, family, start, 1e-12, 20_000)
    (acc,) = run_squarem(_estep(X, family), family, [start], options=OPTIONS, tol=1e-12, max_iter=20_000)
    assert acc.converged
    assert n_plain > 200  # a slow problem for plain EM
    assert acc.n_iter < n_plain / 3
    assert acc.counts["extrapolated"] > 0
    assert abs(_mean_loglik(X, family, acc.state) - _mean_loglik(X, family, plain)) < 1e-8
    np.testing.assert_allclose(np.sort(acc.state.weights), np.sort(plain.weights), atol=1e-4)


@pytest.mark.parametrize("judge", ["stabilised", "extrapolated"])
def test_accepted_log_likelihoods_never_decrease(judge):
    X, family, start = _slow_problem()
    # the accepted points: EM iterates always; extrapolations when they are judged themselves
    kinds = {"em", "extrapolated"} if judge == "extrapolated" else {"em"}
    acc = Squarem(family, start, OPTIONS, tol=1e-12, judge=judge)
    seen = []
    for _ in range(5000):
        stats = estep_block(X, None, (family, [acc.state]), 0)[0]
        seen.append(acc.update(stats))
        if acc.converged:
            break
    assert acc.converged
    accepted = [ll for ll, _, kind in seen if kind in kinds]
    assert len(accepted) > 10
    assert all(b >= a for a, b in zip(accepted, accepted[1:]))
    assert acc.counts["extrapolated"] > 0 and acc.counts["rejected"] > 0  # the safeguard was needed
    # the last accepted point's log-likelihood is the lower bound
    assert acc.lower_bound == accepted[-1]


def test_a_refused_extrapolation_costs_no_e_step_and_falls_back_to_em():
    """Statistics whose extrapolation gives a negative variance: the Gaussian M-step
    refuses them, and the next state is the plain EM step from the last one."""
    family = get_family("gaussian-diag")
    means = np.zeros((1, 2))

    def stats(s2, loglik):
        return {"nk": np.array([100.0]), "s1": np.zeros((1, 2)), "s2": np.array([s2]), "loglik": loglik,
                "weight": 100.0}

    state = MixtureState(np.ones(1), {"means": means})
    acc = Squarem(family, state, OPTIONS, step_max=math.inf)
    # variances 1, 0.5, 0.4 in feature 0 (alpha about -1.7) and 1, 0.55, 0.1 in
    # feature 1, which the step takes to about -0.5
    sequence = [stats([100.0, 100.0], -300.0), stats([50.0, 55.0], -250.0), stats([40.0, 10.0], -200.0)]
    for s in sequence:
        theta_c = acc.state
        acc.update(s)
    assert acc.counts == {"em": 3, "extrapolated": 0, "rejected": 0, "invalid": 1}
    expected = m_step(family, sequence[-1], theta_c, OPTIONS)
    np.testing.assert_array_equal(acc.state.params["covariances"], expected.params["covariances"])
    assert acc.safe_state is acc.state  # nothing pending: the plain step is the state


def test_extrapolation_is_exact_for_a_geometric_sequence():
    """For s_t = s* + lambda^t e (one rate), scheme S3 lands on s* in one step."""
    rng = np.random.default_rng(0)
    fixed, e, lam = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 0.9
    seq = [{"s1": fixed + lam**t * e, "loglik": 0.0} for t in range(3)]
    out, alpha = extrapolate(*seq)
    assert alpha == pytest.approx(-1 / (1 - lam))
    np.testing.assert_allclose(out["s1"], fixed, atol=1e-12)
    assert out["loglik"] == 0.0  # pass keys are not extrapolated
    capped, alpha = extrapolate(*seq, step_max=2.0)
    assert alpha == -2.0
    np.testing.assert_allclose(capped["s1"], fixed + (1 + 2 * (lam - 1)) ** 2 * e, atol=1e-12)


def test_valid_state_uses_the_family_checks():
    bern = get_family("bernoulli")
    good = MixtureState(np.array([0.5, 0.5]), {"means": np.array([[0.2, 0.9], [0.5, 0.1]])})
    assert valid_state(bern, good)
    assert not valid_state(bern, MixtureState(good.weights, {"means": np.array([[0.2, 1.2], [0.5, 0.1]])}))
    assert not valid_state(bern, MixtureState(np.array([1.2, -0.2]), good.params))
    assert not valid_state(bern, MixtureState(np.array([np.nan, 0.5]), good.params))


@pytest.mark.parametrize("name", ["bernoulli", "poisson"])
def test_unshifted_families_reach_the_same_fixed_point(name):
    rng = np.random.default_rng(3)
    K, D, n = 3, 6, 3000
    labels = rng.integers(0, K, n)
    if name == "bernoulli":
        probs = rng.uniform(0.1, 0.9, size=(K, D))
        X = (rng.random((n, D)) < probs[labels]).astype(np.float64)
    else:
        rates = rng.uniform(1.0, 6.0, size=(K, D))
        X = rng.poisson(rates[labels]).astype(np.float64)
    family = get_family(name)
    options = {"alpha": 1e-3}
    start = initialize_on_sample(X, family, K, "random", [0], options=options, em_on_sample=False)[0].state
    plain, n_plain = _plain_em(X, family, start, 1e-12, 50_000, options)
    (acc,) = run_squarem(_estep(X, family), family, [start], options=options, tol=1e-12, max_iter=50_000)
    assert acc.converged and acc.n_iter < n_plain / 3
    assert abs(_mean_loglik(X, family, acc.state) - _mean_loglik(X, family, plain)) < 1e-8


def test_hard_families_are_refused():
    family = get_family("kmeans")
    with pytest.raises(ValueError, match="hard-assignment"):
        Squarem(family, MixtureState(np.ones(2) / 2, {"means": np.zeros((2, 2))}))
    with pytest.raises(ValueError, match="judge"):
        Squarem(get_family("gaussian-diag"), MixtureState(np.ones(2) / 2, {"means": np.zeros((2, 2))}), judge="x")


def test_em_on_the_sample_is_accelerated():
    X, family, _ = _slow_problem()
    kw = dict(options=OPTIONS, tol=1e-12, max_iter_sample=20_000)
    fast = initialize_on_sample(X, family, 4, "kmeans", [0, 1], **kw)
    slow = initialize_on_sample(X, family, 4, "kmeans", [0, 1], accelerate=False, **kw)
    for a, b in zip(fast, slow):
        assert a.seed == b.seed and a.converged and b.converged
        assert a.n_iter < b.n_iter / 3
        assert abs(a.sample_loglik - b.sample_loglik) < 1e-8


# --------------------------------------------------------------------------- batch EM passes
def test_accelerated_batch_em_needs_fewer_passes_for_the_same_fit():
    import dask.array as da

    from dask_em.engine import run_em

    X, family, start = _slow_problem()
    Xd = da.from_array(X, chunks=(500, -1))
    kw = dict(tol=1e-10, max_iter=5000, options=OPTIONS)
    (plain,) = run_em(Xd, family, [start], **kw)
    (fast,) = run_em(Xd, family, [start], accelerate=True, **kw)
    assert plain.converged and fast.converged
    assert fast.n_iter < plain.n_iter / 3
    assert abs(_mean_loglik(X, family, fast.state) - _mean_loglik(X, family, plain.state)) < 1e-8
    kinds = [h["squarem"] for h in fast.history]
    assert len(kinds) == fast.n_iter and "extrapolated" in kinds
    # converged and lower_bound mean what they mean for EM: the last pass was a plain
    # EM step whose change met tol, and lower_bound is its mean log-likelihood
    last = fast.history[-1]
    assert last["squarem"] == "em" and abs(last["change"]) < 1e-10
    assert fast.lower_bound == last["mean_loglik"]
    accepted = [h["mean_loglik"] for h in fast.history if h["squarem"] == "em"]
    assert all(b >= a for a, b in zip(accepted, accepted[1:]))


def test_accelerate_setting_in_a_fit_and_a_resumed_checkpoint(tmp_path):
    import warnings

    import dask

    from dask_em import GaussianMixture

    X = _overlapping(3000, 3, 4, 0, 0.8)

    def fit(accelerate, **kw):
        with dask.config.set({"dask_em.accelerate": accelerate}), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GaussianMixture(4, covariance_type="diag", algorithm="em", tol=1e-10, max_iter=5000,
                                   random_state=0).fit(X, **kw)

    plain, fast = fit(False), fit(True)
    assert plain.converged_ and fast.converged_
    assert fast.n_iter_ < plain.n_iter_ / 2
    assert abs(fast.score(X) - plain.score(X)) < 1e-8
    assert "squarem" in fast.history_[-1] and "squarem" not in plain.history_[-1]
    assert fast.lower_bound_ == fast.history_[-1]["mean_loglik"]

    class Stop(Exception):
        pass

    def interrupt(iteration, results):
        if iteration == 8:
            raise Stop

    ckpt = tmp_path / "fit.ckpt"
    with pytest.raises(Stop):
        fit(True, checkpoint=ckpt, callback=interrupt)
    resumed = fit(True, checkpoint=ckpt)
    assert resumed.converged_ and resumed.n_iter_ > 8
    assert resumed.history_[7]["iteration"] == 8 and resumed.history_[8]["iteration"] == 9
    assert abs(resumed.score(X) - fast.score(X)) < 1e-8


@pytest.mark.parametrize("accelerate", [False, True])
def test_the_stopping_rule_sees_its_own_iteration(accelerate):
    """On both paths the rule is called after the iteration's history entry is
    appended, with the M-step it would stop at as ``result.state`` (a rule may read
    the new parameters and write to the entry, as the variational lower bound does)."""
    import dask.array as da

    from dask_em.engine import run_em
    from dask_em.engine.loop import LikelihoodChange

    X, family, start = _slow_problem()
    seen = []

    class Recording(LikelihoodChange):
        def __call__(self, result, stats, old_state, change):
            entry = result.history[-1]
            following = m_step(family, stats, old_state, OPTIONS)
            seen.append((entry["iteration"] == result.n_iter, entry["change"] == change,
                         np.array_equal(result.state.params["means"], following.params["means"])))
            entry["seen_by_rule"] = True
            return super().__call__(result, stats, old_state, change)

    (res,) = run_em(da.from_array(X, chunks=(500, -1)), family, [start], stopping=Recording(1e-6), max_iter=400,
                    options=OPTIONS, accelerate=accelerate)
    assert res.converged and len(seen) > 3
    assert all(all(s) for s in seen)
    assert res.history[-1]["seen_by_rule"]
    assert sum("seen_by_rule" in h for h in res.history) == len(seen)
