"""Anderson acceleration of Lloyd's passes (dask_em.engine.anderson), against closed
forms and Lloyd's iteration written in NumPy."""

import dask
import dask.array as da
import numpy as np
import pytest

from dask_em.engine import MixtureState, run_em
from dask_em.engine.anderson import EXTRAPOLATED, PLAIN, REJECTED, Anderson
from dask_em.estimators.kmeans import CentreShift
from dask_em.families import get_family


def _state(x):
    return MixtureState(np.ones(1), {"means": np.asarray(x, dtype=np.float64).reshape(1, -1)})


def test_an_affine_map_is_solved_after_dimension_plus_one_points():
    """For G(x) = A x + b in 2-D, type-II Anderson with two differences lands on the
    fixed point (I - A)^-1 b exactly: the residuals are affine in x."""
    A = np.array([[0.9, 0.05], [0.0, 0.5]])
    b = np.array([1.0, -2.0])
    fixed = np.linalg.solve(np.eye(2) - A, b)
    acc = Anderson(_state([0.0, 0.0]), depth=2)
    kinds = []
    for _ in range(3):
        x = acc.state.params["means"].ravel()
        g = A @ x + b
        kinds.append(acc.update(-float(np.sum((g - x) ** 2)), _state(g)))
    assert kinds == [PLAIN, PLAIN, EXTRAPOLATED]
    np.testing.assert_allclose(acc.state.params["means"].ravel(), fixed, rtol=1e-12)


def test_a_worse_point_is_rejected_for_the_last_accepted_plain_step():
    acc = Anderson(_state([0.0]))
    plain = _state([1.0])
    assert acc.update(-5.0, plain) == PLAIN
    acc.update(-4.0, _state([1.5]))  # accepted: the next point is an extrapolation
    assert acc.state.params["means"].ravel()[0] not in (1.0, 1.5)
    step_of_accepted = acc.plain
    assert acc.update(-4.5, _state([9.0])) == REJECTED  # below -4.0
    assert acc.state is step_of_accepted and acc.best == -4.0
    assert acc.update(-3.0, _state([2.0])) == PLAIN  # the history restarts
    assert acc.state.params["means"].ravel()[0] == 2.0


def test_strict_convergence_needs_the_previous_centroids():
    """Lloyd's strict convergence (the partition did not change) proves a fixed point
    only when the evaluated centres are the previous pass's centroids, not an
    extrapolation with the same partition."""
    stats = {"nk": np.array([3.0, 2.0]), "sig": np.array([7, 9])}

    class Result:
        def __init__(self, means):
            self.state = MixtureState(np.ones(2), {"means": means})
            self.history = [{}]

    for evaluated, expected in ((np.array([[0.0], [1.0]]), True), (np.array([[0.1], [1.0]]), False)):
        rule = CentreShift(0.0)
        rule.tol_abs = -1.0  # only the partition can stop it
        res = Result(np.array([[0.0], [1.0]]))  # the first pass's centroids
        assert not rule(res, stats, MixtureState(np.ones(2), {"means": np.array([[5.0], [6.0]])}), 0.0)
        old = MixtureState(np.ones(2), {"means": evaluated})
        res.state = MixtureState(np.ones(2), {"means": np.array([[0.0], [1.0]])})
        assert rule(res, stats, old, 0.0) is expected


def _overlapping(n, D, K, seed, spread):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    labels = rng.integers(0, K, n)
    mixers = rng.normal(size=(K, D, D)) * 0.5 + np.eye(D) * 0.5
    return np.einsum("nd,nde->ne", rng.normal(size=(n, D)), mixers[labels]) + centers[labels]


def _lloyd_step(X, centres):
    """One Lloyd step in NumPy: (new centres, mean squared distance)."""
    d2 = ((X[:, None, :] - centres[None]) ** 2).sum(axis=2)
    labels = d2.argmin(axis=1)
    new = np.stack([X[labels == k].mean(axis=0) for k in range(len(centres))])
    return new, d2.min(axis=1).mean()


@pytest.mark.parametrize("seed", [1, 2])
def test_accelerated_lloyd_meets_the_shift_test_in_fewer_passes(seed):
    """From the same start on overlapping clusters: fewer passes than plain Lloyd, and
    the centres it stops at pass Lloyd's test when checked in NumPy, at the same
    quality."""
    K, tol = 6, 1e-4
    X = _overlapping(40_000, 8, K, seed, 0.6)
    start = X[np.random.default_rng(seed).choice(len(X), K, replace=False)]
    Xd = da.from_array(X, chunks=(5_000, -1))
    family = get_family("kmeans")
    out = {}
    with dask.config.set(scheduler="threads"):
        for accelerate in (False, True):
            (res,) = run_em(Xd, family, [MixtureState(np.full(K, 1 / K), {"means": start})], max_iter=300,
                            stopping=CentreShift(tol, keep_evaluated=True), accelerate=accelerate)
            out[accelerate] = res
    plain, fast = out[False], out[True]
    assert plain.converged and fast.converged
    assert fast.n_iter < plain.n_iter
    kinds = [h["anderson"] for h in fast.history]
    assert EXTRAPOLATED in kinds and set(kinds) <= {PLAIN, EXTRAPOLATED, REJECTED}
    centres = fast.state.params["means"]
    step, inertia = _lloyd_step(X, centres)
    assert ((step - centres) ** 2).sum() <= tol * X.var(axis=0).mean()
    # the kept centres are the ones the last pass evaluated: its statistics are theirs
    assert fast.last_stats["loglik"] / fast.last_stats["weight"] == pytest.approx(-inertia, rel=1e-10)
    assert inertia <= _lloyd_step(X, plain.state.params["means"])[1] * (1 + 1e-4)


def test_a_resumed_stepwise_kmeans_continues_its_acceleration_bit_for_bit(tmp_path):
    """The checkpoint holds the acceleration's points: a stepwise KMeans stopped after
    two Lloyd passes and resumed ends where the uninterrupted fit ends."""
    import warnings

    import zarr

    from dask_em import KMeans

    X = _overlapping(20_000, 6, 5, 3, 0.6).astype(np.float32)
    path = str(tmp_path / "X.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(1_000, 6), dtype=X.dtype)[:] = X

    def fit(max_iter, checkpoint):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not converged after 2 passes
            return KMeans(5, random_state=0, max_iter=max_iter, tol=1e-7, persist=False).fit(path, checkpoint=checkpoint)

    # a fit with a checkpoint takes every Lloyd step by a pass (no steps in memory,
    # whose sums differ from a pass's in the last bits): the uninterrupted fit has one too
    whole = fit(100, tmp_path / "whole.ckpt")
    assert whole.converged_ and whole.n_iter_ >= 4  # Lloyd went on past the checkpoint's passes
    ckpt = tmp_path / "km.ckpt"
    fit(2, ckpt)
    resumed = fit(100, ckpt)
    assert resumed.n_iter_ == whole.n_iter_
    np.testing.assert_array_equal(resumed.cluster_centers_, whole.cluster_centers_)
    assert resumed.inertia_ == whole.inertia_
