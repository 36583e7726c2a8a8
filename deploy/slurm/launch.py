"""Fit a Gaussian mixture to a Zarr store on a SLURM cluster, with adaptive Dask workers.

Run it inside a small SLURM job (see ``fit.sbatch``), or on a login node where jobs
may be submitted. It starts a Dask scheduler here, and dask-jobqueue's
``SLURMCluster`` submits worker jobs as the fit needs them (``adapt`` between
``--min-workers`` and ``--max-workers``); the store must be on a filesystem every
node sees::

    python deploy/slurm/launch.py /shared/cube.zarr --array reflectance \\
        --n-components 8 --covariance-type full \\
        --cores 8 --processes 2 --memory 32GiB --walltime 02:00:00 --queue normal \\
        --min-workers 2 --max-workers 16 \\
        --labels /shared/labels.zarr --summary fit-summary.json

``run(argv, cluster_factory=...)`` takes the cluster class as an argument, so the
same code runs against a ``distributed.LocalCluster`` where there is no SLURM
(that is how it is tested). Needs ``pip install dask-jobqueue`` on SLURM.
"""

import argparse
import json
import logging
import sys
import time

import dask.array as da

logger = logging.getLogger("dask_em.deploy.slurm")

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def build_parser():
    """The launcher's command line (also used by the tests to check ``fit.sbatch``)."""
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Fit a GaussianMixture to a Zarr store with Dask workers submitted as SLURM jobs.",
    )
    data = p.add_argument_group("data and model")
    data.add_argument("store", help="Zarr store (path on a shared filesystem) holding an (n_samples, n_features) array")
    data.add_argument("--array", default=None, help="name of the array inside the store when it is a group")
    data.add_argument("--n-components", type=int, required=True, help="number of mixture components K")
    data.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full")
    data.add_argument("--max-iter", type=int, default=100)
    data.add_argument("--tol", type=float, default=1e-3)
    data.add_argument("--random-state", type=int, default=0)
    data.add_argument("--output", default=None, help="save the fitted model here (dask_em.load reads it back)")
    data.add_argument("--labels", default=None, help="write the label of every row to this Zarr store")
    data.add_argument("--summary", default=None, help="write a JSON summary of the fit (parameters, history) here")

    jobs = p.add_argument_group("SLURM worker jobs (dask-jobqueue SLURMCluster)")
    jobs.add_argument("--queue", default=None, help="SLURM partition (-p)")
    jobs.add_argument("--account", default=None, help="SLURM account (-A)")
    jobs.add_argument("--walltime", default="01:00:00", help="lifetime of each worker job, HH:MM:SS")
    jobs.add_argument("--cores", type=int, default=4, help="cores per worker job")
    jobs.add_argument("--processes", type=int, default=1, help="Dask worker processes per job (threads = cores / processes)")
    jobs.add_argument("--memory", default="16GiB", help="memory per worker job, shared by its processes")
    jobs.add_argument("--interface", default=None, help="network interface the workers use, e.g. ib0")
    jobs.add_argument("--local-directory", default=None, help="node-local scratch for spilling, e.g. $TMPDIR")
    jobs.add_argument("--log-directory", default=None, help="where worker job logs go")
    jobs.add_argument("--job-extra", action="append", default=[], help="extra #SBATCH directive, repeatable, e.g. --job-extra=--qos=long")
    jobs.add_argument("--prologue", action="append", default=[], help="shell line run before each worker starts, repeatable, e.g. 'source venv/bin/activate'")
    jobs.add_argument("--min-workers", type=int, default=1, help="adaptive scaling: fewest Dask workers")
    jobs.add_argument("--max-workers", type=int, default=8, help="adaptive scaling: most Dask workers")
    jobs.add_argument("--dashboard-address", default=":8787", help="scheduler dashboard address")
    jobs.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for the first workers (queue time)")
    return p


def check_args(args):
    """Errors that argparse cannot see; each says how to fix it."""
    if args.n_components < 1:
        raise SystemExit(f"launch.py: --n-components must be at least 1, got {args.n_components}")
    if args.processes < 1 or args.cores < args.processes:
        raise SystemExit(
            f"launch.py: --cores ({args.cores}) must be at least --processes ({args.processes}) "
            f"so that each worker process gets one thread or more"
        )
    if not 0 < args.min_workers <= args.max_workers:
        raise SystemExit(
            f"launch.py: need 0 < --min-workers <= --max-workers, got {args.min_workers} and {args.max_workers}"
        )


def cluster_options(args):
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` from the parsed arguments."""
    options = {
        "cores": args.cores,
        "processes": args.processes,
        "memory": args.memory,
        "walltime": args.walltime,
        "job_extra_directives": list(args.job_extra),
        "job_script_prologue": list(args.prologue),
        "scheduler_options": {"dashboard_address": args.dashboard_address},
    }
    for name in ("queue", "account", "interface", "local_directory", "log_directory"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return options


def slurm_cluster(**options):
    """``dask_jobqueue.SLURMCluster(**options)``, with a clear error when it is missing."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise SystemExit(
            "launch.py: dask-jobqueue is not installed; pip install dask-jobqueue in the "
            "environment the job runs in (it is not a dependency of dask-em)."
        ) from exc
    return SLURMCluster(**options)


def open_store(store, array=None):
    """The store's array as a dask array with its Zarr chunking (read lazily)."""
    import zarr

    node = zarr.open(store, mode="r")
    if array is not None:
        node = node[array]
    elif not hasattr(node, "shape"):
        names = sorted(node.array_keys())
        raise SystemExit(f"launch.py: {store} is a Zarr group; pick an array with --array ({', '.join(names)})")
    return da.from_zarr(node)


def run(argv=None, cluster_factory=slurm_cluster):
    """Start the cluster, scale adaptively, fit, write the outputs; return the summary.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None).
    cluster_factory : callable, default=slurm_cluster
        Called as ``cluster_factory(**cluster_options(args))``; returns a Dask cluster
        that supports ``adapt(minimum=..., maximum=...)`` and the context manager protocol.

    Returns
    -------
    dict
        The fit summary (also written to ``--summary``).
    """
    from distributed import Client

    from dask_em import GaussianMixture

    args = build_parser().parse_args(argv)
    check_args(args)
    X = open_store(args.store, args.array)
    options = cluster_options(args)
    logger.info("starting the cluster with %s", options)
    with cluster_factory(**options) as cluster:
        cluster.adapt(minimum=args.min_workers, maximum=args.max_workers)
        with Client(cluster) as client:
            logger.info("dashboard: %s", client.dashboard_link)
            client.wait_for_workers(args.min_workers, timeout=args.startup_timeout)
            start = time.perf_counter()
            gm = GaussianMixture(
                args.n_components,
                covariance_type=args.covariance_type,
                max_iter=args.max_iter,
                tol=args.tol,
                random_state=args.random_state,
            ).fit(X)
            seconds = time.perf_counter() - start
            if args.output:
                gm.save(args.output)
                logger.info("model written to %s", args.output)
            if args.labels:
                da.to_zarr(gm.predict(X), args.labels, overwrite=True)
                logger.info("labels written to %s", args.labels)
            summary = {
                "store": args.store,
                "array": args.array,
                "shape": list(X.shape),
                "chunks_rows": list(X.chunks[0][:1]),
                "n_components": args.n_components,
                "covariance_type": args.covariance_type,
                "converged": bool(gm.converged_),
                "n_iter": int(gm.n_iter_),
                "lower_bound": float(gm.lower_bound_),
                "seconds": seconds,
                "weights": gm.weights_.tolist(),
                "means": gm.means_.tolist(),
                "history": gm.history_,
                "dashboard": client.dashboard_link,
                "workers_at_end": len(client.scheduler_info(n_workers=-1)["workers"]),
            }
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    logger.info(
        "fit %s: %d iterations, converged=%s, mean log-likelihood %.6g, %.1f s",
        args.store, summary["n_iter"], summary["converged"], summary["lower_bound"], seconds,
    )
    return summary


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    run(argv)


if __name__ == "__main__":
    main()
