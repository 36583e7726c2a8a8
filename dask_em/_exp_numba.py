"""dask-em's own vectorised ``exp`` and the responsibilities' compiled loop, and what
the compiled kernels share (:func:`compiled`, :func:`tile_rows`) (imports numba: load
lazily; :mod:`dask_em.compiled` says when they run).

:func:`softmax_floored` (used by :mod:`dask_em.engine.vector_exp`) computes the soft
responsibilities one tile of rows at a time (:func:`_exp_rows`, also the Gaussian
compiled E-step's), with an ``exp`` of its own (:func:`_exp_tile`):
``exp(x)`` as ``2**k * exp(r)``, with ``x = k ln 2 + r`` and ``|r| <= ln(2) / 2``:

- ``k`` is rounded with the 1.5 * 2**52 shifter, whose low bits then hold ``k`` as
  an integer, so ``2**k`` is built from the exponent bits without a float-to-int
  conversion (AVX2 has no packed one for 64-bit integers);
- ``r = (x - k c1) - k c2``, with ``c1 + c2 = ln 2`` and ``c1`` short enough that
  ``k c1`` is exact (Cody and Waite);
- ``exp(r)`` is its Taylor polynomial of degree 13, whose truncation error
  (``0.347**14 / 14! < 5e-18``) is below the rounding of Horner's scheme.

Measured against an 80-bit ``exp`` (2,000,000 points over [-708, 709]): within 0.86
ulp (relative error 1.35e-16), against 0.71 ulp for numpy's AVX-512 exp and 0.51 for
libm's, which it replaces where numpy has no vectorised exp. The three loops of
:func:`_exp_tile` each vectorise (256-bit vectors on this project's Xeon) where one
loop mixing the float and integer views of the same memory would not.

:func:`_exp_rows32` is the float32 version, for the full-covariance kernel's float32
rows (whose log-densities are only as precise as float32 makes them): the same steps
with the 1.5 * 2**23 shifter, ``ln 2`` split as in Cephes' ``expf`` and a Taylor
polynomial of degree 7 (truncation ``0.347**8 / 8! < 6e-9``), in float32's 16 lanes
of an AVX-512 vector: within 0.89 float32 ulp (relative 7.5e-8) of an 80-bit ``exp``
over [-87, 0] (tests/test_vector_exp.py).
"""

import functools
import math

import numba
import numpy as np

#: Rows per tile: a tile's rows of the K components and the scratch arrays stay in L1/L2.
TILE = 512
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # 90852 / 2**17: k * _LN2_HI is exact for |k| < 2**36
_LN2_LO = 1.42860682030941723212e-06
_SHIFTER = 6755399441055744.0  # 1.5 * 2**52
_EXP_BIAS = np.int64(1023) << np.int64(52)
#: Above this, 2**k would overflow the exponent; numpy's exp overflows at 709.78.
X_MAX = 709.0
_DEGREE = 13
_C = np.array([1.0 / math.factorial(i) for i in range(_DEGREE + 1)])  # Taylor coefficients
# float32's (_exp_rows32)
_LOG2E_32 = np.float32(_LOG2E)
_LN2_HI_32 = np.float32(0.693359375)  # 355 / 2**9: k * _LN2_HI_32 is exact in float32 for |k| < 2**15
_LN2_LO_32 = np.float32(-2.12194440e-4)
_SHIFTER_32 = np.float32(12582912.0)  # 1.5 * 2**23
_EXP_BIAS_32 = np.int32(127 << 23)
_DEGREE_32 = 7
_C32 = _C[: _DEGREE_32 + 1].astype(np.float32)
_X_MAX_32 = np.float32(88.0)  # above, 2**k would overflow float32's exponent (exp overflows at 88.72)


_OPTIONS = dict(nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})

#: Values of one tile of the E-step kernels (the Gaussian and K-means ones): its rows,
#: (D, rows), stay in the L1 cache (48 KiB on the Xeon measured: tiles of 128 to 256
#: rows of D=16 ran as fast, 384 slower).
TILE_VALUES = 4096


def tile_rows(n_features: int) -> int:
    """Rows per tile of the E-step kernels for ``n_features`` columns: 32 to 256."""
    return int(min(256, max(32, TILE_VALUES // max(n_features, 1))))


def compiled(fn=None, *, fastmath=_OPTIONS["fastmath"]):
    """``fn`` compiled by numba, its machine code cached on disk where numba finds a
    writable place (the package's ``__pycache__``, the user's cache directory or
    ``NUMBA_CACHE_DIR``); where it finds none (numba raises "no locator available"),
    compiled in each process instead (about a second). ``fastmath``: numba's flags."""
    if fn is None:
        return functools.partial(compiled, fastmath=fastmath)
    options = dict(_OPTIONS, fastmath=fastmath)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:
        return numba.njit(cache=False, **options)(fn)


@numba.njit(inline="always", **_OPTIONS)
def _exp_tile(t, floor, bits, red):  # pragma: no cover - compiled
    """``t = exp(t)`` in place above ``floor``, 0 at or below, ``inf`` above
    :data:`X_MAX`; ``t`` at most :data:`TILE` long, ``bits`` and ``red`` scratch.
    ``floor`` at least -708 (:data:`dask_em.compiled.LOWEST_FLOOR`), so ``2**k`` is normal."""
    m = t.size
    ibits = bits.view(np.int64)
    for i in range(m):
        x = t[i]
        x = floor if x < floor else (X_MAX if x > X_MAX else x)
        shifted = x * _LOG2E + _SHIFTER
        k = shifted - _SHIFTER
        red[i] = (x - k * _LN2_HI) - k * _LN2_LO
        bits[i] = shifted
    for i in range(m):
        ibits[i] = (ibits[i] << 52) + _EXP_BIAS
    for i in range(m):
        r = red[i]
        p = _C[_DEGREE]
        for d in range(_DEGREE - 1, -1, -1):  # Horner; a constant trip count, unrolled
            p = p * r + _C[d]
        x = t[i]
        t[i] = np.inf if x > X_MAX else (0.0 if x <= floor else p * bits[i])


@numba.njit(inline="always", **_OPTIONS)
def _top(a, first, K, start, m, top):  # pragma: no cover - compiled
    """``top[:m]``, the largest of each column of ``a[first : first + K, start : start + m]``
    (NaN if any is; 0 where not finite: the row's exps then say so)."""
    for i in range(m):
        top[i] = a[first, start + i]
    for k in range(first + 1, first + K):
        row = a[k, start : start + m]
        for i in range(m):
            v = row[i]
            top[i] = v if (v > top[i] or v != v) else top[i]
    for i in range(m):
        v = top[i]
        top[i] = v if v - v == 0.0 else 0.0


@numba.njit(inline="always", **_OPTIONS)
def _exp_rows(a, first, K, start, m, floor, top, total, bits, red, saved, dot):  # pragma: no cover - compiled
    """The block ``a[first : first + K, start : start + m]`` (one mixture's
    log-densities, a column per row of data; ``a`` C-contiguous, so that the loops over
    its rows vectorise), in place: ``top[:m]`` the largest of each column (NaN if any
    is; 0 where not finite), the block becomes ``exp(block - top)``, exactly 0 at or
    below ``floor`` (:func:`_exp_tile`), and ``total[:m]`` their sums. With ``dot`` at
    least ``m`` long (else empty), also ``dot = sum_k exp(d_k) max(d_k, floor)``,
    ``d_k = block - top`` (``saved``: scratch), which an entropy ``sum r log r`` needs."""
    entropy = dot.shape[0] >= m
    stop = start + m
    _top(a, first, K, start, m, top)
    for i in range(m):
        total[i] = 0.0
    if entropy:
        for i in range(m):
            dot[i] = 0.0
    for k in range(first, first + K):
        row = a[k, start:stop]
        for i in range(m):
            row[i] -= top[i]
        if entropy:  # at the floor when below: r is 0 there, and 0 * -inf would be NaN
            for i in range(m):
                saved[i] = row[i] if row[i] > floor else floor
        _exp_tile(row, floor, bits, red)
        for i in range(m):
            total[i] += row[i]
        if entropy:
            for i in range(m):
                dot[i] += row[i] * saved[i]


def _exp_rows32(a, r, first, K, m, floor, top, total, bits, red, saved, dot):  # pragma: no cover - compiled
    """:func:`_exp_rows` for float32 results: ``top[:m]`` (float64) the largest of each
    column of ``a[first : first + K, :m]`` (float64 log-densities), and
    ``r[first : first + K, :m]`` (float32) ``exp(a - top)``, the difference rounded to
    float32 (an absolute error of at most ``|a - top| * 6e-8``, below that of
    log-densities from float32 rows), exactly 0 at or below ``floor`` (at least
    :data:`dask_em.compiled.LOWEST_FLOOR_32`), ``inf`` above 88 (a column whose largest
    is not finite, as :func:`_exp_rows`); ``total``, ``bits``, ``red``, ``saved``,
    ``dot``: float32, as for :func:`_exp_rows`."""
    entropy = dot.shape[0] >= m
    fl = np.float32(floor)
    zero = np.float32(0.0)
    ibits = bits.view(np.int32)
    _top(a, first, K, 0, m, top)
    for i in range(m):
        total[i] = zero
    if entropy:
        for i in range(m):
            dot[i] = zero
    for k in range(first, first + K):
        row = a[k]
        out = r[k]
        for i in range(m):  # as _exp_tile: the reduced argument and 2**k's bits, in three loops
            x = np.float32(row[i] - top[i])  # at most 0, but where the column's largest is not finite
            out[i] = x
            x = fl if x < fl else (_X_MAX_32 if x > _X_MAX_32 else x)
            shifted = x * _LOG2E_32 + _SHIFTER_32
            n = shifted - _SHIFTER_32
            red[i] = (x - n * _LN2_HI_32) - n * _LN2_LO_32
            bits[i] = shifted
        if entropy:
            for i in range(m):
                saved[i] = out[i] if out[i] > fl else fl
        for i in range(m):
            ibits[i] = (ibits[i] << np.int32(23)) + _EXP_BIAS_32
        for i in range(m):
            v = red[i]
            p = _C32[_DEGREE_32]
            for d in range(_DEGREE_32 - 1, -1, -1):
                p = p * v + _C32[d]
            x = out[i]
            e = np.float32(np.inf) if x > _X_MAX_32 else (zero if x <= fl else p * bits[i])
            out[i] = e
            total[i] += e
        if entropy:
            for i in range(m):
                dot[i] += out[i] * saved[i]


#: :func:`_exp_rows` compiled on its own, without ``fastmath``'s ``reassoc``, for
#: kernels compiled with it (``reassoc`` would fold the exp's shifter, ``+ S - S``,
#: away if it were inlined there). Those kernels' numba caches hold a copy of it and
#: are keyed by their own source file only: after editing this file in a source
#: checkout, delete their ``__pycache__/*.nbi`` and ``*.nbc`` (an installed release
#: writes both files anew).
exp_rows = numba.njit(**_OPTIONS)(_exp_rows.py_func)
exp_rows32 = numba.njit(**_OPTIONS)(_exp_rows32)


@compiled
def softmax_floored(at, groups, floor, top, total):  # pragma: no cover - compiled
    """Responsibilities in place, as numpy's passes in
    :func:`dask_em.engine.estep.responsibilities` compute them, one tile of rows at a
    time: per group of ``at.shape[0] // groups`` components, the maximum ``top``
    (NaN if any is; 0 where not finite), ``exp(at - top)`` floored, their sum
    ``total``, and ``at`` times its reciprocal. ``at`` (groups * K, n) and ``top``,
    ``total`` (groups, n): float64, C-contiguous."""
    n = at.shape[1]
    K = at.shape[0] // groups
    bits = np.empty(TILE, dtype=np.float64)
    red = np.empty(TILE, dtype=np.float64)
    scale = np.empty(TILE, dtype=np.float64)
    none = np.empty(0, dtype=np.float64)
    for start in range(0, n, TILE):
        stop = min(start + TILE, n)
        m = stop - start
        for g in range(groups):
            tt = total[g, start:stop]
            _exp_rows(at, g * K, K, start, m, floor, top[g, start:stop], tt, bits, red, none, none)
            for j in range(m):
                scale[j] = 1.0 / tt[j]
            for k in range(K):
                row = at[g * K + k, start:stop]
                for j in range(m):
                    row[j] *= scale[j]


def check():
    """Run the kernels once on a few values (compiling them, or loading numba's cache),
    so that a numba that cannot compile them fails here (see :mod:`dask_em.compiled`)."""
    at = np.array([[0.0, -1.0], [-2.0, -3.0]])
    top, total = np.empty((1, 2)), np.empty((1, 2))
    softmax_floored(at, 1, -354.0, top, total)
    if not np.allclose(at.sum(axis=0), 1.0):
        raise RuntimeError(f"the compiled responsibilities do not sum to 1: {at}")
