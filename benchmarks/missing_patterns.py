"""Cost of ``nan_policy="marginalize"`` per row, against the share of rows with gaps
and the number of distinct missingness patterns (issue 16).

    PYTHONPATH=. python benchmarks/missing_patterns.py            # about 2 minutes on 2 cores
    PYTHONPATH=. python benchmarks/missing_patterns.py --quick
    PYTHONPATH=. python benchmarks/missing_patterns.py --dtype float32

Times the E-step kernel (``estep_block``, one block in memory, one BLAS thread) on
the same rows with 0%, 1%, 10% and 50% of them given gaps, spread over 1, 8 or 64
distinct patterns (each pattern hides a random subset of the features), and prints
ns per row of the block and per row with gaps, next to the machine's floor measured
in the same run: a large square GEMM on one thread (GFLOP/s), and the time of the
complete-data E-step itself. ``--dtype float32`` times float32 rows: the complete
rows are computed in float32, the rows with gaps in float64 (see benchmarks/README.md
for why).
"""

import argparse
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dask_em import GaussianMixture
from dask_em.engine import estep_block
from dask_em.engine.marginal import marginalizing
from dask_em.families import get_family


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(n=1024, repeat=3):
    a = np.random.default_rng(0).standard_normal((n, n))
    best = min(_timed(lambda: a @ a) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def with_gaps(X, fraction, n_patterns, rng):
    """``X`` with ``fraction`` of its rows given gaps, from ``n_patterns`` distinct patterns."""
    n, D = X.shape
    patterns = set()
    while len(patterns) < n_patterns:
        hide = rng.random(D) < 0.3
        if 0 < hide.sum() < D:
            patterns.add(tuple(hide))
    patterns = np.array(sorted(patterns))
    rows = rng.choice(n, int(round(fraction * n)), replace=False)
    Y = X.copy()
    hide = patterns[rng.integers(0, len(patterns), rows.size)]
    block = Y[rows]
    block[hide] = np.nan
    Y[rows] = block
    return Y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, a smoke run")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="of the rows")
    args = parser.parse_args()
    n, D, K = (20_000, 8, 4) if args.quick else (200_000, 8, 4)
    repeat = 2 if args.quick else 3
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(K, D))
    X = centres[rng.integers(0, K, n)] + rng.standard_normal((n, D))
    print(f"CPU: {cpu_name()}; N={n:,} D={D} K={K} {args.dtype}, one block, one BLAS thread")
    with threadpool_limits(limits=1, user_api="blas"):
        print(f"floor: square GEMM {gemm_gflops():.1f} GFLOP/s on one thread")
        for cov in ("full", "diag"):
            gm = GaussianMixture(K, covariance_type=cov, max_iter=5, tol=0, random_state=0).fit(X[:20_000])
            state = gm._get_state()
            plain = get_family(f"gaussian-{cov}")
            family = marginalizing(plain)

            def run(data, fam=family):
                return min(_timed(lambda: estep_block(data, None, (fam, [state]), 0)) for _ in range(repeat))

            base = run(X.astype(args.dtype), plain)
            print(f"\n{cov}: complete-data E-step {1e9 * base / n:.0f} ns/row (nan_policy='raise')")
            print(f"{'rows with gaps':>15}{'patterns':>10}{'ns/row':>10}{'x complete':>12}{'ns/row with gaps':>18}")
            for fraction in (0.0, 0.01, 0.10, 0.50):
                for n_patterns in ((1,) if fraction == 0 else (1, 8, 64)):
                    data = X if fraction == 0 else with_gaps(X, fraction, n_patterns, rng)
                    t = run(data.astype(args.dtype))
                    gaps = fraction * n
                    extra = "" if fraction == 0 else f"{1e9 * (t - base * (1 - fraction)) / gaps:18.0f}"
                    label = "-" if fraction == 0 else n_patterns
                    print(f"{fraction:>15.0%}{label:>10}{1e9 * t / n:10.0f}{t / base:12.2f}{extra}")


if __name__ == "__main__":
    main()
