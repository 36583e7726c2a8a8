"""Which kernels run: numpy's, or dask-em's compiled ones (numba, optional).

dask-em's kernels are NumPy. Some are also compiled with numba, where one loop over
tiles of rows that stay in the CPU's caches beats numpy's passes over whole arrays:

- **the diagonal and spherical Gaussian E-step** (:mod:`dask_em.families._gaussian_numba`):
  the log-densities, the responsibilities and the statistics of a slab in one loop,
  1.6-1.9x faster per row than numpy's kernel and 1.5-1.9x per fit with AVX-512, 2.9x
  and 2.3x without (benchmarks/README.md);
- **the full-covariance Gaussian E-step** (:mod:`dask_em.families._gaussian_full_numba`), up to
  :data:`dask_em.families.gaussian.FUSED_FULL_FEATURES` features under ``"auto"``: the
  rows whitened with each component's Cholesky factor and their squares summed in the
  same loop with the rows' sums about each mean, instead of BLAS's thin GEMMs (float32
  rows in float32, their responsibilities too); per fit 2.9-3.8x faster at D=16 and
  2.4x at D=64 on an AMD EPYC (Zen 4), 1.7-2.5x at D=16 on an Intel Xeon;
- **the Lloyd step of K-means** (:mod:`dask_em.families._kmeans_numba`): the distances,
  the nearest centres and the clusters' sums of a slab in one loop, 2-3x faster per row
  than numpy's kernel (1.2-2.3x per Lloyd iteration on 2 threads; benchmarks/README.md);
- **the soft responsibilities of the other families** (:mod:`dask_em._exp_numba`, used
  by :mod:`dask_em.engine.vector_exp`): the floored ``exp`` and its sums, with an
  ``exp`` of dask-em's own. numpy vectorises its float64 ``exp`` only where it
  dispatches AVX-512; elsewhere (AVX2 servers such as AMD EPYC before Zen 4, older
  Intel, ARM) this loop is 2-3x faster. Where numpy's ``exp`` is vectorised, the two
  are as fast, so the default keeps numpy's there.

The ``dask.config`` key ``dask_em.kernels`` chooses, in each process that runs E-steps
(set it before starting a cluster, or in the workers' configuration, e.g. the
environment variable ``DASK_DASK_EM__KERNELS=numpy``):

- ``"auto"`` (default): each compiled kernel where it is faster (above: the Gaussian
  ones, full covariances up to 64 features, and the K-means one) and loads
  (numba is installed), else numpy's; but numpy's in ``distributed`` workers whose
  memory limit is below :data:`MIN_WORKER_MEMORY`. With numba installed this is
  opt-out, not opt-in;
- ``"numba"``: every compiled kernel; an error if they cannot be loaded;
- ``"numpy"``: numpy's kernels only.

numba is optional: ``pip install "dask-em[fast]"`` installs it. A kernel compiles on its
first use in a process (1-3 s; the full-covariance ones, float64 and float32, 8-12 s) and numba caches it on
disk (0.3 s to load it; without a writable cache directory it compiles in every
process). A process that loads numba holds about 100 MB more (numba 49 MB, LLVM 51 MB,
measured on numba 0.68): count it in small worker memory limits, or set ``"numpy"``.
Each module compiles on the first use of its kernel (the full-covariance one takes about
100 MB more while it does).
"""

import functools
import importlib
import logging

import dask

#: Values of the ``dask_em.kernels`` setting.
KERNEL_CHOICES = ("auto", "numba", "numpy")
#: Under ``"auto"``, workers with a smaller memory limit keep numpy's kernels: numba
#: takes about 100 MB of them, more while it compiles, and a worker of 400 MiB then
#: pauses at its memory threshold, leaving the fit waiting.
MIN_WORKER_MEMORY = 1 << 30
#: Lowest floor the compiled ``exp`` takes: at and above it ``2**k`` is a normal number.
#: The library's floors are -354 (the E-step's statistics; -43.7 for float32) and -707.4
#: to -694 (the scores, ``log(tiny) + log(K) + 1``); a lower one gets numpy's kernels.
LOWEST_FLOOR = -708.0
#: The same for float32 results (the full-covariance E-step's responsibilities of
#: float32 rows, :func:`dask_em._exp_numba.exp_rows32`); a lower floor gets numpy's kernels.
LOWEST_FLOOR_32 = -87.0


@functools.lru_cache(maxsize=None)
def compiled_error(module: str = "dask_em._exp_numba"):
    """Why the compiled kernels of ``module`` cannot be loaded in this process (a
    message), or None.

    Loading them imports numba and runs the module's ``check()`` on a few values, which
    compiles its kernels or reads numba's cache; anything that fails there (numba
    missing, a broken llvmlite, a numba that cannot compile them) leaves numpy's kernels
    in use.
    """
    try:
        importlib.import_module(module).check()
    except Exception as exc:  # noqa: BLE001 - any failure means: numpy's kernels
        message = f"{type(exc).__name__}: {exc}"
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == "numba"):  # installed but broken
            logging.getLogger("dask_em").warning(
                "dask-em's compiled kernels (%s) could not be loaded (%s); numpy's are used", module, message
            )
        return message
    return None


def kernel_setting() -> str:
    """The ``dask_em.kernels`` setting of this process, checked (see the module docstring)."""
    choice = dask.config.get("dask_em.kernels", "auto")
    if choice not in KERNEL_CHOICES:
        raise ValueError(
            f"dask.config 'dask_em.kernels' is {choice!r}; it must be one of "
            f"{', '.join(map(repr, KERNEL_CHOICES))} (dask_em.compiled explains them)"
        )
    if choice == "numba" and compiled_error() is not None:
        raise ImportError(
            f"dask.config 'dask_em.kernels' is 'numba' but dask-em's compiled kernels cannot be loaded in this "
            f"process ({compiled_error()}); install numba (pip install 'dask-em[fast]') or set "
            "'dask_em.kernels' to 'auto' or 'numpy'"
        )
    return choice


def _small_worker() -> bool:
    """Whether this code runs in a ``distributed`` worker with a memory limit below
    :data:`MIN_WORKER_MEMORY`."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a worker's task
        return False
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return bool(limit) and limit < MIN_WORKER_MEMORY


def use_compiled(module: str, faster: bool = True) -> bool:
    """Whether to run the compiled kernels of ``module`` here: always under ``"numba"``
    (an error if they cannot be loaded), under ``"auto"`` where they are ``faster``, the
    process is not a worker of little memory and they load, never under ``"numpy"``."""
    choice = kernel_setting()
    if choice == "numba":
        error = compiled_error(module)
        if error is not None:
            raise ImportError(f"dask.config 'dask_em.kernels' is 'numba' but {module} cannot be loaded ({error})")
        return True
    return choice == "auto" and faster and not _small_worker() and compiled_error(module) is None
