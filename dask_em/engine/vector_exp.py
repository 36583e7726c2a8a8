"""Which ``exp`` the responsibilities use: numpy's, or dask-em's own compiled one.

The responsibilities take one ``exp`` per row and component (see
:func:`dask_em.engine.estep.responsibilities`). numpy vectorises its float64 ``exp``
only where it dispatches AVX-512 (x86-64-v4). Elsewhere (AVX2 servers such as AMD
EPYC before Zen 4, older Intel, ARM) it calls libm's scalar ``exp``: 5.2 to 9.5 ns an
element against 0.7 to 1.3, which made ``exp`` 29% of the diagonal-covariance E-step
(benchmarks/README.md). dask-em's own ``exp`` (:mod:`dask_em.engine._exp_numba`,
compiled with numba) runs at about 1 ns an element on either, within 0.9 ulp of the
exact value (libm's: 0.5), and :func:`softmax_floored` fuses it with the other passes
of the responsibilities. Where numpy's exp is vectorised, the two are as fast
(benchmarks/README.md), so the default keeps numpy's there.

The ``dask.config`` key ``dask_em.exp`` chooses, in each process that runs E-steps
(set it before starting a cluster, or in the workers' configuration, e.g. the
environment variable ``DASK_DASK_EM__EXP=numpy``):

- ``"auto"`` (default): the own ``exp`` where numpy's float64 ``exp`` is not
  vectorised (:func:`numpy_exp_is_vector`) and the compiled loop loads (numba is
  installed), else numpy's. With numba installed this is opt-out, not opt-in;
- ``"numba"``: the own ``exp``; an error if the compiled loop cannot be loaded;
- ``"numpy"``: numpy's.

numba is optional: ``pip install "dask-em[fast]"`` installs it. The kernel compiles
on its first use in a process (about a second) and numba caches it on disk (0.3 s to
load it; without a writable cache directory it compiles in every process). A process
that uses it holds about 100 MB more (numba 49 MB, LLVM 51 MB, measured on numba
0.68): count it in small worker memory limits, or set ``"numpy"``.
float32 data keep numpy's ``exp``, vectorised on AVX2 as well.
"""

import functools
import logging

import dask
import numpy as np

#: Values of the ``dask_em.exp`` setting.
EXP_CHOICES = ("auto", "numba", "numpy")
#: Lowest floor the own exp takes: at and above it ``2**k`` is a normal number. The
#: library's floors are -354 (the E-step's statistics) and -707.4 to -694 (the
#: scores, ``log(tiny) + log(K) + 1``); a lower one gets numpy's passes.
LOWEST_FLOOR = -708.0


@functools.lru_cache(maxsize=None)
def _kernel_error():
    """Why the compiled kernel cannot be loaded in this process (a message), or None.

    Loading it imports numba and compiles the loop or reads numba's cache; anything
    that fails there (numba missing, a broken llvmlite) leaves numpy's exp in use.
    """
    try:
        import dask_em.engine._exp_numba  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means: numpy's passes
        message = f"{type(exc).__name__}: {exc}"
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == "numba"):  # installed but broken
            logging.getLogger("dask_em").warning(
                "dask-em's compiled exp could not be loaded (%s); the responsibilities use numpy's exp", message
            )
        return message
    return None


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


def exp_setting():
    """The ``dask_em.exp`` setting of this process, checked (see the module docstring)."""
    choice = dask.config.get("dask_em.exp", "auto")
    if choice not in EXP_CHOICES:
        raise ValueError(
            f"dask.config 'dask_em.exp' is {choice!r}; it must be one of {', '.join(map(repr, EXP_CHOICES))} "
            "(dask_em.engine.vector_exp explains them)"
        )
    if choice == "numba" and _kernel_error() is not None:
        raise ImportError(
            f"dask.config 'dask_em.exp' is 'numba' but its compiled loop cannot be loaded in this process "
            f"({_kernel_error()}); install numba (pip install 'dask-em[fast]') or set 'dask_em.exp' to "
            "'auto' or 'numpy'"
        )
    return choice


def uses_own_exp(dtype) -> bool:
    """Whether the responsibilities of ``dtype`` rows use dask-em's own ``exp`` here."""
    if np.dtype(dtype) != np.float64:
        return False
    choice = exp_setting()
    return choice == "numba" or (choice == "auto" and not numpy_exp_is_vector() and _kernel_error() is None)


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
    from dask_em.engine._exp_numba import softmax_floored as kernel

    kernel(at, int(groups), float(floor), top, total)
