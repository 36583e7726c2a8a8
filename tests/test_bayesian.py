"""BayesianGaussianMixture against scikit-learn's, from the same initial responsibilities.

scikit-learn's reference starts from the one-hot assignment of every row to its
nearest given mean (what its ``"kmeans"`` initialisation does with k-means labels):
a subclass overrides ``_initialize_parameters`` to call its own ``_initialize(X,
resp)`` with those responsibilities; ours gets the same means through
``means_init``. Then both run ``max_iter`` iterations with ``tol=0``.
"""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import BayesianGaussianMixture as SkBGM

import dask_em
from dask_em import BayesianGaussianMixture
from tests._counting import CountComputes
from tests.conftest import make_blobs

PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]
COV_TYPES = ["full", "tied", "diag", "spherical"]
ATTRS = ["weights_", "means_", "covariances_", "mean_precision_", "degrees_of_freedom_", "lower_bound_"]
RTOL = 1e-6


class FromResponsibilities(SkBGM):
    """scikit-learn's estimator, started from given responsibilities."""

    def __init__(self, resp=None, **kwargs):
        super().__init__(**kwargs)
        self.resp = resp

    def _initialize_parameters(self, X, random_state, xp=None):
        self._initialize(X, self.resp)


def one_hot_nearest(X, means):
    d2 = ((X[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    resp = np.zeros((X.shape[0], means.shape[0]))
    resp[np.arange(X.shape[0]), d2.argmin(axis=1)] = 1.0
    return resp


def reference(X, means, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FromResponsibilities(resp=one_hot_nearest(X, means), **kwargs).fit(X)


def quiet_fit(est, X, **fit_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, **fit_kwargs)


def concentration(est):
    wc = est.weight_concentration_
    return np.stack(wc, axis=1) if isinstance(wc, tuple) else wc


def assert_same(ours, ref, shift=0.0):
    for name in ATTRS:
        expected = getattr(ref, name)
        got = getattr(ours, name)
        if name == "means_":
            got = got - shift
            # absolute: a mean near 0 has no relative precision to check
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(), err_msg=name)
        else:
            np.testing.assert_allclose(got, expected, rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(concentration(ours), concentration(ref), rtol=RTOL)
    assert ours.n_iter_ == ref.n_iter_


@pytest.fixture(scope="module")
def data():
    X = make_blobs(n=600, n_features=3, n_components=3, seed=3)
    rng = np.random.default_rng(7)
    means = X[rng.choice(len(X), 4, replace=False)]
    return X, means


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "ragged-dask", "shifted"])
def test_parity_with_scikit_learn(data, prior_type, cov_type, kind):
    X, means = data
    kwargs = dict(n_components=4, covariance_type=cov_type, weight_concentration_prior_type=prior_type,
                  tol=0.0, max_iter=12)
    ref = reference(X, means, **kwargs)  # on the centred data
    shift = 1e4 if kind == "shifted" else 0.0
    Xin = X + shift
    if kind == "ragged-dask":
        Xin = da.from_array(X, chunks=((50, 250, 7, 293), (3,)))
    ours = quiet_fit(BayesianGaussianMixture(means_init=means + shift, **kwargs), Xin)
    assert_same(ours, ref, shift)
    np.testing.assert_allclose(ours.mean_prior_ - shift, ref.mean_prior_, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(ours.covariance_prior_, ref.covariance_prior_, rtol=RTOL)
    assert ours.converged_ is False


@pytest.mark.parametrize("kernels", ["numpy", "numba"])  # numpy's kernels and the compiled ones (dask_em/compiled.py)
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])  # diag, spherical: one compiled loop
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_methods_match_scikit_learn(data, prior_type, covariance_type, kernels):
    X, means = data
    kwargs = dict(n_components=4, covariance_type=covariance_type, weight_concentration_prior_type=prior_type,
                  tol=0.0, max_iter=10)
    ref = reference(X, means, **kwargs)
    with dask.config.set({"dask_em.kernels": kernels}):
        ours = quiet_fit(BayesianGaussianMixture(means_init=means, **kwargs), X)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-6)
        np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
        lazy = ours.predict_proba(da.from_array(X, chunks=200))
        assert isinstance(lazy, da.Array)
        np.testing.assert_allclose(lazy.compute(), ref.predict_proba(X), rtol=1e-6, atol=1e-12)
    assert_same(ours, ref, 0.0)


def test_given_priors_match_scikit_learn(data):
    X, means = data
    kwargs = dict(n_components=4, covariance_type="diag", tol=0.0, max_iter=8, weight_concentration_prior=0.01,
                  mean_precision_prior=0.5, mean_prior=[1.0, -1.0, 0.5], degrees_of_freedom_prior=4.5,
                  covariance_prior=[2.0, 1.0, 3.0])
    assert_same(quiet_fit(BayesianGaussianMixture(means_init=means, **kwargs), X), reference(X, means, **kwargs))


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_lower_bound_never_decreases(prior_type):
    X = make_blobs(n=2000, n_features=3, n_components=4, seed=11)
    est = quiet_fit(BayesianGaussianMixture(6, weight_concentration_prior_type=prior_type, tol=0.0, max_iter=60,
                                            random_state=0), X)
    bounds = np.asarray(est.lower_bounds_)
    assert len(bounds) == 60 and est.lower_bound_ == bounds[-1]
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:])), np.diff(bounds).min()


def test_dirichlet_process_switches_off_unneeded_components():
    X = make_blobs(n=3000, n_features=2, n_components=3, seed=5, spread=8.0)
    est = BayesianGaussianMixture(10, weight_concentration_prior_type="dirichlet_process",
                                  weight_concentration_prior=1e-2, max_iter=500, tol=1e-6, random_state=0)
    est.fit(da.from_array(X, chunks=1000))
    assert est.converged_
    order = np.sort(est.weights_)[::-1]
    assert np.all(order[:3] > 0.2), order
    assert np.all(order[3:] < 1e-3), order


def test_passes_one_per_iteration(data):
    """means_init: one pass (nearest-mean assignment and data priors), then one per
    iteration (``persist=False``: every compute is a pass over the data; batch
    variational EM, which "auto" would not choose for streamed data)."""
    X, means = data

    Count = CountComputes

    with Count() as counter:
        quiet_fit(BayesianGaussianMixture(4, means_init=means, tol=0.0, max_iter=5, persist=False,
                                               algorithm="em"), da.from_array(X, chunks=150))
    assert counter.count == 1 + 5
    with Count() as counter:
        quiet_fit(BayesianGaussianMixture(4, tol=0.0, max_iter=5, random_state=0, persist=False,
                                               algorithm="em"), da.from_array(X, chunks=150))
    assert counter.count == 1 + 1 + 5  # plus the sampling pass


def test_sample_weight_counts_copies(data):
    X, means = data
    w = np.random.default_rng(0).integers(0, 3, size=len(X))
    kwargs = dict(n_components=4, tol=0.0, max_iter=6, means_init=means)
    weighted = quiet_fit(BayesianGaussianMixture(**kwargs), X, sample_weight=w)
    repeated = quiet_fit(BayesianGaussianMixture(**kwargs), np.repeat(X, w, axis=0))
    for name in ATTRS:
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-9, err_msg=name)


def test_n_init_and_warm_start(data):
    X, _ = data
    est = quiet_fit(BayesianGaussianMixture(4, n_init=3, max_iter=200, random_state=1), X)
    assert est.converged_
    warm = est.set_params(warm_start=True, max_iter=1)
    before = warm.lower_bound_
    quiet_fit(warm, X)
    assert warm.n_iter_ == 1 and warm.converged_  # continues from a converged bound
    assert abs(warm.lower_bound_ - before) < 1e-3


@pytest.mark.parametrize("algorithm", ["em", "stepwise"])
def test_distributed_matches_threaded(data, cluster_client, algorithm):
    """Equal (to 1e-10) on two worker processes and on the threaded scheduler, batch and
    stepwise: the latter given the same mini-batches (their default size follows
    the scheduler's thread count, which differs between the two on most machines)."""
    X, means = data
    Xd = da.from_array(X, chunks=120)
    kwargs = dict(n_components=4, covariance_type="full", tol=0.0, max_iter=8, means_init=means,
                  algorithm=algorithm, random_state=0)
    with dask.config.set({"dask_em.stepwise.batch_chunks": 2}):
        on_cluster = quiet_fit(BayesianGaussianMixture(**kwargs), Xd)
        with dask.config.set(scheduler="threads"):
            threaded = quiet_fit(BayesianGaussianMixture(**kwargs), Xd)
    for name in ATTRS:
        np.testing.assert_allclose(getattr(on_cluster, name), getattr(threaded, name), rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov_type", ["tied", "spherical"])
def test_save_load_round_trip(tmp_path, data, prior_type, cov_type):
    X, means = data
    est = quiet_fit(BayesianGaussianMixture(4, covariance_type=cov_type, weight_concentration_prior_type=prior_type,
                                            max_iter=10, means_init=means), X)
    path = est.save(tmp_path / "bgm.npz")
    back = dask_em.load(path)
    assert isinstance(back, BayesianGaussianMixture)
    for name in ATTRS + ["mean_prior_", "covariance_prior_", "precisions_", "degrees_of_freedom_prior_",
                         "weight_concentration_prior_", "mean_precision_prior_", "lower_bounds_"]:
        np.testing.assert_array_equal(getattr(back, name), getattr(est, name), err_msg=name)
    np.testing.assert_array_equal(concentration(back), concentration(est))
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))


def test_refusals(data):
    X, _ = data
    with pytest.raises(ValueError, match="degrees_of_freedom_prior"):
        BayesianGaussianMixture(2, degrees_of_freedom_prior=1.0).fit(X)
    with pytest.raises(ValueError, match="weight_concentration_prior_type"):
        BayesianGaussianMixture(2, weight_concentration_prior_type="stick").fit(X)
    with pytest.raises(ValueError, match="covariance_prior"):
        BayesianGaussianMixture(2, covariance_prior=np.eye(2)).fit(X)


def test_command_line_fit_and_predict(tmp_path, data, cluster_client):
    """``dask-em fit --model bayesian-gaussian`` on a Zarr store, then ``predict``."""
    import zarr

    from dask_em.cli import main

    X, _ = data
    store = tmp_path / "x.zarr"
    da.from_array(X, chunks=(150, 3)).to_zarr(str(store))
    address = cluster_client.scheduler.address
    assert main(["fit", str(store), "--model", "bayesian-gaussian", "-k", "5", "--covariance-type", "diag",
                 "--random-state", "0", "--scheduler", address, "--output", str(tmp_path / "m.npz"), "-q"]) == 0
    model = dask_em.load(tmp_path / "m.npz")
    assert isinstance(model, BayesianGaussianMixture) and model.covariance_type == "diag"
    assert main(["predict", str(tmp_path / "m.npz"), str(store), "--scheduler", address,
                 "--output", str(tmp_path / "labels.zarr"), "-q"]) == 0
    labels = zarr.open_group(str(tmp_path / "labels.zarr"), mode="r")["labels"][:]
    np.testing.assert_array_equal(labels, model.predict(X))
