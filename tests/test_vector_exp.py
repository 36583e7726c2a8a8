"""dask-em's own exp for the responsibilities (dask_em/engine/vector_exp.py), against an
extended-precision reference written here, and the ``dask_em.kernels`` setting."""

import os
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em.compiled import use_compiled
from dask_em.engine.estep import log_tiny, responsibilities
from dask_em.engine.vector_exp import LOWEST_FLOOR, numpy_exp_is_vector, softmax_floored, uses_own_exp
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
    with dask.config.set({"dask_em.kernels": "numba"}):
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
    with dask.config.set({"dask_em.kernels": "numba"}):
        resp, ll = responsibilities(wlp.copy(), False, floor, overwrite=True)
    np.testing.assert_array_equal(resp[::3, 1], 0.0)
    if floor >= LOWEST_FLOOR:  # the own exp: exact zeros at the floor only
        assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref)
        assert (resp[1::3, 1] > 0).all()
    else:  # numpy's passes: within exp(floor) (a subnormal number here)
        assert np.all(np.abs(resp - resp_ref) <= EPS8 * resp_ref + np.exp(floor))
    np.testing.assert_allclose(ll, ll_ref[0], rtol=1e-15, atol=2e-15)


def test_own_exp_is_within_an_ulp_of_an_extended_precision_exp():
    """The exp itself (``_exp_tile``) over [-708, 709], including the points farthest
    from a multiple of ln 2 (where the polynomial's error is largest), the floor, and
    values past its range."""
    from dask_em._exp_numba import TILE, X_MAX, _exp_tile

    rng = np.random.default_rng(5)
    k = np.arange(-1020, 1023)
    half = (k + 0.5) * np.log(2)
    x = np.concatenate([rng.uniform(-708, 709, 100_000), half, np.nextafter(half, -np.inf), -half])
    x = x[(x > -708) & (x <= X_MAX)]
    out = x.copy()
    bits, red = np.empty(TILE), np.empty(TILE)
    for start in range(0, x.size, TILE):
        _exp_tile(out[start : start + TILE], -708.0, bits, red)
    exact = np.exp(x.astype(np.longdouble))
    ulps = np.abs(out.astype(np.longdouble) - exact) / np.spacing(exact.astype(np.float64))
    assert ulps.max() <= 1.0
    special = np.array([-708.0, np.nextafter(-708.0, 0), -np.inf, np.nan, np.inf, X_MAX, np.nextafter(X_MAX, np.inf),
                        750.0, 0.0, -0.0])
    _exp_tile(special, -708.0, bits, red)
    assert special[0] == 0.0 and special[1] == pytest.approx(np.exp(np.nextafter(-708.0, 0)), rel=1e-15)
    assert special[2] == 0.0 and np.isnan(special[3]) and special[4] == np.inf
    assert special[5] == pytest.approx(np.exp(X_MAX), rel=1e-15)
    assert special[6] == special[7] == np.inf and special[8] == special[9] == 1.0


def test_float32_exp_is_within_an_ulp_of_float32():
    """float32's exp (``exp_rows32``, the full kernel's for float32 rows) over its whole
    range [-87, 0], against an 80-bit exp of the same float32 arguments: within one
    float32 ulp, exactly 0 at and below the floor (and for -inf), exactly 1 at the
    row's largest, the column sums and the entropy's ``sum r max(d, floor)``."""
    from dask_em._exp_numba import exp_rows32

    floor = -87.0
    rng = np.random.default_rng(5)
    half = (np.arange(-125, 1) + 0.5) * np.log(2)  # farthest from a multiple of ln 2
    x = np.concatenate([rng.uniform(floor, 0, 100_000), half, np.nextafter(half, -np.inf), [floor, -88.0, -np.inf]])
    x = x[x <= 0]
    m = x.size
    a = np.stack([np.zeros(m), x])  # the largest log-density of every column is 0: d = x
    r = np.empty((2, m), np.float32)
    top, total, dot = np.empty(m), np.empty(m, np.float32), np.empty(m, np.float32)
    exp_rows32(a, r, 0, 2, m, floor, top, total, np.empty(m, np.float32), np.empty(m, np.float32),
               np.empty(m, np.float32), dot)
    inside = x > floor
    exact = np.exp(x[inside].astype(np.float32).astype(np.longdouble))
    ulps = np.abs(r[1, inside].astype(np.longdouble) - exact) / np.spacing(exact.astype(np.float32))
    assert ulps.max() <= 1.0
    assert np.all(r[1, ~inside] == 0.0) and (~inside).sum() == 3
    assert np.all(r[0] == 1.0) and np.all(top == 0.0)
    np.testing.assert_array_equal(total, np.float32(1.0) + r[1])
    np.testing.assert_allclose(dot, r[1] * np.maximum(x, floor).astype(np.float32), rtol=1e-6)
    # columns whose largest is not finite, and a finite one, as the float64 exp_rows gives them
    from dask_em._exp_numba import TILE, exp_rows

    special = np.array([[np.inf, np.nan, 100.0, -np.inf], [-1.0, -1.0, 5.0, -np.inf]])
    r = np.empty((2, 4), np.float32)
    scratch = [np.empty(4, np.float32) for _ in range(4)]
    exp_rows32(special, r, 0, 2, 4, floor, np.empty(4), scratch[0], scratch[1], scratch[2], scratch[3],
               np.empty(0, np.float32))
    wide = special.copy()
    exp_rows(wide, 0, 2, 0, 4, floor, np.empty(4), np.empty(4), np.empty(TILE), np.empty(TILE), np.empty(4),
             np.empty(0))
    np.testing.assert_allclose(r, wide.astype(np.float32), rtol=1e-7)  # inf, NaN and 0 where float64 has them
    assert r[0, 0] == np.inf and np.isnan(r[0, 1]) and r[0, 2] == 1.0 and r[1, 2] == 0.0


def test_numpys_exp_meets_the_same_reference():
    """The bound above is the one numpy's own passes meet (but for the exp(floor)
    they subtract)."""
    wlp = _weighted_log_probs(3000, 8, seed=1)
    resp_ref, ll_ref = _reference(wlp, 1, FLOOR)
    with dask.config.set({"dask_em.kernels": "numpy"}):
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
    with dask.config.set({"dask_em.kernels": exp}), np.errstate(all="ignore"):
        resp, ll = responsibilities(wlp.copy(), False, FLOOR, overwrite=True)
    assert np.isnan(resp[:2]).all() and np.isnan(resp[2, 0])
    assert list(resp[2, 1:]) == [0.0, 0.0]
    assert ll[0] == -inf and np.isnan(ll[1]) and ll[2] == inf
    e = np.exp([0.0, -1.0])
    np.testing.assert_allclose(resp[3], [e[0] / e.sum(), e[1] / e.sum(), 0.0], rtol=1e-15)
    assert resp[3, 2] == 0.0
    assert ll[3] == pytest.approx(-1.0 + np.log(e.sum()), rel=1e-15)


def test_the_setting():
    with dask.config.set({"dask_em.kernels": "numpy"}):
        assert not uses_own_exp(np.float64)
    with dask.config.set({"dask_em.kernels": "numba"}):
        assert uses_own_exp(np.float64)
        assert not uses_own_exp(np.float32)  # numpy's float32 exp is vectorised on AVX2 too
    with dask.config.set({"dask_em.kernels": "auto"}):
        assert uses_own_exp(np.float64) == (not numpy_exp_is_vector())
    with dask.config.set({"dask_em.kernels": "fast"}), pytest.raises(ValueError, match="'auto', 'numba', 'numpy'"):
        uses_own_exp(np.float64)
    with pytest.raises(ValueError, match="floors of -708.0 and above"):
        softmax_floored(np.zeros((2, 3)), 1, -709.0, np.zeros((1, 3)), np.zeros((1, 3)))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_stacked_starts_with_the_own_exp_match_a_row_by_row_reference(covariance_type):
    """Two starts stacked into one set of GEMMs (groups=2 in the responsibilities):
    each start's statistics against scipy, row by row."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from dask_em.engine import estep_block
    from dask_em.engine.estep import MixtureState
    from dask_em.families import get_family
    from dask_em.families.gaussian import precisions_cholesky_from_covariances

    X = make_blobs(n=700, seed=8)
    rng = np.random.default_rng(9)
    states, refs = [], []
    for _ in range(2):
        weights = rng.dirichlet(np.ones(3))
        means = X[rng.choice(len(X), 3, replace=False)]
        scales = rng.uniform(0.5, 2.0, size=(3, X.shape[1]))
        cov = scales**2 if covariance_type == "diag" else np.array([np.diag(s**2) + 0.1 for s in scales])
        pc = precisions_cholesky_from_covariances(cov, covariance_type, 0.0)
        states.append(MixtureState(weights, {"means": means, "covariances": cov, "precisions_cholesky": pc}))
        full = np.array([np.diag(c) for c in cov]) if covariance_type == "diag" else cov
        wlp = np.column_stack([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(weights, means, full)])
        row_ll = logsumexp(wlp, axis=1)
        resp = np.exp(wlp - row_ll[:, None])
        refs.append({"nk": resp.sum(0), "s1": np.array([resp[:, k] @ (X - means[k]) for k in range(3)]),
                     "loglik": row_ll.sum()})
    with dask.config.set({"dask_em.kernels": "numba"}):
        stats = estep_block(X, None, (get_family(f"gaussian-{covariance_type}"), states), 0)
    for got, ref in zip(stats, refs):
        np.testing.assert_allclose(got["nk"], ref["nk"], rtol=1e-10)
        np.testing.assert_allclose(got["s1"], ref["s1"], rtol=1e-9, atol=1e-9)
        assert got["loglik"] == pytest.approx(ref["loglik"], rel=1e-12)


def test_without_a_cache_directory_the_loop_compiles_in_each_process():
    """numba raises "no locator available" for cache=True where it finds no writable
    cache directory; the loop is then compiled without a cache, not refused."""
    out = _python(
        "import numba, numpy as np, dask, pytest\n"
        "with pytest.raises(RuntimeError, match='no locator available'):\n"
        "    numba.njit(cache=True)(lambda x: x)\n"
        "from dask_em.engine.estep import responsibilities\n"
        "with dask.config.set({'dask_em.kernels': 'numba'}):\n"
        "    resp, ll = responsibilities(np.log([[1.0, 3.0]]), False, -354.0)\n"
        "assert np.allclose(resp, [[0.25, 0.75]], rtol=1e-15) and np.allclose(ll, np.log(4.0), rtol=1e-15)\n",
        NUMBA_CACHE_LOCATOR_CLASSES="ZipCacheLocator",  # applies to code in zip files only
    )
    assert out.returncode == 0, out.stderr


def test_a_bad_setting_stops_a_fit_before_its_first_pass():
    X = make_blobs(n=300)
    with dask.config.set({"dask_em.kernels": "numbaa"}), pytest.raises(ValueError, match="'dask_em.kernels' is 'numbaa'"):
        GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=100))


try:
    from numpy._core._multiarray_umath import __cpu_dispatch__
except ImportError:  # numpy 1.x
    from numpy.core._multiarray_umath import __cpu_dispatch__
#: numpy's AVX-512 targets, for NPY_DISABLE_CPU_FEATURES (as on a CPU without AVX-512)
_AVX512_TARGETS = " ".join(t for t in __cpu_dispatch__ if t.startswith(("AVX512", "X86_V4")))


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_numba_asked_for_but_missing_says_how_to_get_it():
    out = _python(
        "import sys; sys.modules['numba'] = None\n"
        "import dask, numpy as np\n"
        "from dask_em.engine.vector_exp import uses_own_exp\n"
        "with dask.config.set({'dask_em.kernels': 'auto'}):\n"
        "    assert not uses_own_exp(np.float64)\n"
        "with dask.config.set({'dask_em.kernels': 'numba'}):\n"
        "    uses_own_exp(np.float64)\n"
    )
    assert out.returncode == 1
    assert "ImportError" in out.stderr and "pip install 'dask-em[fast]'" in out.stderr
    assert "could not be loaded" not in out.stderr  # numba missing is no surprise: no warning


def test_a_broken_numba_leaves_numpys_exp_with_a_warning():
    out = _python(
        "import sys, types\n"
        "sys.modules['numba'] = types.ModuleType('numba')  # imports, but has no njit\n"
        "import dask, numpy as np\n"
        "from dask_em.engine.vector_exp import uses_own_exp\n"
        "with dask.config.set({'dask_em.kernels': 'auto'}):\n"
        "    assert not uses_own_exp(np.float64)\n",
        NPY_DISABLE_CPU_FEATURES=_AVX512_TARGETS,  # so that 'auto' tries the compiled loop
        DASK_DASK_EM__KERNELS="auto",
    )
    assert out.returncode == 0, out.stderr
    assert "dask-em's compiled kernels (dask_em._exp_numba) could not be loaded (AttributeError" in out.stderr


def _compiled_loaded():
    return "dask_em.families._gaussian_numba" in sys.modules


@pytest.mark.parametrize("memory, loads", [("400MiB", False), ("2GiB", True)])
def test_auto_keeps_numba_out_of_workers_with_little_memory(monkeypatch, memory, loads):
    """numba takes about 100 MB of a worker: under "auto", one of 400 MiB keeps numpy's
    kernels (it would pause at its memory threshold and leave the fit waiting)."""
    monkeypatch.setenv("DASK_DASK_EM__KERNELS", "auto")  # what the workers start with
    X = make_blobs(n=3000, seed=2)
    with dask.config.set({"dask_em.kernels": "auto"}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=memory,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        assert set(client.run(_compiled_loaded).values()) == {False}
        GaussianMixture(3, covariance_type="diag", max_iter=3, tol=0, random_state=0).fit(
            da.from_array(X, chunks=(1000, -1)))
        assert set(client.run(_compiled_loaded).values()) == {loads}


def test_a_numba_that_cannot_compile_the_kernels_leaves_numpys_with_a_warning():
    """Compiling is lazy: a numba whose compiled functions fail when called is found by
    the modules' check, not in the first E-step. "auto" then fits with numpy's kernels,
    "numba" says why it cannot."""
    out = _python(
        "import sys, types\n"
        "numba = types.ModuleType('numba')\n"
        "class Failing:  # what njit returns: the Python function kept, the call fails\n"
        "    def __init__(self, fn):\n"
        "        self.py_func = fn\n"
        "    def __call__(self, *args):\n"
        "        raise TypeError('cannot compile')\n"
        "numba.njit = lambda *a, **k: Failing(a[0]) if a and callable(a[0]) else Failing\n"
        "sys.modules['numba'] = numba\n"
        "import dask, numpy as np\n"
        "from dask_em import GaussianMixture\n"
        "from dask_em.compiled import use_compiled\n"
        "X = np.random.default_rng(0).normal(size=(300, 2))\n"
        "with dask.config.set({'dask_em.kernels': 'auto'}):\n"
        "    assert not use_compiled('dask_em.families._gaussian_numba')\n"
        "    GaussianMixture(2, covariance_type='diag', random_state=0).fit(X)\n"
        "with dask.config.set({'dask_em.kernels': 'numba'}):\n"
        "    use_compiled('dask_em.families._gaussian_numba')\n",
        DASK_DASK_EM__KERNELS="auto",
    )
    assert out.returncode == 1
    assert "dask-em's compiled kernels (dask_em.families._gaussian_numba) could not be loaded (TypeError" in out.stderr
    assert "ImportError" in out.stderr and "cannot compile" in out.stderr.splitlines()[-1]


def test_auto_takes_the_own_exp_where_numpys_is_not_vectorised():
    """numpy's AVX-512 targets turned off (as on an AVX2 CPU): its float64 exp is
    scalar, and the default setting takes dask-em's own."""
    out = _python(
        "import numpy as np\n"
        "from dask_em.engine.vector_exp import LOWEST_FLOOR, numpy_exp_is_vector, softmax_floored, uses_own_exp\n"
        "print(numpy_exp_is_vector(), uses_own_exp(np.float64))\n",
        NPY_DISABLE_CPU_FEATURES=_AVX512_TARGETS,
        DASK_DASK_EM__KERNELS="auto",  # the default, which tests/conftest.py overrides
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("covariance_type", ["full", "diag"])  # the own exp; the fused diag E-step
def test_a_cluster_of_worker_processes_fits_with_the_compiled_kernels(covariance_type):
    """The setting reaches the workers of a cluster started under it, the compiled
    kernels run there, and the fit equals the threaded scheduler's."""
    X = make_blobs(n=3000, seed=2)
    kw = dict(n_components=3, covariance_type=covariance_type, tol=0, max_iter=10, random_state=0)
    with dask.config.set({"dask_em.kernels": "numba"}):
        local = GaussianMixture(**kw).fit(da.from_array(X, chunks=(500, -1)))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            assert set(client.run(uses_own_exp, np.float64).values()) == {True}
            fused = client.run(use_compiled, "dask_em.families._gaussian_numba")
            assert set(fused.values()) == {True}
            remote = GaussianMixture(**kw).fit(da.from_array(X, chunks=(500, -1)))
    np.testing.assert_array_equal(remote.means_, local.means_)
    np.testing.assert_array_equal(remote.covariances_, local.covariances_)
    assert remote.lower_bound_ == local.lower_bound_
