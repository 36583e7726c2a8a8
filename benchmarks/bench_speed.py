"""The speed targets, measured side by side in one run (see benchmarks/README.md).

The targets printed are issue 14's (full and diag <= 0.1x scikit-learn per iteration,
float32 <= 0.55x float64, streamed <= 1.25x a raw read pass, KMeans <= 3x scikit-learn
per Lloyd iteration, full covariance <= 3x the machine floor); n_init=4 keeps issue 5's.

    python benchmarks/bench_speed.py            # everything, about 10 minutes on 2 cores
    python benchmarks/bench_speed.py --quick    # smaller sizes, a smoke run
    python benchmarks/bench_speed.py --only kmeans predict

Prints the machine first (CPU vendor and model, the SIMD level numpy dispatches to, the
BLAS library and its kernel, the ``dask_em.kernels`` setting and numba's version, which
float64 exp the responsibilities use, numpy's exp per element and the responsibilities
per row with numpy's passes and with dask-em's compiled loop, the diagonal Gaussian
E-step and the KMeans Lloyd step per row with numpy's kernel and the compiled one, the
rate of a large square GEMM on all cores), then one line per target: the measured
seconds per EM iteration, the reference it is compared with (scikit-learn, the float64
fit, a raw read pass over the same store, n_init=1, numpy's kernels against the compiled
ones in the same fits: ``--only kernels``), their ratio and the target ratio. Full
covariance lines also print two floors: the E-step's own BLAS calls alone, and the
machine's, ``2 N K D^2`` flops at the square-GEMM rate. Then KMeans (per Lloyd iteration
against scikit-learn's, in memory, and the same with numpy's kernels where numba is
installed; streamed against a raw read pass), per-row outputs on the threaded scheduler
(with and without the per-task BLAS limit), the per-iteration cost for growing N and the
fixed overhead per iteration with 1,000 chunks.
"""

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_info, threadpool_limits

from bench_vs_sklearn import make_data, start_params
from dask_em import GaussianMixture, KMeans
from dask_em.data import as_row_chunked
from dask_em.engine import run_pass
from dask_em.compiled import kernel_setting, use_compiled
from dask_em.engine.estep import MixtureState, estep_block, log_tiny, responsibilities, slab_rows
from dask_em.engine.vector_exp import uses_own_exp
from dask_em.families import gaussian, get_family


def seconds_per_iteration(fit, iters):
    start = time.perf_counter()
    fit()
    return (time.perf_counter() - start) / iters


def best_of(fn, repeat=2):
    return min(fn() for _ in range(repeat))


def fit_time(X, k, cov, iters, **kw):
    init = start_params(np.asarray(X[: 10 * k]) if isinstance(X, np.ndarray) else X[: 10 * k].compute(), k, cov)
    params = dict(n_components=k, covariance_type=cov, tol=0, max_iter=iters, **init)
    params.update(kw)
    return lambda: seconds_per_iteration(lambda: GaussianMixture(**params).fit(X), iters)


def sk_time(X, k, cov, iters):
    init = start_params(X[: 10 * k], k, cov)
    params = dict(n_components=k, covariance_type=cov, tol=0, max_iter=iters, **init)
    return lambda: seconds_per_iteration(lambda: SkGaussianMixture(**params).fit(X), iters)


def report(name, ours, ref, ref_name, target):
    ratio = ours / ref
    verdict = "meets" if ratio <= target else "MISSES"
    print(f"{name:<44}{ours:>9.3f} s{ref:>9.3f} s ({ref_name:<12}) ratio {ratio:5.2f}  target <= {target:<4} {verdict}")


def _noop(block, extra, payload, index):
    return {"n": block.shape[0]}


def blas_floor(N, D, K, threads=2):
    """Seconds for the BLAS calls alone of one full-covariance iteration.

    The whitening GEMM, (K*D, D+1) x (D+1, rows), and K syrks of (D, rows), over
    N rows in slabs as the E-step takes them, split over ``threads`` threads with one
    BLAS thread each, as a pass runs: the arithmetic floor of this machine.
    """
    rows = slab_rows(K, D)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((rows, D + 1))
    F = rng.standard_normal((K * D, D + 1))

    def work(n_slabs):
        for _ in range(n_slabs):
            Y = np.dot(F, A.T).reshape(K, D, rows)
            for k in range(K):
                np.dot(Y[k], Y[k].T)  # np.dot: matmul would hold the GIL here (see README)

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        start = time.perf_counter()
        list(ex.map(work, [-(-N // (rows * threads))] * threads))
        return time.perf_counter() - start


def cpu_model():
    """Vendor and model name of the CPU, from /proc/cpuinfo where there is one."""
    fields = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    vendor = fields.get("vendor_id") or fields.get("CPU implementer") or ""
    extra = f", family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return f"{vendor} {model}{extra}".strip()


def numpy_simd():
    """The best SIMD target numpy dispatches to on this CPU, and its baseline."""
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
    except ImportError:
        return "unknown"
    found = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    return f"{found[-1] if found else 'baseline only'} (baseline {' '.join(__cpu_baseline__) or 'none'})"


def blas_description():
    """numpy's BLAS as threadpoolctl sees it: library, version, kernel, threads."""
    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    if not libs:
        return "no BLAS found by threadpoolctl"
    lib = next((i for i in libs if "numpy" in i["filepath"]), libs[0])
    kernel = lib.get("architecture") or "?"
    return (f"{lib['internal_api']} {lib['version']}, kernel {kernel}, "
            f"{lib.get('threading_layer', '?')} threading, {lib['num_threads']} threads")


def square_gemm_rate(size=2048, repeat=3):
    """FLOP/s of a float64 square GEMM on all cores (BLAS's own threads)."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    np.dot(A, B)  # warm up the threads
    best = min(seconds_per_iteration(lambda: np.dot(A, B), 1) for _ in range(repeat))
    return 2.0 * size**3 / best


def per_row_both_ways(once, rows, repeat):
    """``{"numba": (ns a row, s), "numpy": ...}``: the best of ``repeat`` calls of
    ``once()`` (which returns its own seconds, over ``rows`` rows) under each
    ``dask_em.kernels`` setting, and the seconds of the first call (numba: it compiles
    the kernel or loads its cache)."""
    per_row = {}
    for choice in ("numba", "numpy"):
        with dask.config.set({"dask_em.kernels": choice}):
            first = once()
            per_row[choice] = (min(once() for _ in range(repeat)) / rows * 1e9, first)
    return per_row


def exp_description():
    """Which exp the float64 responsibilities use (dask_em.engine.vector_exp); numpy's
    float64 exp per element, and the responsibilities of K=8 per row with numpy's
    passes and with dask-em's compiled loop (one thread)."""
    x = np.random.default_rng(0).uniform(-300.0, 0.0, 1 << 16)
    out = np.empty_like(x)
    numpy_ns = min(seconds_per_iteration(lambda: np.exp(x, out=out), 1) for _ in range(20)) / x.size * 1e9
    if importlib.util.find_spec("numba") is None:
        return f"numpy's ({numpy_ns:.2f} ns an element; numba is not installed)"
    import numba

    which = "dask-em's own" if uses_own_exp(np.float64) else "numpy's"
    wlp = np.random.default_rng(1).normal(-30.0, 40.0, size=(1 << 13, 8))
    floor = 0.5 * log_tiny(np.float64)  # the E-step's

    def once():
        a = wlp.copy()  # overwritten: a fresh copy each time, not timed
        start = time.perf_counter()
        responsibilities(a, False, floor, overwrite=True)
        return time.perf_counter() - start

    per_row = per_row_both_ways(once, wlp.shape[0], repeat=50)
    return (f"{which}; numpy's exp {numpy_ns:.2f} ns an element; responsibilities (K=8) "
            f"{per_row['numpy'][0]:.1f} ns a row with numpy's passes, "
            f"{per_row['numba'][0]:.1f} with dask-em's own loop (numba {numba.__version__}, "
            f"first call {per_row['numba'][1]:.2f} s)")


def estep_description(family, params, module, n=131072, D=16, K=8):
    """An E-step on one block (``estep_block``, one thread) of ``family`` at ``params``
    (built from ``X`` and its chosen rows ``means``), per row, with numpy's kernel and
    with the compiled one of ``module``."""
    if importlib.util.find_spec("numba") is None:
        return "numpy's kernel (numba is not installed)"
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, D)) + 100.0
    state = MixtureState(np.full(K, 1.0 / K), params(X[rng.choice(n, K, replace=False)]))
    payload = (family, [state])
    with threadpool_limits(1):
        per_row = per_row_both_ways(lambda: seconds_per_iteration(lambda: estep_block(X, None, payload, 0), 1), n, 7)
    which = "compiled" if use_compiled(module) else "numpy's"
    return (f"{which} kernel; per row (D={D}, K={K}, one thread) {per_row['numpy'][0]:.0f} ns with numpy's, "
            f"{per_row['numba'][0]:.0f} ns compiled (first block {per_row['numba'][1]:.2f} s)")


def machine():
    """Print the machine; return the square-GEMM rate (FLOP/s) for the floors."""
    rate = square_gemm_rate()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores")
    print(f"numpy {np.__version__}, SIMD {numpy_simd()}; BLAS {blas_description()}")
    numba = importlib.util.find_spec("numba")
    numba = f"numba {importlib.import_module('numba').__version__}" if numba else "numba not installed"
    print(f"dask_em.kernels: {kernel_setting()!r}, {numba}")
    diag = estep_description(gaussian.FAMILIES["diag"], lambda means: {"means": means, "precisions_cholesky": np.full(
        means.shape, 0.8)}, "dask_em.families._gaussian_numba")
    print(f"diagonal Gaussian E-step: {diag}")
    lloyd = estep_description(get_family("kmeans"), lambda means: {"means": means}, "dask_em.families._kmeans_numba")
    print(f"KMeans Lloyd step: {lloyd}")
    print(f"float64 exp of the responsibilities: {exp_description()}")
    print(f"square GEMM (2048, float64, all cores): {rate / 1e9:.1f} GFLOP/s")
    return rate


def in_memory(n, iters, gemm_rate):
    for (N, D, K, cov, target) in [(n, 16, 8, "full", 0.1), (n, 16, 8, "diag", 0.1), (n // 5, 64, 16, "full", 0.1)]:
        X = make_data(N, D, K)
        Xd = as_row_chunked(X)[0].persist()
        ours = best_of(fit_time(Xd, K, cov, iters))
        theirs = sk_time(X, K, cov, iters)()
        # full: the whitening GEMM (2 N K D^2) and a syrk per component (N K D^2)
        flops = {"full": 3 * N * K * D * D, "diag": 8 * N * K * D}[cov]
        report(f"in memory {cov} N={N} D={D} K={K}", ours, theirs, "scikit-learn", target)
        print(f"{'':<44}about {flops / 1e9:.1f} GFLOP per iteration (as computed): {flops / ours / 1e9:.1f} GFLOP/s")
        print(f"{'':<44}E-step kernel: {'compiled (numba)' if gaussian.fused_kernel(cov, D) else 'numpy'}")
        if cov == "full":
            floor = best_of(lambda: blas_floor(N, D, K))
            print(f"{'':<44}numpy kernel's own-GEMM floor (its GEMM and syrks alone, 2 threads): {floor:.3f} s; "
                  f"ratio {ours / floor:.2f}")
            least = 2 * N * K * D * D / gemm_rate
            print(f"{'':<44}machine floor (2 N K D^2 at the square-GEMM rate): {least:.3f} s; ratio {ours / least:.2f}"
                  f" (target <= 3)")


def compiled_kernels(n, iters, repeat=3):
    """In-memory fits with numpy's kernels and with the compiled ones, alternated in one run."""
    if importlib.util.find_spec("numba") is None:
        print("compiled kernels: numba is not installed here (pip install 'dask-em[fast]'); skipped")
        return
    for (N, D, K, cov) in [(n, 16, 8, "diag"), (n, 16, 8, "full")]:
        Xd = as_row_chunked(make_data(N, D, K))[0].persist()
        times = {"numpy": [], "numba": []}
        for _ in range(repeat):
            for choice in times:
                with dask.config.set({"dask_em.kernels": choice}):
                    times[choice].append(fit_time(Xd, K, cov, iters)())
        ours, theirs = min(times["numba"]), min(times["numpy"])
        print(f"{f'compiled vs numpy kernels, {cov} N={N} D={D} K={K}':<44}{ours:>9.3f} s{theirs:>9.3f} s "
              f"(numpy's)     ratio {ours / theirs:5.2f}  (no target: below 1, compiled is faster)")


def float32(n, iters):
    X = make_data(n, 16, 8)
    X32 = X.astype(np.float32)
    d64 = as_row_chunked(X)[0].persist()
    d32 = as_row_chunked(X32)[0].persist()
    t64 = best_of(fit_time(d64, 8, "full", iters))
    t32 = best_of(fit_time(d32, 8, "full", iters))
    report(f"float32 full N={n} D=16 K=8", t32, t64, "float64", 0.55)
    init = start_params(X[:80], 8, "full")
    kw = dict(covariance_type="full", tol=0, max_iter=iters, **init)
    a = GaussianMixture(8, **kw).fit(d64)
    b = GaussianMixture(8, **kw).fit(d32)
    rel = max(
        np.max(np.abs(a.means_ - b.means_)) / np.max(np.abs(a.means_)),
        np.max(np.abs(a.covariances_ - b.covariances_)) / np.max(np.abs(a.covariances_)),
    )
    print(f"{'':<44}max relative difference float32 vs float64 parameters: {rel:.1e} (target <= 1e-4)")


def streaming(n, iters, workdir):
    from distributed import Client, LocalCluster

    path = os.path.join(workdir, "stream.zarr")
    X = make_data(n, 16, 8)
    da.from_array(X, chunks=(131072, -1)).to_zarr(path)
    del X
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        Z = da.from_zarr(path)
        read = best_of(lambda: seconds_per_iteration(lambda: Z.sum().compute(), 1), 3)
        # the EM iterations alone (history_), as the initialisation reads the store too
        init = dict(n_components=8, covariance_type="diag", tol=0, max_iter=iters)
        one = _em_only(Z, {**init, **start_params(Z[:80].compute(), 8, "diag")}, 1)
        report(f"streamed Zarr diag N={n} D=16 K=8", one, read, "read pass", 1.25)
        # n_init with given parameters makes identical starts; time a data-driven init instead
        init.update(init_params="random", random_state=0)
        t1 = _em_only(Z, init, 1)
        t4 = _em_only(Z, init, 4)
        report("streamed Zarr diag, n_init=4 vs n_init=1", t4, t1, "n_init=1", 1.6)


def lloyd_per_iteration(fit, a, b):
    """Seconds per Lloyd iteration: (time of b iterations - time of a) / (b - a), each
    the best of 3, so setup, validation and the last labelling pass cancel out."""
    tb = best_of(lambda: seconds_per_iteration(lambda: fit(b), 1), 3)
    ta = best_of(lambda: seconds_per_iteration(lambda: fit(a), 1), 3)
    return (tb - ta) / (b - a)


def kmeans(n, workdir):
    """KMeans against scikit-learn per Lloyd iteration (same initial centres, tol=0,
    in memory), and streamed from a Zarr store against a raw read pass of it."""
    N, D, K = n, 16, 8
    # overlapping clusters, far from the origin: Lloyd does not converge within b
    # iterations, and the distances must be taken about a point near the data
    X = make_data(N, D, K) * 0.25 + 100.0
    C = X[np.random.default_rng(0).choice(N, K, replace=False)]
    a, b = 2, 10
    ours_fit = lambda m: KMeans(K, init=C, max_iter=m, tol=0, algorithm="lloyd").fit(X)  # noqa: E731
    sk_fit = lambda m: SkKMeans(K, init=C, n_init=1, max_iter=m, tol=0, algorithm="lloyd").fit(X)  # noqa: E731
    ours, sk = ours_fit(b), sk_fit(b)
    assert ours.n_iter_ == sk.n_iter_ == b, "converged early: the per-iteration time would be wrong"
    print(f"{'':<44}same start, {b} iterations: inertia {ours.inertia_:.12g} (dask-em), "
          f"{sk.inertia_:.12g} (scikit-learn), relative difference {abs(ours.inertia_ / sk.inertia_ - 1):.1e}")
    with dask.config.set(scheduler="threads"):
        t_ours = lloyd_per_iteration(ours_fit, a, b)
    t_sk = lloyd_per_iteration(sk_fit, a, b)
    report(f"KMeans in memory N={N} D={D} K={K}", t_ours, t_sk, "scikit-learn", 3)
    if importlib.util.find_spec("numba") is not None:  # the same with numpy's kernels, for comparison
        with dask.config.set({"scheduler": "threads", "dask_em.kernels": "numpy"}):
            t_numpy = lloyd_per_iteration(ours_fit, a, b)
        print(f"{'  the same with numpy kernels':<44}{t_numpy:>9.3f} s{t_sk:>9.3f} s (scikit-learn) "
              f"ratio {t_numpy / t_sk:5.2f}  (for comparison)")

    from distributed import Client, LocalCluster

    path = os.path.join(workdir, "kmeans.zarr")
    Xs = make_data(2 * N, D, K) * 0.25 + 100.0
    da.from_array(Xs, chunks=(131072, -1)).to_zarr(path)
    del Xs
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        Z = da.from_zarr(path)
        read = best_of(lambda: seconds_per_iteration(lambda: Z.sum().compute(), 1), 3)
        streamed = lambda m: KMeans(K, init=C, max_iter=m, tol=0, algorithm="lloyd", persist=False).fit(Z)  # noqa: E731
        t = lloyd_per_iteration(streamed, a, b)
        report(f"KMeans streamed Zarr N={2 * N} D={D} K={K}", t, read, "read pass", 1.25)


def predict_blas(n):
    """Per-row outputs computed by the user on the threaded scheduler: without the
    per-task BLAS limit (BLAS threads on top of dask's), with it, and with a limit
    set around the whole compute (the reference)."""
    from dask_em.data import as_row_chunked as chunked
    from dask_em.engine import passes

    X = make_data(n, 16, 8)
    Xd = chunked(X)[0].persist()
    gm = GaussianMixture(8, covariance_type="full", max_iter=2, random_state=0).fit(X[: n // 10])
    km = KMeans(8, max_iter=2, random_state=0).fit(X[: n // 10])
    limited = passes.one_blas_thread
    print(f"per-row outputs, N={n} D=16 K=8, threaded scheduler: no per-task limit | per-task limit | "
          f"limit around compute")
    for name, run in [("GaussianMixture(full).predict_proba", lambda: gm.predict_proba(Xd).compute()),
                      ("GaussianMixture(full).score_samples", lambda: gm.score_samples(Xd).compute()),
                      ("KMeans.predict", lambda: km.predict(Xd).compute()),
                      ("KMeans.transform", lambda: km.transform(Xd).compute())]:
        timed = lambda: best_of(lambda: seconds_per_iteration(run, 1), 3)  # noqa: E731
        with dask.config.set(scheduler="threads"):
            passes.one_blas_thread = contextlib.nullcontext
            try:
                free = timed()
            finally:
                passes.one_blas_thread = limited
            per_task = timed()
            with threadpool_limits(limits=1, user_api="blas"):
                around = timed()
        print(f"  {name:<38}{free:8.3f} s{per_task:8.3f} s{around:8.3f} s   without / with {free / per_task:.2f}")


def _em_only(Z, params, n_init):
    """Seconds per EM iteration on data streamed from ``Z``, after a warm-up fit.

    ``persist=False`` (a constructor parameter): ``"auto"`` would keep a store of this size in the workers'
    memory, and the EM passes would not read it at all. ``algorithm="em"``: on streamed data ``"auto"``
    is stepwise, whose mini-batch steps would be counted with the EM iterations.
    """
    params = {**params, "n_init": n_init, "persist": False, "algorithm": "em"}
    GaussianMixture(**{**params, "max_iter": 1}).fit(Z)
    gm = GaussianMixture(**params).fit(Z)
    batch = [h["seconds"] for h in gm.history_ if h["kind"] == "batch"]
    assert len(batch) == gm.n_iter_, "every timed entry must be one EM iteration"
    return sum(batch) / len(batch)


def scaling(sizes, iters):
    print("per-iteration cost against N (diag, D=16, K=8, in memory):")
    for N in sizes:
        X = make_data(N, 16, 8)
        Xd = as_row_chunked(X)[0].persist()
        t = best_of(fit_time(Xd, 8, "diag", iters), 1)
        print(f"  N={N:>10,d}  blocks={Xd.numblocks[0]:>4d}  {t:8.3f} s/iteration  {t / N * 1e9:6.1f} ns/row")
        del X, Xd
    N = sizes[1]
    X = make_data(N, 16, 8)
    Xd = da.from_array(X, chunks=(N // 1000, -1)).persist()
    t = best_of(fit_time(Xd, 8, "diag", iters), 2)
    over = best_of(lambda: seconds_per_iteration(lambda: run_pass(Xd, _noop, None, name="noop"), 1), 3)
    print(
        f"fixed overhead with {Xd.numblocks[0]} chunks: {over:.3f} s of a {t:.3f} s iteration "
        f"({100 * over / t:.1f}%, target < 10%)"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    ap.add_argument("--only", nargs="*", default=["memory", "float32", "kernels", "streaming", "kmeans", "predict", "scaling"])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    n = 100_000 if args.quick else 1_000_000
    iters = 2 if args.quick else 4
    gemm_rate = machine()
    print(f"{'target':<44}{'dask-em':>11}{'reference':>26}")
    workdir = tempfile.mkdtemp(prefix="dask-em-bench-")
    try:
        with dask.config.set(scheduler="threads"):
            if "memory" in args.only:
                in_memory(n, iters, gemm_rate)
            if "float32" in args.only:
                float32(n, iters)
            if "kernels" in args.only:
                compiled_kernels(n, iters)
        if "streaming" in args.only:
            streaming(n * 2, iters, workdir)
        if "kmeans" in args.only:
            kmeans(n, workdir)
        if "predict" in args.only:
            predict_blas(n)
        if "scaling" in args.only:
            with dask.config.set(scheduler="threads"):
                scaling([n // 10, n, n * 10] if not args.quick else [10_000, 100_000, 300_000], iters)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
