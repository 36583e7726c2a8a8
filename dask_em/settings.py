"""The fit's settings: the algorithms' names, the limits of EM on the initialisation
sample, and the ``dask.config`` keys that tune a fit (``dask_em.stepwise.*``,
``dask_em.accelerate``), with the subset a checkpoint must match."""

from concurrent.futures import ThreadPoolExecutor

import dask
from dask.system import CPU_COUNT

#: The fit algorithms (``algorithm`` of the estimators).
ALGORITHMS = ("auto", "em", "stepwise")
#: Most Lloyd iterations on the initialisation sample of a stepwise KMeans fit (in memory).
SAMPLE_EM_MAX_ITER = 200
#: Most E-steps of (SQUAREM-accelerated) EM on the initialisation sample of a stepwise
#: mixture fit (in memory). More fit the sample's own noise: on clusters that overlap
#: much (benchmarks/few_pass.py, ``--spread 0.4 --mixing 0``, full covariance) EM on the
#: 100,000-row sample keeps climbing by ~1e-6 per E-step along the directions the
#: sample determines worst, and the fit that followed ended farther from the full
#: data's fixed point the longer it ran (by 3.6e-4 to 9.6e-4 in mean log-likelihood
#: after 25 to 500 E-steps, same passes), while 500 E-steps took 36 s against 2 s for
#: the 4 passes. 50 keep the plateau crossing of the default store (diag: within
#: 1.4e-4 of 500 E-steps, 25 were 1e-3 to 2e-3 short).
SAMPLE_EM_MAX_STEPS = 50


def sample_em_tol(tol):
    """Tolerance of EM on the initialisation sample: ``max(tol * 1e-6, 1e-12)``.

    E-steps on the sample cost no pass and, accelerated by SQUAREM and run on the
    machine's threads, little time (15 ms on 100,000 x 16 rows, K=8 diagonal, two
    cores); the closer the start, the fewer passes follow. A tolerance far below the
    fit's also carries EM across the plateaus of overlapping clusters, where the mean
    log-likelihood rises by less than 1e-7 per iteration for tens of iterations before
    climbing again (by 1e-2 on the benchmark of benchmarks/few_pass.py): tol / 100
    stopped there. So in practice :data:`SAMPLE_EM_MAX_STEPS` ends it.
    """
    return max(tol * 1e-6, 1e-12)


def in_memory_threads():
    """Threads of the fit's in-memory work (the initialisation sample's E-steps and
    Lloyd iterations, a KMeans fit's steps on its kept rows): those of dask's local
    threaded scheduler, ``dask.config`` key ``num_workers`` (default: the cores
    available, ``dask.system.CPU_COUNT``)."""
    return max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))


def map_on_threads(fn, items, threads=None):
    """``[fn(item) for item in items]``, run on up to ``threads`` threads (default
    :func:`in_memory_threads`), in the calling thread when that is one; the results
    in the items' order, so sums taken over them do not depend on the thread count."""
    threads = max(1, min(len(items), threads or in_memory_threads()))
    if threads == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


#: Stepwise-EM defaults (``dask_em.stepwise.<name>``), see :func:`stepwise_setting`;
#: the names are the keywords of :func:`dask_em.engine.run_stepwise`.
STEPWISE_DEFAULTS = {"passes": 1, "alpha": 0.6, "t0": 2.0, "batch_chunks": None, "average": 0.5}
#: Those that differ for hard-assignment families (K-means).
HARD_STEPWISE_DEFAULTS = {"alpha": 0.51, "average": 0.25}


def stepwise_setting(name, hard=False):
    """A stepwise-EM setting from ``dask.config`` (``dask_em.stepwise.<name>``).

    ``passes`` (1): passes of stepwise EM before the exact batch finish;
    ``alpha`` (0.6): decay of the step size ``eta_t = (t + t0) ** -alpha``;
    ``t0`` (2): its offset; ``batch_chunks`` (None: one chunk per thread of the
    scheduler): the fewest chunks in a mini-batch; ``average`` (0.5): the fraction
    of the last pass's steps whose running statistics are averaged into the
    final estimate (Polyak-Ruppert; 0 turns it off): it halves to quarters the
    distance to the EM fixed point the finish starts from, so 2 finish passes
    meet ``tol`` where 3 were needed (benchmarks/README.md). Set them with, e.g.,
    ``dask.config.set({"dask_em.stepwise.passes": 2})``.

    With ``hard`` (K-means, whose mini-batch steps are Lloyd steps on a part of the
    data), the defaults are ``alpha=0.51`` and ``average=0.25``: the last
    mini-batches weigh more, and fewer early ones are averaged in. On the benchmark
    stores the Lloyd finish then needed 3.5-3.7 passes on average instead of
    4.25-4.33, and as many on smaller data (benchmarks/README.md). A value set in
    ``dask.config`` applies to every model.
    """
    defaults = {**STEPWISE_DEFAULTS, **HARD_STEPWISE_DEFAULTS} if hard else STEPWISE_DEFAULTS
    return dask.config.get(f"dask_em.stepwise.{name}", defaults[name])


def stepwise_settings(hard=False):
    """Every stepwise-EM setting (:func:`stepwise_setting`), by name."""
    return {name: stepwise_setting(name, hard) for name in STEPWISE_DEFAULTS}


def accelerate_setting():
    """Whether batch EM passes are accelerated (``dask_em.accelerate``).

    Off by default: SQUAREM for soft mixtures (:mod:`dask_em.engine.accelerate`),
    Anderson acceleration for KMeans' Lloyd passes (:mod:`dask_em.engine.anderson`);
    see benchmarks/README.md for the measurements. Set it with
    ``dask.config.set({"dask_em.accelerate": True})``; variational models
    (BayesianGaussianMixture, which warns) are never accelerated. Whatever this
    setting, EM on the initialisation sample is accelerated (SQUAREM), and so is the
    Lloyd finish of a stepwise KMeans fit (Anderson), which changes no
    scikit-learn-equivalent path.
    """
    return bool(dask.config.get("dask_em.accelerate", False))


#: Default memory for the rows a pass of a stepwise KMeans finish keeps (float64).
LOCAL_BYTES = 64 * 2**20


def local_rows_default(n_components, n_features):
    """Rows a pass of a stepwise KMeans finish keeps by default: :data:`LOCAL_BYTES` of
    float64 rows, and at least as many as the initialisation sample (``max(1000 K,
    100_000)``, itself at most 256 MiB)."""
    from dask_em.sample_init import default_sample_size
    from dask_em.sampling import sample_size

    return max(LOCAL_BYTES // (8 * max(int(n_features), 1)), sample_size(default_sample_size(n_components), n_features))


def local_fraction(n_components, n_features, n_rows):
    """Fraction of the rows a pass of a stepwise KMeans finish keeps in memory, or None.

    Those nearest a boundary between clusters, with the exact sums of the others:
    the next Lloyd steps are then taken exactly without a pass, as long as the
    centres stay near the pass's (:mod:`dask_em.families.kmeans_region`). The more
    rows kept, the further they may move. By default :func:`local_rows_default`
    (64 MiB of rows: 524,288 rows of 16 features); ``dask.config.set({"dask_em.local_rows": n})``
    sets another number, and 0 turns it off (every Lloyd step is a pass).
    """
    rows = dask.config.get("dask_em.local_rows", None)
    if rows is None:
        rows = local_rows_default(n_components, n_features)
    if int(rows) <= 0 or n_rows <= 0:
        return None
    return min(1.0, int(rows) / int(n_rows))


def checkpoint_settings(hard=False):
    """The ``dask.config`` settings a checkpoint must match to be resumed: those that
    change a fit's result (the reduction's fan-in, the stepwise-EM settings, as they
    apply to a hard-assignment family or not)."""
    from dask_em.engine import split_every_default

    settings = {"split_every": split_every_default()}
    settings.update({f"stepwise.{name}": value for name, value in stepwise_settings(hard).items()})
    settings["accelerate"] = accelerate_setting()
    return settings


__all__ = [
    "ALGORITHMS", "HARD_STEPWISE_DEFAULTS", "LOCAL_BYTES", "SAMPLE_EM_MAX_ITER", "SAMPLE_EM_MAX_STEPS", "STEPWISE_DEFAULTS",
    "accelerate_setting", "checkpoint_settings", "in_memory_threads", "local_fraction", "map_on_threads", "local_rows_default", "sample_em_tol", "stepwise_setting", "stepwise_settings",
]
