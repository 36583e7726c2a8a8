"""The compiled E-step of diagonal and spherical Gaussian mixtures
(dask_em/families/_gaussian_numba.py, through ``gaussian.fused_stats``), against a
row-by-row reference written here; scikit-learn parity of whole fits with it is in
tests/test_gaussian_parity.py."""

import dataclasses

import dask
import numpy as np
import pytest
from scipy.special import logsumexp, xlogy
from scipy.stats import multivariate_normal, norm

from dask_em.compiled import compiled_error
from dask_em.engine.estep import log_tiny
from dask_em.families import gaussian

FLOOR = 0.5 * log_tiny(np.float64)  # the E-step's floor


def _reference(X, w, means, sigma, weights, groups):
    """Statistics about the means and per-mixture log-likelihoods, row by row, with
    scipy's normal log-density (``sigma``: (K, D) standard deviations)."""
    X = X.astype(np.float64)
    KG, D = means.shape
    K = KG // groups
    s1, s2, nk, ll, rlr = np.zeros((KG, D)), np.zeros((KG, D)), np.zeros(KG), np.zeros(groups), np.zeros(groups)
    for i, x in enumerate(X):
        lp = norm.logpdf(x, means, sigma).sum(axis=1) + np.log(weights)
        for g in range(groups):
            part = slice(g * K, (g + 1) * K)
            row_ll = logsumexp(lp[part])
            r = np.exp(lp[part] - row_ll)
            ll[g] += row_ll * w[i]
            rlr[g] += w[i] * np.sum(xlogy(r, r))
            r *= w[i]
            nk[part] += r
            s1[part] += r[:, None] * (x - means[part])
            s2[part] += r[:, None] * (x - means[part]) ** 2
    return s1, s2, nk, ll, rlr


def _mixture(rng, K, D, groups, offset, spherical):
    means = offset + rng.normal(scale=3.0, size=(K * groups, D))
    sigma = rng.uniform(0.5, 2.0, size=(K * groups, 1 if spherical else D)) * np.ones((1, D))
    weights = np.concatenate([rng.dirichlet(np.ones(K)) for _ in range(groups)])
    prec_chol = 1.0 / (sigma[:, 0] if spherical else sigma)
    return means, sigma, weights, prec_chol


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D", [1, 5])  # odd: the loops' sweeps of 4 and 2 features and their remainders
def test_statistics_match_a_row_by_row_reference(n, covariance_type, groups, weighted, D):
    rng = np.random.default_rng(n + 7 * groups + D)
    K = 4
    means, sigma, weights, prec_chol = _mixture(rng, K, D, groups, 0.0, covariance_type == "spherical")
    X = means[rng.integers(0, K, size=n)] + rng.normal(size=(n, D))
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    params = {"means": means, "precisions_cholesky": prec_chol}
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = gaussian.fused_stats(X, w, params, np.log(weights), groups, FLOOR, covariance_type, entropy=True)
    s1, s2, nk, ll, rlr = _reference(X, np.ones(n) if w is None else w, means, sigma, weights, groups)
    if covariance_type == "spherical":
        s2 = s2.sum(axis=1)
    scale = nk.sum() / groups  # the statistics' size: rounding is relative to it
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(stats["s1"], s1, rtol=1e-10, atol=1e-11 * scale)
    np.testing.assert_allclose(stats["s2"], s2, rtol=1e-10, atol=1e-11 * scale)
    np.testing.assert_allclose(stats["loglik"], ll, rtol=1e-12)
    np.testing.assert_allclose(stats["resp_log_resp"], rlr, rtol=1e-10, atol=1e-12 * scale)


def _full_mixture(rng, K, D, offset):
    """Means, covariances (K, D, D), weights and scikit-learn's upper-triangular
    precision factors ``P`` (``P P^T`` the precision) of a random mixture."""
    means = offset + rng.normal(scale=3.0, size=(K, D))
    A = rng.normal(scale=0.6, size=(K, D, D))
    covariances = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(D)
    prec_chol = np.swapaxes(np.linalg.inv(np.linalg.cholesky(covariances)), 1, 2)
    return means, covariances, rng.dirichlet(np.ones(K)), prec_chol


def _full_reference(X, w, means, covariances, weights, groups):
    """:func:`_reference` for full covariances, with scipy's multivariate normal."""
    X = X.astype(np.float64)
    KG, D = means.shape
    K = KG // groups
    lp = np.stack([np.atleast_1d(multivariate_normal.logpdf(X, means[k], covariances[k])) for k in range(KG)], axis=1)
    lp = lp.reshape(len(X), KG) + np.log(weights)
    s1, s2, nk, ll, rlr = np.zeros((KG, D)), np.zeros((KG, D, D)), np.zeros(KG), np.zeros(groups), np.zeros(groups)
    for i, x in enumerate(X):
        for g in range(groups):
            part = slice(g * K, (g + 1) * K)
            row_ll = logsumexp(lp[i, part])
            r = np.exp(lp[i, part] - row_ll)
            ll[g] += row_ll * w[i]
            rlr[g] += w[i] * np.sum(xlogy(r, r))
            r *= w[i]
            nk[part] += r
            diff = x - means[part]
            s1[part] += r[:, None] * diff
            s2[part] += r[:, None, None] * diff[:, :, None] * diff[:, None, :]
    return s1, s2, nk, ll, rlr


@pytest.mark.parametrize("n", [1, 383, 384, 385, 800])  # tiles of 384 rows
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D", [1, 5, 9])  # the loop's blocks of 4 features and their remainders
def test_full_covariance_matches_a_row_by_row_reference(n, groups, weighted, D):
    from dask_em.families._gaussian_full_numba import full_tile_rows

    assert full_tile_rows(D) == 384
    rng = np.random.default_rng(n + 7 * groups + D)
    K = 4
    parts = [_full_mixture(rng, K, D, 0.0) for _ in range(groups)]
    means, covariances, weights, prec_chol = (np.concatenate([p[i] for p in parts]) for i in range(4))
    X = means[rng.integers(0, K * groups, size=n)] + rng.normal(size=(n, D))
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    _full_stats_match(X, w, means, covariances, prec_chol, weights, groups, FLOOR,
                      {"nk": (1e-12, 1e-12), "s1": (1e-10, 1e-11), "s2": (1e-10, 1e-11), "loglik": (1e-12, 0),
                       "resp_log_resp": (1e-10, 1e-12)})


def _full_stats_match(X, w, means, covariances, prec_chol, weights, groups, floor, tolerances):
    """fused_stats's full-covariance statistics (the compiled loop) against the
    row-by-row reference: ``tolerances[key] = (rtol, atol as a fraction of the rows'
    weight)``."""
    params = {"means": means, "precisions_cholesky": prec_chol}
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = gaussian.fused_stats(X, w, params, np.log(weights), groups, floor, "full", entropy=True)
    s1, s2, nk, ll, rlr = _full_reference(X, np.ones(len(X)) if w is None else w, means, covariances, weights, groups)
    expected = {"nk": nk, "s1": s1, "s2": s2, "loglik": ll, "resp_log_resp": rlr}
    scale = nk.sum() / groups
    for key, (rtol, atol) in tolerances.items():
        np.testing.assert_allclose(stats[key], expected[key], rtol=rtol, atol=atol * scale, err_msg=key)


# float32 rows: diag computes in float64 (the reference takes the same float32 values);
# full whitens them in float32, to float32's rounding of the centred rows (about 1e-7
# relative), not of their offset (1e6 times that). Tolerances: nk, s1 and s2, loglik.
FLOAT32_TOLERANCES = {"diag": (1e-10, 1e-8, 1e-12), "full": (1e-6, 1e-5, 1e-8)}


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_far_from_the_origin_and_in_float32(covariance_type):
    """Data at +1e6 fit as centred data (the rows are shifted before any square);
    1,700 rows: full's float32 tiles of 768 rows, and a part tile."""
    rng = np.random.default_rng(3)
    K, n = 3, 1700
    if covariance_type == "diag":
        means, sigma, weights, prec_chol = _mixture(rng, K, 4, 1, 1e6, False)
    else:
        means, covariances, weights, prec_chol = _full_mixture(rng, K, 6, 1e6)
    X = (means[rng.integers(0, K, size=n)] + rng.normal(size=(n, means.shape[1]))).astype(np.float32)
    means = means.astype(np.float32).astype(np.float64)  # representable in the data's dtype
    params = {"means": means, "precisions_cholesky": prec_chol}
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = gaussian.fused_stats(X, None, params, np.log(weights), 1, 0.5 * log_tiny(np.float32), covariance_type)
    if covariance_type == "diag":
        s1, s2, nk, ll, _ = _reference(X, np.ones(n), means, sigma, weights, 1)
    else:
        s1, s2, nk, ll, _ = _full_reference(X, np.ones(n), means, covariances, weights, 1)
    counts, sums, loglik = FLOAT32_TOLERANCES[covariance_type]
    np.testing.assert_allclose(stats["nk"], nk, rtol=counts)
    np.testing.assert_allclose(stats["s1"], s1, rtol=sums, atol=0.1 * sums * n)
    np.testing.assert_allclose(stats["s2"], s2, rtol=sums, atol=0.1 * sums * n)
    np.testing.assert_allclose(stats["loglik"], ll, rtol=loglik)


@pytest.mark.parametrize("n", [767, 768, 769])  # float32 tiles of 768 rows
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_full_covariance_with_weights_groups_and_entropy(n, groups, weighted):
    """float32 rows' responsibilities are float32 (exp_rows32), normalised and summed
    in float64: within float32's rounding of the reference's, for every sum, with
    sample weights, two mixtures side by side and the entropy terms; D=5, the loop's
    blocks of four features and a remainder."""
    from dask_em.families._gaussian_full_numba import full_tile_rows

    D, K = 5, 3
    assert full_tile_rows(D, 4) == 768
    rng = np.random.default_rng(n + 7 * groups + weighted)
    parts = [_full_mixture(rng, K, D, 0.0) for _ in range(groups)]
    means, covariances, weights, prec_chol = (np.concatenate([p[i] for p in parts]) for i in range(4))
    means = means.astype(np.float32).astype(np.float64)
    X = (means[rng.integers(0, K * groups, size=n)] + rng.normal(size=(n, D))).astype(np.float32)
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    _full_stats_match(X, w, means, covariances, prec_chol, weights, groups, 0.5 * log_tiny(np.float32),
                      {"nk": (1e-6, 1e-6), "s1": (1e-5, 1e-6), "s2": (1e-5, 1e-6), "loglik": (1e-7, 0),
                       "resp_log_resp": (1e-5, 1e-6)})


def test_float32_sums_are_about_the_float64_means():
    """float32 rows, means float32 cannot hold, 4e4 apart: the loop sums the rows about
    the means rounded to float32, and the statistics come out about the float64 means,
    as the reference's (without the move, s1 was off by nk times the rounding, up to
    1e-3 here, and the means moved at every iteration)."""
    rng = np.random.default_rng(11)
    K, D, n = 2, 3, 1_500
    _, covariances, weights, prec_chol = _full_mixture(rng, K, D, 0.0)
    means = 1e6 + np.array([[0.123456789, -0.3141592, 0.27182818], [4e4 + 0.161803398, -0.5772156, 0.69314718]])
    X = (means[rng.integers(0, K, size=n)] + rng.normal(size=(n, D))).astype(np.float32)
    params = {"means": means, "precisions_cholesky": prec_chol}
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = gaussian.fused_stats(X, None, params, np.log(weights), 1, 0.5 * log_tiny(np.float32), "full")
    s1, s2, nk, ll, _ = _full_reference(X, np.ones(n), means, covariances, weights, 1)
    mr = means - gaussian._reference(X, None).astype(np.float64)  # the means about the loop's shift of the rows
    assert np.abs(mr.astype(np.float32) - mr).max() > 1e-4  # which float32 cannot hold
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-9)
    np.testing.assert_allclose(stats["s1"], s1, rtol=0, atol=1e-6 * n)
    np.testing.assert_allclose(stats["s2"], s2, rtol=1e-5, atol=1e-6 * n)


def test_responsibilities_below_the_floor_are_exactly_zero():
    """A component far from a row gets exactly 0 from it, not a subnormal remainder,
    rows exactly between two components split evenly, and a row whose every
    log-density is far below exp's range (-320,000 at best) still counts, whole."""
    D = 2
    means = np.array([[0.0, 0.0], [2.0, 0.0], [200.0, 0.0]])
    params = {"means": means, "precisions_cholesky": np.ones((3, D))}
    X = np.array([[1.0, 0.0], [1.0, 0.5], [0.0, 0.0], [1000.0, 0.0]])
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = gaussian.fused_stats(X, None, params, np.log(np.full(3, 1 / 3)), 1, FLOOR, "diag")
    r_far = 1 / (1 + np.exp(-2.0))  # the third row: components 0 and 1 at squared distances 0 and 4
    np.testing.assert_allclose(stats["nk"], [1.0 + r_far, 2.0 - r_far, 1.0], rtol=1e-14)
    assert stats["nk"][2] == 1.0 and np.all(stats["s1"][2] == [800.0, 0.0])  # the last row alone


def test_a_component_of_weight_zero_gets_nothing_and_no_nan():
    """log(0) = -inf: the component's responsibilities are exactly 0 and its r log r
    terms 0 (not 0 * -inf), as scipy's xlogy gives."""
    rng = np.random.default_rng(5)
    means, sigma, _, prec_chol = _mixture(rng, 3, 2, 1, 0.0, False)
    weights = np.array([0.5, 0.0, 0.5])
    X = means[rng.integers(0, 3, size=300)] + rng.normal(size=(300, 2))
    params = {"means": means, "precisions_cholesky": prec_chol}
    with dask.config.set({"dask_em.kernels": "numba"}), np.errstate(divide="ignore"):
        stats = gaussian.fused_stats(X, None, params, np.log(weights), 1, FLOOR, "diag", entropy=True)
        s1, s2, nk, ll, rlr = _reference(X, np.ones(300), means, sigma, weights, 1)
    assert stats["nk"][1] == 0.0 and np.all(stats["s1"][1] == 0.0)
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-12)
    np.testing.assert_allclose(stats["loglik"], ll, rtol=1e-12)
    np.testing.assert_allclose(stats["resp_log_resp"], rlr, rtol=1e-10)


@pytest.mark.parametrize("kernels", ["numpy", "numba", "auto"])
@pytest.mark.parametrize("covariance_type, D", [("diag", 3), ("spherical", 3), ("full", 3), ("full", 65), ("tied", 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("floor", [FLOOR, -88.0, -720.0])
def test_fused_slab_rows_answers_as_fused_stats_runs(kernels, covariance_type, D, dtype, floor):
    """The E-step's longer slabs (Family.fused_slab_rows) exactly where fused_stats
    runs its loop: a longer slab on numpy's path would hold larger work arrays."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, D)).astype(dtype)
    factors = {"tied": np.eye(D), "full": np.stack([np.eye(D)] * 2), "diag": np.ones((2, D)), "spherical": np.ones(2)}
    cov = factors[covariance_type]
    params = {"means": np.asarray(X[:2], dtype=np.float64), "precisions_cholesky": cov}
    with dask.config.set({"dask_em.kernels": kernels}):
        runs = gaussian.fused_stats(X, None, params, np.log([0.5, 0.5]), 1, floor, covariance_type) is not None
        rows = gaussian.fused_slab_rows(2, D, dtype, floor, covariance_type)
    assert (rows is not None) == runs
    if runs:  # 8 MiB of the rows as the loop reads them (diag's in float64) and of their weights
        read = D * (np.dtype(dtype).itemsize if covariance_type == "full" else 8) + 8
        assert rows * read <= gaussian.FUSED_SLAB_BYTES < (rows + 1) * read


def test_the_e_step_runs_the_loop_on_longer_slabs():
    """estep_block hands the compiled loop slabs of fused_slab_rows (8 MiB of rows),
    numpy's kernel slabs of slab_rows; the two give the same statistics."""
    from dask_em.engine.estep import MixtureState, estep_block, slab_rows
    from dask_em.families import get_family

    rng = np.random.default_rng(8)
    K, D, n = 3, 4, 300_000  # 9.6 MB of rows: two slabs for the loop, 37 for numpy's kernel
    means, covariances, weights, prec_chol = _full_mixture(rng, K, D, 0.0)
    X = means[rng.integers(0, K, size=n)] + rng.normal(size=(n, D))
    family = get_family("gaussian-full")
    states = [MixtureState(weights, {"means": means, "precisions_cholesky": prec_chol})]
    calls = []

    def counted(X, *args, **kwargs):  # the family's fused_stats, counting the rows of each call
        calls.append(len(X))
        return family.fused_stats(X, *args, **kwargs)

    with dask.config.set({"dask_em.kernels": "numba"}):
        (fused,) = estep_block(X, None, (dataclasses.replace(family, fused_stats=counted), states), 0)
    with dask.config.set({"dask_em.kernels": "numpy"}):
        (generic,) = estep_block(X, None, (family, states), 0)
    slab = gaussian.FUSED_SLAB_BYTES // ((D + 1) * 8)  # the rows and their weights
    assert calls == [slab, n - slab]
    assert slab_rows(K, D) < calls[0]
    for key in ("nk", "s1", "s2"):
        np.testing.assert_allclose(fused[key], generic[key], rtol=1e-10, atol=1e-8 * n)
    np.testing.assert_allclose(fused["loglik"], generic["loglik"], rtol=1e-12)


def test_runs_only_where_it_applies():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    diag = {"means": X[:2], "precisions_cholesky": np.ones((2, 3))}
    full = {"means": X[:2], "precisions_cholesky": np.stack([np.eye(3)] * 2)}
    logw = np.log([0.5, 0.5])
    with dask.config.set({"dask_em.kernels": "numpy"}):
        assert gaussian.fused_stats(X, None, diag, logw, 1, FLOOR, "diag") is None
        assert gaussian.fused_stats(X, None, full, logw, 1, FLOOR, "full") is None
    with dask.config.set({"dask_em.kernels": "numba"}):
        tied = {"means": X[:2], "precisions_cholesky": np.eye(3)}
        assert gaussian.fused_stats(X, None, tied, logw, 1, FLOOR, "tied") is None
        assert gaussian.fused_stats(X, None, diag, logw, 1, -720.0, "diag") is None  # below the exp's range
        X32 = X.astype(np.float32)  # float32 rows' full responsibilities: float32's exp's range
        assert gaussian.fused_stats(X32, None, full, logw, 1, -88.0, "full") is None
        assert gaussian.fused_stats(X32, None, full, logw, 1, -87.0, "full") is not None
        assert gaussian.fused_stats(X32, None, diag, logw, 1, -88.0, "diag") is not None  # float64 there
        assert gaussian.fused_stats(X, None, diag, logw, 1, FLOOR, "diag") is not None
        assert gaussian.fused_stats(X, None, full, logw, 1, FLOOR, "full") is not None
    # under "auto", full covariances with many features keep BLAS (gaussian.FUSED_FULL_FEATURES)
    D = gaussian.FUSED_FULL_FEATURES + 1
    wide = {"means": np.zeros((2, D)), "precisions_cholesky": np.stack([np.eye(D)] * 2)}
    Xw = rng.normal(size=(50, D))
    with dask.config.set({"dask_em.kernels": "auto"}):
        if compiled_error("dask_em.families._gaussian_full_numba") is None:  # numba loads here (the test extra)
            assert gaussian.fused_stats(Xw[:, :3], None, full, logw, 1, FLOOR, "full") is not None
        assert gaussian.fused_stats(Xw, None, wide, logw, 1, FLOOR, "full") is None
    with dask.config.set({"dask_em.kernels": "numba"}):
        assert gaussian.fused_stats(Xw, None, wide, logw, 1, FLOOR, "full") is not None
