"""``dask-em demo``: generate a Zarr store larger than a small local cluster's memory
limit, fit a GaussianMixture to it (streaming the data every iteration), and show
the dashboard link, progress and result. Takes well under a minute on 2 cores.
"""

import logging
import os
import shutil
import tempfile
import time

import numpy as np

logger = logging.getLogger("dask_em.cli")

N_FEATURES = 16
ROWS_PER_CHUNK = 2**17  # 8 MiB of float32 rows
TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])


def demo_means(K, D):
    """Well separated true means (K, D) of the demo mixture."""
    return np.random.default_rng(2024).normal(scale=4.0, size=(K, D))


def demo_block(n_rows, K, D, seed, block_id=None):
    """One row block of the demo data (float32), drawn from ``(seed, block index)``."""
    rng = np.random.default_rng([seed, block_id[0]])
    weights = TRUE_WEIGHTS[:K] / TRUE_WEIGHTS[:K].sum() if K <= 3 else np.full(K, 1.0 / K)
    labels = rng.choice(K, size=n_rows, p=weights)
    return (demo_means(K, D)[labels] + rng.normal(size=(n_rows, D))).astype(np.float32)


def _mib(n):
    return f"{n / 2**20:,.0f} MiB"


def _passes(model):
    """What the fit read: its stepwise steps and its batch EM passes, with their time."""
    steps = [h for h in model.history_ if h.get("kind") == "stepwise"]
    batch = [h for h in model.history_ if h.get("kind", "batch") == "batch"]
    text = f"{len(batch)} batch EM passes ({np.mean([h['seconds'] for h in batch]):.2f} s each)" if batch else ""
    if steps:
        passes = max(h["pass"] for h in steps)
        text = f"{passes} stepwise pass ({len(steps)} mini-batch steps), then " + text
    return text


def run_demo(args, dask_client, out):
    """Generate, fit, report; ``dask_client`` is the CLI's cluster context manager."""
    import dask.array as da
    from dask.utils import parse_bytes

    from dask_em import GaussianMixture
    from dask_em._progress import ProgressBar

    K, D = args.n_components, N_FEATURES
    limit = parse_bytes(args.memory_limit)
    total_limit = limit * args.workers
    n_chunks = max(1, int(np.ceil(args.size_factor * total_limit / (ROWS_PER_CHUNK * D * 4))))
    n_rows = n_chunks * ROWS_PER_CHUNK
    folder = args.keep or tempfile.mkdtemp(prefix="dask-em-demo-")
    store = os.path.join(folder, "demo.zarr")
    try:
        with dask_client(None, n_workers=args.workers, memory_limit=limit, quiet=args.quiet):
            out(
                f"demo: {args.workers} workers x {_mib(limit)} memory limit = {_mib(total_limit)}; "
                f"dataset {n_rows:,} rows x {D} features float32 = {_mib(n_rows * D * 4)} in {store}"
            )
            start = time.perf_counter()
            X = da.map_blocks(
                demo_block, ROWS_PER_CHUNK, K, D, 0, chunks=((ROWS_PER_CHUNK,) * n_chunks, (D,)), dtype=np.float32,
                name="demo-data",
            )
            da.to_zarr(X, store, overwrite=True)
            out(f"wrote the store in {time.perf_counter() - start:.1f} s; fitting (one pass over the store per iteration)")
            model = GaussianMixture(K, covariance_type="diag", init_params="k-means++", max_iter=30, random_state=0)
            bar = ProgressBar(model.max_iter, enabled=None if args.level <= logging.INFO else False)
            args.handler.bar = bar
            start = time.perf_counter()
            try:
                bar.status("initialising: one pass draws a sample of rows, every start is set up on it")
                model.fit(store, callback=bar)
                bar.finish(model.n_iter_, model.converged_)
            finally:
                bar.close()
            seconds = time.perf_counter() - start
        truth = demo_means(K, D)
        order = [int(np.argmin(((truth - m) ** 2).sum(axis=1))) for m in model.means_]
        err = max(float(np.abs(m - truth[o]).max()) for m, o in zip(model.means_, order))
        out(
            f"fitted in {seconds:.1f} s: {_passes(model)}, "
            f"converged={model.converged_}, mean log-likelihood {model.lower_bound_:.5g}"
        )
        out(f"weights {np.round(np.sort(model.weights_)[::-1], 3).tolist()} (true {TRUE_WEIGHTS[:K].tolist()})")
        out(f"largest error of a fitted mean against the true one: {err:.3g}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
