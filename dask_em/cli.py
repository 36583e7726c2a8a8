"""The ``dask-em`` command line: fit, predict, score, demo.

::

    dask-em fit STORE [--array NAME] [--feature-dim DIM] -k K \\
        [--model gaussian|kmeans|bernoulli|poisson|categorical] [--covariance-type T] \\
        [--scheduler ADDRESS] --output MODEL.npz
    dask-em predict MODEL.npz STORE --output LABELS.zarr [--what labels|proba|score]
    dask-em score MODEL.npz STORE
    dask-em impute MODEL.npz STORE --output FILLED.zarr
    dask-em demo

Without ``--scheduler`` a ``distributed.LocalCluster`` is started (and stopped at
the end); with it, the command connects to that scheduler. Progress goes to stderr
(a bar on a terminal, and one log line per EM iteration); results go to stdout.
Outputs are written to a temporary sibling and renamed into place, so a failed
run never leaves a half-written output where a good one was. Any error ends the
run with one line on stderr and exit status 2 (``--verbose`` shows the traceback).
"""

import argparse
import contextlib
import logging
import os
import sys
import textwrap
import time
import warnings

from dask_em._progress import ProgressBar, setup_logging, warnings_to_log
from dask_em._version import __version__

logger = logging.getLogger("dask_em.cli")

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
WHAT_NAMES = {"labels": "labels", "proba": "probabilities", "score": "log_likelihood"}
#: ``--model`` names and their estimator classes (in :mod:`dask_em`).
MODELS = {
    "gaussian": "GaussianMixture",
    "bayesian-gaussian": "BayesianGaussianMixture",
    "kmeans": "KMeans",
    "bernoulli": "BernoulliMixture",
    "poisson": "PoissonMixture",
    "categorical": "CategoricalMixture",
}
#: Options of ``dask-em fit`` that only some models take, and the parameter they set.
MODEL_OPTIONS = {
    "covariance_type": ("covariance_type", ("gaussian", "bayesian-gaussian")),
    "alpha": ("alpha", ("bernoulli", "poisson", "categorical")),
    "n_categories": ("n_categories", ("categorical",)),
}


def _out(message):
    print(message, flush=True)


def scheduler_target(scheduler):
    """``Client`` keyword arguments for ``--scheduler``: an address, or a scheduler file.

    A scheduler file is the JSON that ``dask scheduler --scheduler-file PATH`` (and
    dask-jobqueue, dask-mpi) write; a value that names an existing file, or ends in
    ``.json``, is read as one. A missing file is an error here, before any connection
    is tried (``Client`` would wait for it to appear).
    """
    if os.path.isfile(scheduler):
        return {"scheduler_file": scheduler}
    if scheduler.endswith(".json") or (os.sep in scheduler and "://" not in scheduler):
        raise ValueError(
            f"--scheduler {scheduler!r}: no such scheduler file. Give the file that "
            f"`dask scheduler --scheduler-file PATH` wrote, or an address such as tcp://host:8786."
        )
    return {"address": scheduler}


@contextlib.contextmanager
def dask_client(scheduler, *, n_workers=None, memory_limit="auto", quiet=False):
    """A ``distributed.Client`` on ``scheduler`` (address or scheduler file), or on a new LocalCluster.

    Prints the dashboard link (stderr) unless ``quiet``.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(**scheduler_target(scheduler), timeout="20s") as client:
            if not quiet:
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            yield client
        return
    kwargs = {"n_workers": n_workers, "threads_per_worker": 1} if n_workers else {}
    with LocalCluster(
        # a task's error reaches the client, which reports it in one line: no worker tracebacks
        processes=True, dashboard_address=":0", memory_limit=memory_limit, silence_logs=logging.CRITICAL, **kwargs
    ) as cluster, Client(cluster) as client:
        if not quiet:
            print(f"local cluster: {len(cluster.workers)} workers; dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        yield client


# ------------------------------------------------------------------ sub-commands
def _source_kwargs(args):
    return {"array": args.array, "feature_dim": args.feature_dim}


def check_input(args, model=None):
    """Open the input store (metadata only) before a cluster starts, so a mistyped path,
    array or dimension fails in a moment instead of after the cluster's start-up.

    A saved ``model`` fitted on xarray input lends its feature dimension, as it does
    when it predicts.
    """
    from dask_em.data import as_source

    if args.scheduler:
        scheduler_target(args.scheduler)
    log = logging.getLogger("dask_em")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # the fit logs what it finds; say it once
    try:
        kwargs = _source_kwargs(args)
        kwargs["feature_dim"] = kwargs["feature_dim"] or getattr(model, "feature_dim_", None)
        as_source(args.store, **kwargs)
    finally:
        log.setLevel(level)


NAN_HINT = ("hint: rows with NaN or infinite values can be left out with --nan-policy omit, "
            "or fitted on their observed features with --nan-policy marginalize")


def build_model(args):
    """The estimator that ``dask-em fit`` asked for, with the options given.

    Options left out keep the estimator's defaults; an option the chosen model does
    not take is an error naming the models that do.
    """
    import dask_em

    cls = getattr(dask_em, MODELS[args.model])
    params = {"n_clusters" if args.model == "kmeans" else "n_components": args.n_components}
    params.update(random_state=args.random_state, persist=args.persist, max_iter=args.max_iter, tol=args.tol)
    params.update(n_init=args.n_init, nan_policy=args.nan_policy)
    if args.init is not None:
        params["init" if args.model == "kmeans" else "init_params"] = args.init
    for option, (param, models) in MODEL_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if args.model not in models:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} applies to --model {' or '.join(models)}, not to --model {args.model}.")
        params[param] = value
    model = cls(**{k: v for k, v in params.items() if v is not None})
    model._validate_params()  # before a cluster starts
    return model


def _check_output(target, kind, what):
    """Refuse an output that cannot be written before a cluster starts or a pass runs."""
    from dask_em.io.locations import check_output, is_url

    if is_url(target) and target.split("://", 1)[0] == "memory":
        raise ValueError(f"Cannot write the {what} to {target!r}: memory:// is lost when dask-em exits; "
                         f"give a path or an object-store URL (s3://...).")
    check_output(target, kind, what)


def cmd_fit(args):
    model = build_model(args)
    _check_output(args.output, "file", "model file")
    if args.checkpoint:
        _check_output(args.checkpoint, "file", "checkpoint")
    check_input(args)
    max_iter = model.max_iter
    bar = args.bar = ProgressBar(max_iter, enabled=None if args.level <= logging.INFO else False)
    args.handler.bar = bar
    with dask_client(args.scheduler, quiet=args.quiet):
        start = time.perf_counter()
        try:
            bar.status("initialising: one pass draws a sample of rows, every start is set up on it")
            model.fit(args.store, checkpoint=args.checkpoint, callback=bar, **_source_kwargs(args))
            bar.finish(model.n_iter_, model.converged_)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
    model.save(args.output)
    state = "converged" if model.converged_ else "did not converge"
    if args.model == "kmeans":
        quality = f"inertia {model.inertia_:.6g}"
    elif args.model == "bayesian-gaussian":
        quality = f"lower bound {model.lower_bound_:.6g}"
    else:
        quality = f"mean log-likelihood {model.lower_bound_:.6g}"
    _out(f"{state} after {model.n_iter_} iterations in {seconds:.1f} s; {quality}")
    _out(f"model written to {args.output}")
    return 0


def _load(args):
    """The saved model, with the command's ``--nan-policy`` when given."""
    import dask_em

    model = dask_em.load(args.model)
    nan_policy = getattr(args, "nan_policy", None)
    if nan_policy is not None:
        model.set_params(nan_policy=nan_policy)
    return model


def cmd_predict(args):
    from dask_em.io import write_zarr
    from dask_em.io.xarray_source import result_dataset

    _check_output(args.output, "zarr", "output store")
    model = _load(args)
    methods = {"labels": "predict", "proba": "predict_proba", "score": "score_samples"}
    if not hasattr(model, methods[args.what]):
        raise ValueError(
            f"--what {args.what} needs a model with {methods[args.what]}; {type(model).__name__} has "
            f"none (use --what labels)."
        )
    check_input(args, model)
    with dask_client(args.scheduler, quiet=args.quiet):
        method = getattr(model, methods[args.what])
        result = method(args.store, **_source_kwargs(args))
        n_labels = getattr(model, "n_clusters", None) or model.n_components
        with warnings.catch_warnings():  # xarray's default, not a problem of the user's
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            write_zarr(result_dataset(result, args.what, n_labels), args.output)
    _out(f"{WHAT_NAMES[args.what]} written to {args.output}")
    return 0


def cmd_score(args):
    model = _load(args)
    check_input(args, model)
    with dask_client(args.scheduler, quiet=args.quiet):
        value = model.score(args.store, **_source_kwargs(args))
    if type(model).__name__ == "KMeans":
        _out(f"inertia {-value:.10g}")
    else:
        _out(f"mean log-likelihood {value:.10g}")
    return 0


def cmd_impute(args):
    import dask.array as da
    import xarray as xr

    from dask_em.io import write_zarr

    _check_output(args.output, "zarr", "output store")
    model = _load(args)
    check_input(args, model)
    with dask_client(args.scheduler, quiet=args.quiet):
        result = model.impute(args.store, **_source_kwargs(args))
        if isinstance(result, da.Array):
            result = xr.DataArray(result, dims=("sample", "feature"))
        with warnings.catch_warnings():  # xarray's default, not a problem of the user's
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            write_zarr(result.to_dataset(name="imputed"), args.output)
    _out(f"imputed data written to {args.output}")
    return 0


def cmd_demo(args):
    from dask_em._demo import run_demo

    return run_demo(args, dask_client, _out)


# ------------------------------------------------------------------ parser
def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _persist(text):
    try:
        return {"auto": "auto", "yes": True, "no": False}[text]
    except KeyError:  # argparse turns this into a usage error (exit status 2), not a traceback
        raise argparse.ArgumentTypeError(f"must be auto, yes or no, got {text!r}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is None or the help already says it) and
    keeps the layout of the description and the example (epilog)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and not any(default is skip for skip in (None, False, argparse.SUPPRESS))
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


EXAMPLES = {
    "fit": """example:
  dask-em fit pixels.zarr -k 8 --covariance-type diag --output model.npz
  dask-em fit s2.zarr --array reflectance --feature-dim band --model kmeans -k 6 \\
      --scheduler scheduler.json --output landcover.npz""",
    "predict": """example:
  dask-em predict model.npz pixels.zarr --output labels.zarr
  dask-em predict model.npz pixels.zarr --what proba --output proba.zarr

Labels are stored as the smallest signed integer type that holds them (int8 up to
127 components), -1 (the Zarr fill value) where a row was left out (NaN, with
--nan-policy omit); xarray.open_zarr reads them as floats with NaN there.
Probabilities are float with NaN there, over the dimensions (sample, component).""",
    "score": """example:
  dask-em score model.npz pixels.zarr --scheduler tcp://10.0.0.5:8786""",
    "impute": """example:
  dask-em fit s2.zarr --feature-dim band -k 6 --nan-policy marginalize --output model.npz
  dask-em impute model.npz s2.zarr --feature-dim band --output s2-filled.zarr

The store gets one variable, imputed: over (sample, feature) for a 2-D input, over the
input's dimensions for a store read with --feature-dim; observed values are copied.""",
    "demo": """example:
  dask-em demo --workers 2 --memory-limit 300MiB""",
}


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="only results and errors")
    noise.add_argument("-v", "--verbose", action="store_true", help="debug log and tracebacks")
    common.add_argument(
        "--scheduler", metavar="ADDRESS|FILE",
        help="a running Dask scheduler: its address (tcp://host:8786) or the scheduler file that "
        "`dask scheduler --scheduler-file` wrote (default: start a LocalCluster)",
    )

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("store", help="Zarr store: path or URL (format 2 or 3)")
    data.add_argument("--array", help="array (or xarray variable) inside the store's group")
    data.add_argument("--feature-dim", help="dimension holding the features (reads the store with xarray)")
    data.add_argument("--nan-policy", choices=("raise", "omit", "marginalize"),
                      help="rows with NaN or infinity: an error, left out, or (marginalize) rows with some "
                      "features NaN fitted and scored on the others (default: omit for a store read with "
                      "--feature-dim, else raise; predict, score: the model's)")

    parser = argparse.ArgumentParser(
        prog="dask-em", description="Mixture models by EM on larger-than-memory data.", formatter_class=HelpFormatter,
        epilog="Run `dask-em COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name, description, **kwargs):
        return sub.add_parser(
            name, formatter_class=HelpFormatter, description=textwrap.fill(description, 80),
            epilog=EXAMPLES[name], **kwargs,
        )

    fit = add_command(
        "fit", parents=[common, data], help="fit a model (Gaussian mixture, K-means, Bernoulli, Poisson or "
        "categorical mixture) and save it",
        description="Fit a mixture model (or K-means) to a Zarr store by EM, one pass over the store "
        "per iteration, and save it.",
    )
    fit.add_argument(
        "--model", choices=tuple(MODELS), default="gaussian",
        help="gaussian: GaussianMixture (default); kmeans: KMeans; bernoulli, poisson, categorical: "
        "mixtures of binary, count or categorical features",
    )
    fit.add_argument("-k", "--n-components", type=_positive_int, required=True,
                     help="number of components (clusters for kmeans)")
    fit.add_argument("--covariance-type", choices=COVARIANCE_TYPES, help="gaussian only (default full)")
    fit.add_argument("--alpha", type=float, help="smoothing pseudo-count of the discrete models (default 1e-3)")
    fit.add_argument("--n-categories", type=_positive_int, help="categorical only: codes per feature "
                     "(default: inferred, one extra pass)")
    fit.add_argument("--max-iter", type=_positive_int, help="default: the model's (100; 300 for kmeans)")
    fit.add_argument("--tol", type=float, help="default: the model's (1e-3; 1e-4 for kmeans)")
    fit.add_argument("--n-init", type=_positive_int, help="starts (all share every pass; default 1)")
    fit.add_argument(
        "--init", "--init-params", dest="init",
        choices=("kmeans", "k-means++", "random", "random_from_data", "k-means||"),
        help="initialisation: init_params of the mixtures (default kmeans), init of kmeans "
        "(k-means||, k-means++ or random; default k-means||)",
    )
    fit.add_argument("--random-state", type=int, default=0, help="seed of the initialisation")
    fit.add_argument("--persist", type=_persist, default="auto", choices=("auto", True, False), metavar="{auto,yes,no}",
                     help="keep the data in cluster memory between passes (default auto: when they fit)")
    fit.add_argument("--checkpoint", help="checkpoint file; re-running with it resumes an interrupted fit")
    fit.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    fit.set_defaults(func=cmd_fit)

    predict = add_command(
        "predict", parents=[common], help="write labels (or probabilities) to Zarr",
        description="Write the labels, probabilities or log-likelihoods of a saved model for every row "
        "of a store to a new Zarr store.",
    )
    predict.add_argument("model", help="model file written by `dask-em fit`")
    for action in data._actions:
        predict._add_action(action)
    predict.add_argument("--what", choices=tuple(WHAT_NAMES), default="labels",
                         help="labels, probabilities of every component, or per-row log-likelihood")
    predict.add_argument("-o", "--output", required=True, help="Zarr store to write")
    predict.set_defaults(func=cmd_predict)

    score = add_command(
        "score", parents=[common], help="mean log-likelihood of a store under a model",
        description="Print the mean log-likelihood of a store under a saved model (the inertia for K-means).",
    )
    score.add_argument("model", help="model file written by `dask-em fit`")
    for action in data._actions:
        score._add_action(action)
    score.set_defaults(func=cmd_score)

    impute = add_command(
        "impute", parents=[common], help="fill NaN with their expectation under a model, to Zarr",
        description="Write a store's rows to a new Zarr store with each NaN replaced by its conditional "
        "expectation under a saved model (for K-means, the nearest centre's coordinate over the observed "
        "features).",
    )
    impute.add_argument("model", help="model file written by `dask-em fit`")
    for action in data._actions:
        if action.dest != "nan_policy":
            impute._add_action(action)
    impute.add_argument("-o", "--output", required=True, help="Zarr store to write")
    impute.set_defaults(func=cmd_impute)

    demo = add_command(
        "demo", parents=[common], help="fit a dataset larger than a small cluster's memory",
        description="Write a Zarr store larger than a small local cluster's memory, fit a Gaussian "
        "mixture to it (streaming it every iteration) and report against the true parameters.",
    )
    demo.add_argument("--workers", type=_positive_int, default=2, help="worker processes of the local cluster")
    demo.add_argument("--memory-limit", default="300MiB", help="memory limit per worker")
    demo.add_argument("--size-factor", type=float, default=1.1, help="dataset size / total memory limit")
    demo.add_argument("--n-components", type=_positive_int, default=3, help="components of the true mixture")
    demo.add_argument("--keep", help="folder to keep the generated store in (default: a temporary one)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    log = logging.getLogger("dask_em")
    saved = log.level, log.propagate  # restored on return: main() may run inside an application
    args.handler = setup_logging(args.level)
    try:
        with warnings_to_log():
            return args.func(args)
    except KeyboardInterrupt:
        print("dask-em: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for the user; the traceback with --verbose
        if args.verbose:
            logger.exception("failed")
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dask-em: error: {message}", file=sys.stderr)
        if "NaN or infinite" in message and getattr(args, "nan_policy", "omit") not in ("omit", "marginalize"):
            print(f"dask-em: {NAN_HINT}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(args.handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
