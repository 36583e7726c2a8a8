"""Passes over a streamed store, and in-memory fits against scikit-learn (issue: few passes).

    python benchmarks/few_pass.py                 # N = 600,000; about 10 minutes on 2 cores
    python benchmarks/few_pass.py --n 2000000     # a larger store
    python benchmarks/few_pass.py --quick         # small sizes, a smoke run
    python benchmarks/few_pass.py --part memory   # only the in-memory comparison
    python benchmarks/few_pass.py --accelerate    # batch passes accelerated: SQUAREM, Anderson for Lloyd (dask_em.accelerate)

Part 1 (streamed): a float32 Zarr store of overlapping clusters (D=16, K=8) on disk,
fitted with ``persist=False`` so every pass reads the store, on dask's threaded
scheduler and on a ``distributed.LocalCluster`` (worker threads in this process,
so the chunk reads are counted). For batch EM (``algorithm="em"``, default
initialisation, ``tol=1e-6``) and stepwise EM (``algorithm="stepwise"``,
``tol=1e-3``), it prints the passes over the store counted from its chunk reads
(:class:`dask_em.testing.CountingStore`), the final mean log-likelihood per row
(scored after the fit, not counted), and the wall times; the same for diag
covariances and for KMeans (batch Lloyd against stepwise).

Part 2 (in memory): the default fit of NumPy data against scikit-learn's, for
KMeans and GaussianMixture, over sizes 1e3 to 1e7 rows (1e6 with ``--quick``
off; 1e7 with ``--large``), plus scikit-learn's digits (1797 x 64, K=10, diag)
and a photograph (``china.jpg``, 273,280 pixels x 3, K=16; needs pillow). Times are
the median over ``--seeds`` random states of the best of ``--repeats`` fits, the two
sides alternating; ``--one-thread`` runs both on one thread (threadpoolctl and dask's
``num_workers=1``), the fair comparison on a shared machine.
"""

import argparse
import contextlib
import os
import platform
import shutil
import tempfile
import time
import warnings

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client, LocalCluster
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import GaussianMixture, KMeans
from dask_em.testing import CountingStore


def cpu_description():
    """CPU model and the SIMD level numpy found (figures differ between machines)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    simd = "?"
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features

        simd = next((f for f in ("AVX512F", "AVX2", "ASIMD", "SSE42") if features.get(f)), "baseline")
    except ImportError:
        pass
    return f"{model}; numpy SIMD {simd}; {os.cpu_count()} cores"


def overlapping_clusters(n, D=16, K=8, seed=0, spread=0.6, mixing=0.5, chunk=100_000):
    """Rows of K Gaussians whose centres are about one standard deviation apart: batch
    EM needs many iterations on them. ``mixing`` sets how anisotropic and how unlike
    each other their covariances are (0: all the identity; 0.5, the default: each
    ``0.5 I + 0.5 G`` with G standard normal)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(K, D))
    mixers = [rng.normal(size=(D, D)) * mixing + np.eye(D) * (1 - mixing) for _ in range(K)]
    out = np.empty((n, D), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        labels = rng.integers(0, K, m)
        z = rng.normal(size=(m, D))
        rows = np.einsum("nd,nde->ne", z, np.stack(mixers)[labels]) + centers[labels]
        out[i:i + m] = rows
    return out


def write_store(folder, X, chunk_rows):
    path = os.path.join(folder, "data.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype, overwrite=True)
    for i in range(0, X.shape[0], chunk_rows * 8):
        z[i:i + chunk_rows * 8] = X[i:i + chunk_rows * 8]
    return path


def timed_fit(make, path):
    """Fit on a counting view of the store: (model, passes counted, seconds)."""
    store = CountingStore(path)
    arr = zarr.open_array(store, mode="r")
    model = make()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(arr)
    seconds = time.perf_counter() - start
    return model, store.passes(arr), seconds


def mean_loglik(model, X):
    if isinstance(model, KMeans):
        return model.score(X) / X.shape[0]  # minus the mean squared distance
    return model.score(X)


def read_pass_seconds(path):
    arr = zarr.open_array(path, mode="r")
    start = time.perf_counter()
    da.from_zarr(arr).sum().compute()
    return time.perf_counter() - start


def streamed(args):
    print(f"\n== Part 1: a streamed float32 Zarr store, N={args.n:,} D=16 K=8, chunks of {args.chunk:,} rows, "
          f"centre spread {args.spread}, mixing {args.mixing}")
    X = overlapping_clusters(args.n, spread=args.spread, mixing=args.mixing)
    folder = tempfile.mkdtemp(prefix="dask-em-few-pass-")
    try:
        path = write_store(folder, X, args.chunk)
        Xd = da.from_array(X, chunks=(args.chunk, -1))
        cases = [
            ("full", lambda alg, tol, seed: GaussianMixture(8, covariance_type="full", algorithm=alg, tol=tol,
                                                            max_iter=1000, random_state=seed, persist=False)),
            ("diag", lambda alg, tol, seed: GaussianMixture(8, covariance_type="diag", algorithm=alg, tol=tol,
                                                            max_iter=1000, random_state=seed, persist=False)),
            ("kmeans", lambda alg, tol, seed: KMeans(8, algorithm="lloyd" if alg == "em" else alg,
                                                     random_state=seed, persist=False)),
        ]
        cases = [c for c in cases if c[0] in args.models]
        for scheduler in args.schedulers:
            cluster = client = None
            if scheduler == "LocalCluster":
                cluster = LocalCluster(n_workers=1, threads_per_worker=os.cpu_count(), processes=False,
                                       dashboard_address=None)
                client = Client(cluster)
            try:
                read = read_pass_seconds(path)
                print(f"\n-- {scheduler}: a raw read pass of the store takes {read:.2f} s")
                print(f"{'model':<8}{'algorithm':<10}{'seed':>5}{'passes':>7}{'iters':>7}{'mean loglik':>15}"
                      f"{'seconds':>9}{'read passes':>12}")
                for name, make in cases:
                    out = {"em": [], "stepwise": []}
                    for seed in range(args.stream_seeds):
                        for alg, tol in (("em", 1e-6), ("stepwise", 1e-3)):
                            model, passes, seconds = timed_fit(lambda: make(alg, tol, seed), path)
                            ll = mean_loglik(model, Xd)
                            out[alg].append((passes, seconds, ll))
                            print(f"{name:<8}{alg:<10}{seed:>5}{passes:>7.0f}{model.n_iter_:>7}{ll:>15.6f}"
                                  f"{seconds:>9.2f}{seconds / read:>12.1f}")
                    (p_em, s_em, ll_em), (p_sw, s_sw, ll_sw) = (np.mean(out[a], axis=0) for a in ("em", "stepwise"))
                    over = "" if args.stream_seeds == 1 else f" (means over {args.stream_seeds} seeds)"
                    print(f"{name:<8}stepwise/em{over}: passes {p_sw:.1f} vs {p_em:.1f} (target <= 4), "
                          f"loglik {ll_sw - ll_em:+.2e} (target >= -1e-3), time {s_sw / s_em:.2f} (goal <= 0.2)")
            finally:
                if client is not None:
                    client.close()
                    cluster.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare(name, X, K, cov, seeds, repeats=1):
    """Default fits of ours and scikit-learn's on in-memory X, for each random_state in
    ``seeds``: the median over seeds of the best of ``repeats`` seconds (the two sides
    alternate, so load hits both alike) and the mean quality (single seeds land in
    different local optima on overlapping data, either way)."""
    times, quality = {"ours": [], "sk": []}, {"ours": [], "sk": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in seeds:
            best, models = {"ours": np.inf, "sk": np.inf}, {}
            for _ in range(repeats):
                for who in ("ours", "sk"):
                    if cov == "kmeans":
                        make = KMeans if who == "ours" else SkKMeans
                        model = make(K, random_state=seed)
                    else:
                        make = GaussianMixture if who == "ours" else SkGaussianMixture
                        model = make(K, covariance_type=cov, random_state=seed)
                    start = time.perf_counter()
                    models[who] = model.fit(X)
                    best[who] = min(best[who], time.perf_counter() - start)
            for who, model in models.items():
                times[who].append(best[who])
                quality[who].append(-model.inertia_ / len(X) if cov == "kmeans" else model.score(X))
    t_ours, t_sk = np.median(times["ours"]), np.median(times["sk"])
    q_ours, q_sk = np.mean(quality["ours"]), np.mean(quality["sk"])
    # standard error of the difference of the means (seeds land in different optima)
    se = np.sqrt((np.var(quality["ours"], ddof=1) + np.var(quality["sk"], ddof=1)) / len(seeds)) \
        if len(seeds) > 1 else np.nan
    label = "-inertia/row" if cov == "kmeans" else "loglik/row"
    # Equal quality: the mean over seeds at least scikit-learn's (to 1e-3 relative), or,
    # over several seeds, less by under two standard errors of the difference: the two
    # sides' seeds land in random local optima, so identical algorithms differ either
    # way by about one standard error.
    if q_ours >= q_sk - 1e-3 * abs(q_sk):
        quality = "equal or better"
    elif len(seeds) >= 10 and q_ours >= q_sk - 2 * se:
        quality = "equal within 2 SE"
    else:
        quality = "worse" if len(seeds) >= 10 else "worse (too few seeds to tell)"
    verdict = "meets" if t_ours <= 2 * t_sk and quality.startswith("equal") else "MISSES"
    print(f"{name:<30}{t_ours:>9.4f} s{t_sk:>9.4f} s  ratio {t_ours / t_sk:5.2f}  mean {label} "
          f"{q_ours:.6g} vs {q_sk:.6g} (difference {q_ours - q_sk:+.3g} +- {se:.2g}, {len(seeds)} seeds: "
          f"{quality})  target <= 2 at equal quality: {verdict}", flush=True)


def in_memory(args):
    threads = "one thread each (threadpoolctl.threadpool_limits(1), dask num_workers=1)" if args.one_thread \
        else "default threads"
    print("\n== Part 2: default fits of in-memory data against scikit-learn's "
          f"(median over random_state 0 .. {args.seeds - 1} of the best of {args.repeats}, above 100,000 rows "
          f"0 .. {args.large_seeds - 1} of one fit; mean quality); {threads}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'data':<28}{'dask-em':>11}{'sklearn':>11}")
    context = contextlib.ExitStack()
    if args.one_thread:
        from threadpoolctl import threadpool_limits

        context.enter_context(threadpool_limits(1))
        context.enter_context(dask.config.set(num_workers=1))
    with context:
        _in_memory_cases(args)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _in_memory_cases(args):
    from sklearn.datasets import load_digits

    seeds, r = range(args.seeds), args.repeats
    if not args.sizes_only:
        digits = load_digits().data
        compare("digits 1797x64 K=10 diag", digits, 10, "diag", seeds, r)
        compare("digits 1797x64 K=10 kmeans", digits, 10, "kmeans", seeds, r)
        try:
            from sklearn.datasets import load_sample_image

            pixels = load_sample_image("china.jpg").reshape(-1, 3).astype(np.float64) / 255
            compare("china.jpg 273280x3 K=16 kmeans", pixels, 16, "kmeans", seeds, r)
            compare("china.jpg 273280x3 K=16 full", pixels, 16, "full", range(1), 1)
        except ImportError:
            print("china.jpg: skipped (pip install pillow to read the photograph)")
    sizes = args.sizes or (
        [1_000, 10_000, 100_000] + ([] if args.quick else [1_000_000]) + ([10_000_000] if args.large else []))
    for n in sizes:
        X = overlapping_clusters(n, D=16, K=8, spread=3.0).astype(np.float64)
        few = n > 100_000
        for cov in args.memory_models:
            compare(f"N={n:,} D=16 K=8 {cov}", X, 8, cov, range(args.large_seeds) if few else seeds, 1 if few else r)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600_000, help="rows of the streamed store")
    parser.add_argument("--chunk", type=int, default=5_000, help="rows per chunk of the store")
    parser.add_argument("--spread", type=float, default=0.6, help="streamed store: scale of the cluster centres")
    parser.add_argument("--mixing", type=float, default=0.5,
                        help="streamed store: 0 for identity covariances, 0.5 for unlike anisotropic ones")
    parser.add_argument("--stream-seeds", type=int, default=1,
                        help="streamed: fits with random_state 0 .. stream-seeds - 1, and their means")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--large", action="store_true", help="also N = 1e7 in memory")
    parser.add_argument("--part", choices=("all", "streamed", "memory"), default="all")
    parser.add_argument("--seeds", type=int, default=3, help="in memory: random_state 0 .. seeds - 1")
    parser.add_argument("--large-seeds", type=int, default=1,
                        help="in memory, N > 100,000: random_state 0 .. large-seeds - 1 (one fit each)")
    parser.add_argument("--repeats", type=int, default=3, help="in memory: fits per seed and side (best kept)")
    parser.add_argument("--one-thread", action="store_true",
                        help="in memory: both sides on one thread (threadpoolctl, dask num_workers=1)")
    parser.add_argument("--sizes", type=int, nargs="+", help="in memory: the row counts (default 1e3 to 1e6)")
    parser.add_argument("--sizes-only", action="store_true", help="in memory: skip the digits and the photograph")
    parser.add_argument("--memory-models", nargs="+", default=["full", "kmeans"],
                        choices=["full", "diag", "spherical", "tied", "kmeans"])
    parser.add_argument("--models", nargs="+", default=["full", "diag", "kmeans"], choices=["full", "diag", "kmeans"])
    parser.add_argument("--accelerate", action="store_true",
                        help="accelerate the batch passes: SQUAREM, Anderson for Lloyd (dask.config dask_em.accelerate)")
    parser.add_argument("--schedulers", nargs="+", default=["threads", "LocalCluster"],
                        choices=["threads", "LocalCluster"])
    args = parser.parse_args()
    if args.quick:
        args.n = min(args.n, 100_000)
    print(f"CPU: {cpu_description()}; dask {dask.__version__}, numpy {np.__version__}")
    with dask.config.set({"dask_em.accelerate": args.accelerate}):
        print(f"dask_em.accelerate: {dask.config.get('dask_em.accelerate')}")
        if args.part in ("all", "streamed"):
            streamed(args)
        if args.part in ("all", "memory"):
            in_memory(args)


if __name__ == "__main__":
    main()
