"""dask-em's own exp for the responsibilities (dask_em/engine/vector_exp.py), against an
extended-precision reference written here, and the ``dask_em.exp`` setting."""

import os
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em.engine.estep import log_tiny, responsibilities
from dask_em.engine.vector_exp import LOWEST_FLOOR, numpy_exp_is_vector, uses_own_exp
from tests.conftest import make_blobs

FLOOR = 0.5 * log_tiny(np.float64)  # the E-step's floor
EPS8 = 8 * np.finfo(np.float64).eps  # exp, a sum of 8 and a division: a few roundings


def _reference(wlp, groups, floor):
    """Responsibilities and row log-likelihoods in 80-bit floats, row by row."""
    n, KK = wlp.shape
    K = KK // groups
    resp = np.zeros((n, KK))
    ll = np.zeros((groups, n))
    for i in range(n):
        for g in range(groups):
            a = wlp[i, g * K : (g + 1) * K]
            top = a.max()
            d = a - top  # in float64, as the kernels take it: the floor applies to it
            e = np.where(d > floor, np.exp(d.astype(np.longdouble)), 0)
            resp[i, g * K : (g + 1) * K] = e / e.sum()
            ll[g, i] = np.log(e.sum()) + top
    return resp, ll


def _weighted_log_probs(n, KK, seed):
    """Spread from 0 to -800 below each row's best: exp's whole range, the floor, and
    entries at and around it exactly."""
    rng = np.random.default_rng(seed)
    wlp = rng.uniform(-800.0, 0.0, size=(n, KK)) * rng.uniform(0, 1, size=(n, 1)) ** 3 - 40.0
    wlp[::5, 1] = wlp[1::5, 1] = 0.0  # the rows' best (all others are below -40)
    wlp[::5, 0] = FLOOR  # exactly at the floor below it
    wlp[1::5, 0] = np.nextafter(FLOOR, 0)  # just above
    return wlp


@pytest.mark.parametrize("n", [1, 7, 511, 512, 513, 3000])
@pytest.mark.parametrize("groups", [1, 2])
def test_own_responsibilities_match_an_extended_precision_reference(n, groups):
    wlp = _weighted_log_probs(n, 8 * groups, seed=n + groups)
    resp_ref, ll_ref = _reference(wlp, groups, FLOOR)
    with dask.config.set({"dask_em.exp": "numba"}):
        assert uses_own_exp(np.float64)
        resp, ll = responsibilities(wlp.copy(), False, FLOOR, overwrite=True, groups=groups)
    ll = ll.reshape(groups, n)
    assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-15, atol=2e-15)
    # below the floor exactly 0, above it never
    np.testing.assert_array_equal(resp == 0, resp_ref == 0)
    assert (resp_ref == 0).any() and (resp_ref[::5, 0] == 0).all() and (resp_ref[1::5, 0] > 0).all()


@pytest.mark.parametrize("floor", [log_tiny(np.float64) + np.log(8) + 1.0, -720.0])
def test_the_lowest_floors(floor):
    """The floor the E-step's scoring takes (-705, 2**k still normal) and one below the
    own exp's range, which numpy's passes take instead: both exact."""
    rng = np.random.default_rng(3)
    wlp = -rng.uniform(0, 800, size=(600, 8))
    wlp[:, 0] = 0.0
    wlp[::3, 1] = floor
    wlp[1::3, 1] = np.nextafter(floor, 0)
    resp_ref, ll_ref = _reference(wlp, 1, floor)
    with dask.config.set({"dask_em.exp": "numba"}):
        resp, ll = responsibilities(wlp.copy(), False, floor, overwrite=True)
    np.testing.assert_array_equal(resp[::3, 1], 0.0)
    if floor >= LOWEST_FLOOR:  # the own exp: exact zeros at the floor only
        assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref)
        assert (resp[1::3, 1] > 0).all()
    else:  # numpy's passes: within exp(floor) (a subnormal number here)
        assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref + np.exp(floor))
    np.testing.assert_allclose(ll, ll_ref[0], rtol=1e-15, atol=2e-15)


def test_numpys_exp_meets_the_same_reference():
    """The bound above is the one numpy's own passes meet (but for the exp(floor)
    they subtract)."""
    wlp = _weighted_log_probs(3000, 8, seed=1)
    resp_ref, ll_ref = _reference(wlp, 1, FLOOR)
    with dask.config.set({"dask_em.exp": "numpy"}):
        resp, ll = responsibilities(wlp.copy(), False, FLOOR, overwrite=True)
    # numpy's passes take exp(floor) off every exp: absolutely within that
    assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref + np.exp(FLOOR))
    np.testing.assert_allclose(ll, ll_ref[0], rtol=1e-15, atol=2e-15)


@pytest.mark.parametrize("exp", ["numba", "numpy"])
def test_rows_without_a_finite_best(exp):
    """Both exps alike: no finite component gives NaN responsibilities and a -inf
    (all -inf) or NaN log-likelihood; an infinite one NaN for it, 0 for the others,
    and +inf."""
    inf, nan = np.inf, np.nan
    wlp = np.array([
        [-inf, -inf, -inf],  # no component can have the row
        [0.0, nan, -1.0],
        [inf, 0.0, -1.0],
        [-1.0, -2.0, -inf],  # one impossible component: finite
    ])
    with dask.config.set({"dask_em.exp": exp}), np.errstate(all="ignore"):
        resp, ll = responsibilities(wlp.copy(), False, FLOOR, overwrite=True)
    assert np.isnan(resp[:2]).all() and np.isnan(resp[2, 0])
    assert list(resp[2, 1:]) == [0.0, 0.0]
    assert ll[0] == -inf and np.isnan(ll[1]) and ll[2] == inf
    e = np.exp([0.0, -1.0])
    np.testing.assert_allclose(resp[3], [e[0] / e.sum(), e[1] / e.sum(), 0.0], rtol=1e-15)
    assert resp[3, 2] == 0.0
    assert ll[3] == pytest.approx(-1.0 + np.log(e.sum()), rel=1e-15)


def test_the_setting():
    with dask.config.set({"dask_em.exp": "numpy"}):
        assert not uses_own_exp(np.float64)
    with dask.config.set({"dask_em.exp": "numba"}):
        assert uses_own_exp(np.float64)
        assert not uses_own_exp(np.float32)  # numpy's float32 exp is vectorised on AVX2 too
    with dask.config.set({"dask_em.exp": "auto"}):
        assert uses_own_exp(np.float64) == (not numpy_exp_is_vector())
    with dask.config.set({"dask_em.exp": "fast"}), pytest.raises(ValueError, match="'auto', 'numba', 'numpy'"):
        uses_own_exp(np.float64)


def test_a_bad_setting_stops_a_fit_before_its_first_pass():
    X = make_blobs(n=300)
    with dask.config.set({"dask_em.exp": "numbaa"}), pytest.raises(ValueError, match="'dask_em.exp' is 'numbaa'"):
        GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=100))


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_numba_asked_for_but_missing_says_how_to_get_it():
    out = _python(
        "import sys; sys.modules['numba'] = None\n"
        "import dask, numpy as np\n"
        "from dask_em.engine.vector_exp import uses_own_exp\n"
        "with dask.config.set({'dask_em.exp': 'auto'}):\n"
        "    assert not uses_own_exp(np.float64)\n"
        "with dask.config.set({'dask_em.exp': 'numba'}):\n"
        "    uses_own_exp(np.float64)\n"
    )
    assert out.returncode == 1
    assert "ImportError" in out.stderr and "pip install 'dask-em[fast]'" in out.stderr


def test_auto_takes_the_own_exp_where_numpys_is_not_vectorised():
    """numpy's AVX-512 targets turned off (as on an AVX2 CPU): its float64 exp is
    scalar, and the default setting takes dask-em's own."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_dispatch__
    off = " ".join(t for t in __cpu_dispatch__ if t.startswith(("AVX512", "X86_V4")))
    out = _python(
        "import numpy as np\n"
        "from dask_em.engine.vector_exp import LOWEST_FLOOR, numpy_exp_is_vector, uses_own_exp\n"
        "print(numpy_exp_is_vector(), uses_own_exp(np.float64))\n",
        NPY_DISABLE_CPU_FEATURES=off,
        DASK_DASK_EM__EXP="auto",  # the default, which tests/conftest.py overrides
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_cluster_of_worker_processes_fits_with_the_own_exp():
    """The setting reaches the workers of a cluster started under it, the compiled
    kernel runs there, and the fit equals the threaded scheduler's."""
    X = make_blobs(n=3000, seed=2)
    kw = dict(n_components=3, covariance_type="diag", tol=0, max_iter=10, random_state=0)
    with dask.config.set({"dask_em.exp": "numba"}):
        local = GaussianMixture(**kw).fit(da.from_array(X, chunks=(500, -1)))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            assert set(client.run(uses_own_exp, np.float64).values()) == {True}
            remote = GaussianMixture(**kw).fit(da.from_array(X, chunks=(500, -1)))
    np.testing.assert_array_equal(remote.means_, local.means_)
    np.testing.assert_array_equal(remote.covariances_, local.covariances_)
    assert remote.lower_bound_ == local.lower_bound_
