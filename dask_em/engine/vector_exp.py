"""Which ``exp`` the responsibilities use: numpy's, or dask-em's own compiled one.

The responsibilities take one ``exp`` per row and component (see
:func:`dask_em.engine.estep.responsibilities`). numpy vectorises its float64 ``exp``
only where it dispatches AVX-512 (x86-64-v4). Elsewhere (AVX2 servers such as AMD
EPYC before Zen 4, older Intel, ARM) it calls libm's scalar ``exp``: 5.2 to 9.5 ns an
element against 0.7 to 1.3, which made ``exp`` 29% of the diagonal-covariance E-step
(benchmarks/README.md). dask-em's own ``exp`` (:mod:`dask_em._exp_numba`, compiled
with numba) runs at about 1 ns an element on either, within 0.9 ulp of the exact
value (libm's: 0.5), and :func:`softmax_floored` fuses it with the other passes of
the responsibilities. Where numpy's exp is vectorised, the two are as fast
(benchmarks/README.md), so under the default setting (``dask_em.kernels="auto"``, see
:mod:`dask_em.compiled`) numpy's is kept there. float32 data keep numpy's ``exp``,
vectorised on AVX2 as well.
"""

import functools

import numpy as np

from dask_em.compiled import LOWEST_FLOOR, use_compiled


@functools.lru_cache(maxsize=None)
def numpy_exp_is_vector() -> bool:
    """Whether numpy dispatches a vectorised float64 ``exp`` on this CPU.

    numpy has one for AVX-512 only (its dispatch target ``X86_V4`` in numpy 2.4,
    ``AVX512F`` / ``AVX512_SKX`` in numpy 1.x), used when the CPU has it and
    ``NPY_DISABLE_CPU_FEATURES`` does not turn it off. Elsewhere, ARM included, its
    float64 ``exp`` is libm's, one element at a time (measured with numpy 2.4.6:
    5.2 to 9.5 ns an element with AVX-512 turned off, 0.7 to 1.3 with it).
    """
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
        except ImportError:
            return False
    targets = set(__cpu_dispatch__) | set(__cpu_baseline__)
    return any(__cpu_features__.get(t) for t in ("X86_V4", "AVX512_SKX", "AVX512F") if t in targets)


def uses_own_exp(dtype) -> bool:
    """Whether the responsibilities of ``dtype`` rows use dask-em's own ``exp`` here."""
    if np.dtype(dtype) != np.float64:
        return False
    return use_compiled("dask_em._exp_numba", faster=not numpy_exp_is_vector())


def softmax_floored(at: np.ndarray, groups: int, floor: float, top: np.ndarray, total: np.ndarray) -> None:
    """Soft responsibilities in place, with dask-em's own ``exp``, in one compiled loop.

    What :func:`dask_em.engine.estep.responsibilities` does with numpy's passes:
    per group of ``K = at.shape[0] // groups`` components and per row, the largest
    weighted log-probability ``top`` (0 where it is not finite), ``exp(at - top)``
    (exactly 0 at or below ``floor``), their sum ``total``, and ``at`` divided by it
    (times its reciprocal), but ``exp(floor)`` is not subtracted from the others.
    With numpy's exp scalar (AVX-512 turned off), 36-48 against 105-110 ns a row for
    K = 8; where it is vectorised, 27-34 against 33-34 (benchmarks/README.md).

    Parameters
    ----------
    at : ndarray of shape (groups * K, n), float64, C-contiguous
        Weighted log-probabilities on entry, responsibilities on return.
    groups : int
        Mixtures side by side in ``at``, each normalised on its own.
    floor : float
        Differences ``at - top`` at or below it give exactly 0; at least
        :data:`LOWEST_FLOOR`.
    top, total : ndarray of shape (groups, n), float64, C-contiguous
        Filled with the largest log-probability (0 where not finite) and the sum of
        the exponentials, per row and mixture.
    """
    if not floor >= LOWEST_FLOOR:
        raise ValueError(f"softmax_floored takes floors of {LOWEST_FLOOR} and above, not {floor}")
    from dask_em._exp_numba import softmax_floored as kernel

    kernel(at, int(groups), float(floor), top, total)
