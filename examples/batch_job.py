"""A batch-job script: fit a Gaussian mixture to a Zarr store, write labels and figures.

Meant for a job scheduler (SLURM, PBS, LSF, cron) where the Dask cluster is started
by the job itself with a scheduler file on a shared filesystem::

    dask scheduler --scheduler-file $HOME/sched.json &
    srun dask worker --scheduler-file $HOME/sched.json --nthreads 4 --memory-limit 16GiB &
    python examples/batch_job.py /shared/cube.zarr --array reflectance -k 8 \\
        --scheduler-file $HOME/sched.json --labels /shared/labels.zarr --figures figs/

Without ``--scheduler-file`` or ``--scheduler`` it starts a LocalCluster on this node.
Exit status 0 on success, 1 on bad input or a fit that did not converge, with one
line on stderr saying what to do.
"""

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import dask.array as da
import matplotlib

matplotlib.use("Agg")  # no display in a batch job

import zarr  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from dask_em import GaussianMixture  # noqa: E402
from dask_em.plot import plot_components, plot_convergence  # noqa: E402

logger = logging.getLogger("batch_job")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Fit a GaussianMixture to a Zarr store in a batch job.")
    p.add_argument("store")
    p.add_argument("--array", default=None, help="array inside the store, when the store is a group")
    p.add_argument("-k", "--n-components", type=int, required=True)
    p.add_argument("--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"])
    p.add_argument("--max-iter", type=int, default=100)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler-file", default=None, help="JSON file written by `dask scheduler --scheduler-file`")
    where.add_argument("--scheduler", default=None, help="scheduler address, tcp://host:8786")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers when no scheduler is given")
    p.add_argument("--memory-limit", default="2GiB", help="LocalCluster memory per worker")
    p.add_argument("--labels", default=None, help="Zarr store for the label of every row")
    p.add_argument("--figures", default=None, help="folder for convergence.png and components.png")
    return p.parse_args(argv)


def open_rows(store, array):
    """The store's (n_samples, n_features) array, lazily; SystemExit with a hint otherwise."""
    if not Path(store).exists():
        raise SystemExit(f"batch_job: no Zarr store at {store}; check the path (it must be visible from every worker)")
    node = zarr.open(store, mode="r")
    if array is not None:
        node = node[array]
    elif not hasattr(node, "shape"):
        raise SystemExit(f"batch_job: {store} is a group; name the array with --array ({', '.join(sorted(node.array_keys()))})")
    return da.from_zarr(node)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    X = open_rows(args.store, args.array)
    with ExitStack() as stack:
        if args.scheduler_file:
            client = stack.enter_context(Client(scheduler_file=args.scheduler_file))
        elif args.scheduler:
            client = stack.enter_context(Client(args.scheduler))
        else:
            cluster = stack.enter_context(
                LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit, dashboard_address=":0")
            )
            client = stack.enter_context(Client(cluster))
        logger.info("dashboard: %s", client.dashboard_link)
        logger.info("data: %s, %d rows per chunk", X.shape, X.chunks[0][0])
        gm = GaussianMixture(
            args.n_components, covariance_type=args.covariance_type, max_iter=args.max_iter, random_state=0, verbose=1
        ).fit(X)
        if args.labels:
            da.to_zarr(gm.predict(X), args.labels, overwrite=True)
            logger.info("labels written to %s", args.labels)
    if args.figures:
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        plot_convergence(gm).figure.savefig(figures / "convergence.png", dpi=80)
        projection = "pca" if args.n_components >= 3 and X.shape[1] > 2 else None
        plot_components(gm, X, projection=projection).figure.savefig(figures / "components.png", dpi=80)
        logger.info("figures written to %s", figures)
    print(f"converged={gm.converged_} n_iter={gm.n_iter_} mean_loglik={gm.lower_bound_:.6f}")
    if not gm.converged_:
        print("batch_job: the fit did not converge; raise --max-iter", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
