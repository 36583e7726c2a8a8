"""One BLAS thread per task, for the tasks the user computes (``predict`` and the like),
and one BLAS thread for the fit's passes and its in-memory work (:func:`blas_limited`).

A fit limits BLAS to one thread around each pass (:func:`~dask_em.engine.passes.run_pass`),
since dask's threaded scheduler already runs one task per core; BLAS threads on top
of that oversubscribe the cores. Per-row outputs are computed by the user, on any
scheduler, so their tasks set the limit themselves (:func:`one_blas_thread`).

The limit is per thread where the library allows it (MKL, BLAS built on OpenMP).
OpenBLAS built on pthreads, the usual wheel, has one setting for the whole process
(its ``openblas_set_num_threads_local`` sets it too, measured with OpenBLAS 0.3.31):
the tasks then share it, counted under a lock. The first task to start sets one
thread and the last to finish puts back what was there before, so no task runs a BLAS
call with the setting of another. The library's own setter is called, not
threadpoolctl's, which since threadpoolctl 3.8 ignores calls from any thread but the
first one that set OpenBLAS's threads (here usually the main thread, which waits in
``compute``).
"""

import contextlib
import ctypes
import itertools
import sys
import threading

import dask
from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_state = {"libraries": None, "tasks": 0, "saved": None}


def _openblas_functions(lib):
    """``(get, set)`` of an OpenBLAS library's process-wide thread count, or None."""
    for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
        get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
        set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and set_ is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            return get, set_
    return None


def _libraries():
    """The BLAS libraries loaded, found once: ``(per_thread, shared)``.

    ``per_thread``: ``(limit, restore)`` pairs acting on the calling thread, where
    ``limit()`` sets one thread and returns what ``restore`` takes to undo it;
    ``shared``: ``(get, set)`` pairs of process-wide settings.
    """
    per_thread, shared = [], []
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas":
            continue
        if lib.internal_api == "mkl" and hasattr(lib.dynlib, "MKL_Set_Num_Threads_Local"):
            local = lib.dynlib.MKL_Set_Num_Threads_Local  # returns the previous value
            local.restype, local.argtypes = ctypes.c_int, [ctypes.c_int]
            per_thread.append((lambda local=local: local(1), local))
        elif getattr(lib, "threading_layer", None) == "openmp":  # omp_set_num_threads is per thread
            per_thread.append((lambda lib=lib: _swap(lib.get_num_threads, lib.set_num_threads), lib.set_num_threads))
        elif lib.internal_api == "openblas":
            functions = _openblas_functions(lib)
            if functions is not None:
                shared.append(functions)
        else:  # BLIS, FlexiBLAS...: one process-wide setting
            shared.append((lib.get_num_threads, lib.set_num_threads))
    return per_thread, shared


def _swap(get, set_):
    previous = get()
    set_(1)
    return previous


def _on_worker_thread():
    """The task runs on a worker thread next to others (not on the main thread, as
    with the synchronous scheduler or NumPy input, nor with ``num_workers=1``)."""
    return threading.current_thread() is not threading.main_thread() and dask.config.get("num_workers", None) != 1


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread while the block runs, when it runs on a worker thread.

    See the module's docstring. On the main thread, nothing changes.
    """
    if not _on_worker_thread():
        yield
        return
    with _lock:
        if _state["libraries"] is None:
            _state["libraries"] = _libraries()
        per_thread, shared = _state["libraries"]
        if _state["tasks"] == 0:
            _state["saved"] = [get() for get, _ in shared]
            for _, set_ in shared:
                set_(1)
        _state["tasks"] += 1
    previous = [limit() for limit, _ in per_thread]
    try:
        yield
    finally:
        for (_, restore), value in zip(per_thread, previous):
            restore(value)
        with _lock:
            _state["tasks"] -= 1
            if _state["tasks"] == 0:
                for (_, set_), value in zip(shared, _state["saved"]):
                    set_(value)


_CONTROLLER = {}


def _controller():
    """A ``ThreadpoolController`` kept between calls: finding the loaded libraries
    costs 1.7-16 ms (measured on 2 loaded cores), which ``threadpool_limits`` pays
    on every call, a fixed cost of every pass and every step of stepwise EM; the
    limit itself costs 20 us. It is found again when modules were imported since
    (one may have loaded another BLAS)."""
    key = len(sys.modules)
    if _CONTROLLER.get("key") != key:
        _CONTROLLER.update(key=key, controller=ThreadpoolController())
    return _CONTROLLER["controller"]


def blas_limited():
    """A context in which BLAS runs on one thread, set from the calling thread.

    Around a pass on dask's threaded scheduler (one task per core already), and
    around the fit's in-memory work on the initialisation sample: its products are
    small ((K, D) by (D, a few thousand rows)), where BLAS threads gain little and,
    on a loaded machine, wait for each other: measured on 2 cores under a load of
    3.5, k-means++ and 300 Lloyd iterations on 100,000 x 16 rows (K=8) took 19-23 s
    with OpenBLAS's threads and 3.3-4.0 s with one (scikit-learn's KMeans also
    limits BLAS to one thread).
    """
    return _controller().limit(limits=1, user_api="blas")
