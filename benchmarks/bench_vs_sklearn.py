"""Seconds per EM iteration: dask-em against scikit-learn, same data, start and iterations.

Prints, in one run, for each covariance type: dask-em and scikit-learn seconds per
iteration, their ratio, and the ratio of dask-em's iteration to one raw read pass over
the same (in-memory, chunked) data.

    python benchmarks/bench_vs_sklearn.py                       # N=1e6, D=16, K=8
    python benchmarks/bench_vs_sklearn.py --n 200000 --d 64 --k 16 --cov full
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import GaussianMixture


def make_data(n, d, k, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    return X.astype(dtype)


def start_params(X, k, cov_type, seed=0):
    """A common starting point: random rows as means, unit precisions, equal weights."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)].astype(np.float64)
    prec = {
        "full": np.repeat(np.eye(d)[None], k, axis=0),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[cov_type]
    return dict(weights_init=np.full(k, 1.0 / k), means_init=means, precisions_init=prec)


def per_iteration(fit, n_iter):
    start = time.perf_counter()
    fit()
    return (time.perf_counter() - start) / n_iter


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--cov", nargs="+", default=["full", "diag"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default="float64")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    X = make_data(args.n, args.d, args.k, dtype=np.dtype(args.dtype))
    # dask-em wraps NumPy input itself; time its raw read pass on the same blocks
    from dask_em.data import as_row_chunked

    Xd, _ = as_row_chunked(X)
    Xd = Xd.persist()
    t0 = time.perf_counter()
    Xd.sum().compute()
    read_pass = time.perf_counter() - t0
    print(f"N={args.n} D={args.d} K={args.k} dtype={args.dtype} iterations={args.iters} "
          f"blocks={Xd.numblocks[0]} read pass {read_pass:.3f} s")
    print(f"{'cov':<10}{'dask-em s/it':>14}{'sklearn s/it':>14}{'ratio':>8}{'/read pass':>12}")
    for cov in args.cov:
        init = start_params(X, args.k, cov)
        kw = dict(n_components=args.k, covariance_type=cov, tol=0, max_iter=args.iters, **init)
        ours = per_iteration(lambda: GaussianMixture(**kw).fit(Xd), args.iters)
        theirs = per_iteration(lambda: SkGaussianMixture(**kw).fit(X), args.iters)
        print(f"{cov:<10}{ours:>14.3f}{theirs:>14.3f}{ours / theirs:>8.2f}{ours / read_pass:>12.1f}")


if __name__ == "__main__":
    main()
