"""Out-of-core benchmark: fit a GaussianMixture to a float32 Zarr store many times
larger than the total memory limit of a LocalCluster.

Reports seconds per EM iteration, the time of one raw read pass over the same store
(``da.from_zarr(...).sum()``) in the same run, the peak memory (RSS) of each worker,
and whether any worker was restarted or paused for memory.

Full size (issue 3: 2 workers x 512 MiB, a store of 8 x 1 GiB = 8 GiB)::

    PYTHONPATH=. python benchmarks/out_of_core.py --workers 2 --memory-limit 512MiB --factor 8

Smoke size (seconds)::

    PYTHONPATH=. python benchmarks/out_of_core.py --memory-limit 300MiB --factor 0.2 --max-iter 2
"""

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import dask.array as da
import numpy as np
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em._demo import demo_block


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _mib(n):
    return round(n / 2**20, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="512MiB", help="per worker")
    p.add_argument("--factor", type=float, default=8.0, help="store size / total memory limit (>= 8 for the issue)")
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=3)
    p.add_argument("--covariance-type", default="full")
    p.add_argument("--max-iter", type=int, default=5, help="EM iterations (tol=0: exactly this many)")
    p.add_argument("--chunk-mib", type=float, default=8)
    p.add_argument("--store", help="where to write the Zarr store (default: a temporary folder, removed after)")
    args = p.parse_args(argv)

    limit = parse_bytes(args.memory_limit)
    D, K = args.features, args.n_components
    rows_per_chunk = int(args.chunk_mib * 2**20 // (4 * D))
    n_chunks = max(1, int(np.ceil(args.factor * limit * args.workers / (rows_per_chunk * D * 4))))
    n_rows = n_chunks * rows_per_chunk
    folder = None if args.store else tempfile.mkdtemp(prefix="dask-em-bench-")
    store = args.store or os.path.join(folder, "bench.zarr")
    report = {
        "workers": args.workers,
        "memory_limit_mib_per_worker": _mib(limit),
        "store_mib": _mib(n_rows * D * 4),
        "store_over_total_limit": round(n_rows * D * 4 / (limit * args.workers), 2),
        "rows": n_rows,
        "features": D,
        "n_components": K,
        "covariance_type": args.covariance_type,
        "chunk_mib": args.chunk_mib,
    }
    try:
        with LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=limit, dashboard_address=":0"
        ) as cluster, Client(cluster) as client:
            print("dashboard:", client.dashboard_link, flush=True)
            pids = client.run(os.getpid)
            t = time.perf_counter()
            X = da.map_blocks(
                demo_block, rows_per_chunk, K, D, 0, chunks=((rows_per_chunk,) * n_chunks, (D,)), dtype=np.float32
            )
            da.to_zarr(X, store, overwrite=True)
            report["write_seconds"] = round(time.perf_counter() - t, 2)
            report["peak_rss_mib_after_write"] = {w: _mib(v) for w, v in client.run(_peak_rss).items()}

            t = time.perf_counter()
            da.from_zarr(store).sum().compute()
            report["raw_read_pass_seconds"] = round(time.perf_counter() - t, 2)

            gm = GaussianMixture(
                K, covariance_type=args.covariance_type, init_params="k-means++", tol=0, max_iter=args.max_iter,
                random_state=0, verbose=1,
            )
            t = time.perf_counter()
            gm.fit(store)  # persist="auto": streams, since the store is larger than memory
            report["fit_seconds"] = round(time.perf_counter() - t, 2)
            per_iter = [h["seconds"] for h in gm.history_]
            report["seconds_per_iteration"] = round(float(np.mean(per_iter)), 2)
            report["iteration_over_read_pass"] = round(report["seconds_per_iteration"] / report["raw_read_pass_seconds"], 2)
            report["peak_rss_mib_per_worker"] = {w: _mib(v) for w, v in client.run(_peak_rss).items()}
            report["workers_restarted"] = client.run(os.getpid) != pids
            logs = [line for lines in client.get_worker_logs().values() for _, line in lines]
            report["memory_pauses_or_warnings"] = sum("Pausing worker" in ln or "Restarting worker" in ln for ln in logs)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report, indent=1))
    if report["workers_restarted"] or report["memory_pauses_or_warnings"]:
        raise SystemExit("a worker was restarted or paused for memory")
    return report


if __name__ == "__main__":
    main()
