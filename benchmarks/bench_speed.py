"""The speed targets, measured side by side in one run (see benchmarks/README.md).

    python benchmarks/bench_speed.py            # everything, about 10 minutes on 2 cores
    python benchmarks/bench_speed.py --quick    # smaller sizes, a smoke run

Prints one line per target: the measured seconds per EM iteration, the reference it is
compared with (scikit-learn, the float64 fit, a raw read pass over the same store,
n_init=1), their ratio and the target ratio; then the per-iteration cost for growing N
and the fixed overhead per iteration with 1,000 chunks.
"""

import argparse
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

from bench_vs_sklearn import make_data, start_params
from dask_em import GaussianMixture
from dask_em.data import as_row_chunked
from dask_em.engine import run_pass
from dask_em.engine.estep import slab_rows


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


def in_memory(n, iters):
    for (N, D, K, cov, target) in [(n, 16, 8, "full", 0.15), (n, 16, 8, "diag", 0.2), (n // 5, 64, 16, "full", 0.15)]:
        X = make_data(N, D, K)
        Xd = as_row_chunked(X)[0].persist()
        ours = best_of(fit_time(Xd, K, cov, iters))
        theirs = sk_time(X, K, cov, iters)()
        # full: the whitening GEMM (2 N K D^2) and a syrk per component (N K D^2)
        flops = {"full": 3 * N * K * D * D, "diag": 8 * N * K * D}[cov]
        report(f"in memory {cov} N={N} D={D} K={K}", ours, theirs, "scikit-learn", target)
        print(f"{'':<44}about {flops / 1e9:.1f} GFLOP per iteration (as computed): {flops / ours / 1e9:.1f} GFLOP/s")
        if cov == "full":
            floor = best_of(lambda: blas_floor(N, D, K))
            print(f"{'':<44}BLAS floor (its GEMM and syrks alone, 2 threads): {floor:.3f} s; ratio {ours / floor:.2f}")


def float32(n, iters):
    X = make_data(n, 16, 8)
    X32 = X.astype(np.float32)
    d64 = as_row_chunked(X)[0].persist()
    d32 = as_row_chunked(X32)[0].persist()
    t64 = best_of(fit_time(d64, 8, "full", iters))
    t32 = best_of(fit_time(d32, 8, "full", iters))
    report(f"float32 full N={n} D=16 K=8", t32, t64, "float64", 0.6)
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
        report(f"streamed Zarr diag N={n} D=16 K=8", one, read, "read pass", 1.5)
        # n_init with given parameters makes identical starts; time a data-driven init instead
        init.update(init_params="random", random_state=0)
        t1 = _em_only(Z, init, 1)
        t4 = _em_only(Z, init, 4)
        report("streamed Zarr diag, n_init=4 vs n_init=1", t4, t1, "n_init=1", 1.6)


def _em_only(Z, params, n_init):
    """Seconds per EM iteration on data streamed from ``Z``, after a warm-up fit.

    ``persist=False`` (a constructor parameter): ``"auto"`` would keep a store of this size in the workers'
    memory, and the EM passes would not read it at all.
    """
    GaussianMixture(**{**params, "n_init": n_init, "max_iter": 1, "persist": False}).fit(Z)
    gm = GaussianMixture(**{**params, "n_init": n_init, "persist": False}).fit(Z)
    return sum(h["seconds"] for h in gm.history_) / gm.n_iter_


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
    ap.add_argument("--only", nargs="*", default=["memory", "float32", "streaming", "scaling"])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    n = 100_000 if args.quick else 1_000_000
    iters = 2 if args.quick else 4
    print(f"{'target':<44}{'dask-em':>11}{'reference':>26}")
    workdir = tempfile.mkdtemp(prefix="dask-em-bench-")
    try:
        with dask.config.set(scheduler="threads"):
            if "memory" in args.only:
                in_memory(n, iters)
            if "float32" in args.only:
                float32(n, iters)
        if "streaming" in args.only:
            streaming(n * 2, iters, workdir)
        if "scaling" in args.only:
            with dask.config.set(scheduler="threads"):
                scaling([n // 10, n, n * 10] if not args.quick else [10_000, 100_000, 300_000], iters)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
