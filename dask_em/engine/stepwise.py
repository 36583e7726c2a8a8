"""Stepwise (online) EM: an M-step after every mini-batch of row blocks.

Batch EM takes one pass over all the data per M-step. Stepwise EM (Cappé & Moulines
2009; Liang & Klein 2009) takes an M-step after every *mini-batch* of row blocks,
from running statistics that blend the old with the new::

    s <- (1 - eta_t) s + eta_t (N / N_b) s_b,     eta_t = (t + t0) ** -alpha

so that a few passes over the data get close to the maximum-likelihood fit, where
batch EM may need dozens. Each step is one compute over the blocks of its
mini-batch, with the engine's E-step kernel (:func:`~dask_em.engine.estep.estep_block`)
and tree reduction, for every start at once (on the threaded scheduler, over blocks
read from their source, straight from the data's graph materialised once: see
:class:`~dask_em.engine.passes.BlockPasses`).

Scale. ``s_b``, the statistics of a mini-batch of ``N_b`` rows, is multiplied by
``N / N_b`` (``N`` rows in all; both counted from the chunk sizes, so without a
pass), so that every mini-batch, and so the running blend, estimates the statistics
of the *whole* data set. Ratios (means, covariances, mixing weights) would not care
about a common scale, but the terms an M-step adds to the sums do: pseudo-counts
(``alpha`` of the discrete families), the tiny ``nk`` offset. At full-data scale
they weigh exactly as in batch EM, and mini-batches of unequal sizes blend as
estimates of the same quantity. With sample weights, ``(N / N_b) sum_b w`` is an
unbiased estimate of the total weight. Rows left out (NaN, zero weight) are left
out of the estimates in the same proportion as from the data.

Re-centring. Shifted statistics (Gaussian, K-means) are sums about the parameters'
reference point (the means when they were taken). The mini-batch's statistics are
about the current means; the running sum is about the previous ones. Before the
blend the running sum is moved exactly to the current means with the family's
``recentre`` (``None`` for unshifted statistics), so the M-step's correction
``mu = c + s1 / n`` stays exact.

The first step sets the running statistics to those of its mini-batch (``eta = 1``:
there is nothing to blend yet); step ``t = 1, 2, ...`` (counted over all passes)
blends with ``eta_t = (t + t0) ** -alpha``. ``alpha`` in (0.5, 1] makes the sum of
the ``eta_t`` diverge and that of their squares converge, the condition under which
stepwise EM converges to a stationary point.

Choosing mini-batches. Near the optimum a step moves the statistics ``eta_t`` of
the way to a batch EM step, so a pass is worth about the sum of its ``eta_t`` in
batch iterations: the more mini-batches per pass, the more a pass achieves (with
``alpha=0.6, t0=2``: about 6 iterations' worth in the first pass of 30 steps, 20
in one of 300), down to the fixed cost of a compute per step (milliseconds on the
threaded scheduler, more on a cluster) and to the noise of small mini-batches,
which leaves the running estimate off the optimum (by 5e-4 of mean log-likelihood
after 5 passes of 4,000-row mini-batches in the run below). Hence the small default (one block per thread) and the exact
finish. On 600,000 x 16 float32 rows, K=8 full covariances, 300 blocks: 3 passes
came within 1e-3 of batch EM's converged mean log-likelihood, against 12 batch
iterations from the same start; with 60 blocks (30 steps per pass) stepwise was no
faster than batch EM. Passes, not seconds: on data in memory on 2 threads a pass of
150 steps took about 4x a batch pass, for the computes' fixed cost; the saving is
in reads of data that must be streamed.

Exact finish. Stepwise EM ends near, not at, an EM fixed point, and its
log-likelihoods are those of single mini-batches under parameters that changed
between them. :func:`finish_with_em` hands its states to the batch loop
(:func:`~dask_em.engine.loop.run_em`) as starting points, which then runs full
passes until the change of the mean log-likelihood is below ``tol``; its
``lower_bound`` is exact. The recipe, by hand::

    results = run_stepwise(X, family, inits, options=options, passes=3, seed=0)
    results = run_em(X, family, [r.state for r in results], tol=1e-3, max_iter=100,
                     options=options)

Reproducibility. The mini-batches of a pass are consecutive groups of a seeded
random permutation of the row blocks. Every block is its own task, and a
mini-batch's results are summed in a fixed tree over its blocks in increasing block
order, so for the same partition (``batch_chunks``) and ``seed`` the results are the
same bit for bit on the threaded scheduler and on any distributed cluster, whatever
its number of workers.
"""

import logging
import math
import time

import dask
import numpy as np
from dask.system import CPU_COUNT

from dask_em.engine.estep import estep_block, m_step
from dask_em.engine.loop import EMResult, run_em
from dask_em.engine.passes import BlockPasses, active_client

logger = logging.getLogger(__name__)

#: Keys of the E-step's output that count rows: reported per mini-batch, never blended.
COUNT_KEYS = ("n_rows", "n_nonfinite", "n_bad_weight")


def run_stepwise(
    X,
    family,
    inits,
    *,
    options=None,
    sample_weight=None,
    batch_chunks=None,
    passes=3,
    alpha=0.6,
    t0=2,
    seed=None,
    split_every=None,
    check=None,
    callback=None,
    label="",
    log_level=logging.INFO,
    init_stats=None,
    average=0.0,
):
    """Stepwise EM from each starting state: an M-step after every mini-batch.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked data (one chunk along the features), with known chunk sizes.
    family : Family
    inits : list of MixtureState
        Starting points; all advance in lock-step and share every mini-batch's
        compute.
    options : dict, optional
        Keyword arguments of ``family.m_step`` (e.g. ``reg_covar``).
    sample_weight : dask.array.Array of shape (N,), optional
    batch_chunks : int, optional
        Fewest row blocks (chunks) in a mini-batch. A pass splits its permuted
        blocks into ``n_blocks // batch_chunks`` mini-batches of as equal sizes as
        possible, so each holds ``batch_chunks`` to ``2 * batch_chunks - 1`` blocks.
        Default: the number of threads of the active scheduler (all workers'
        threads of a distributed client, else dask's ``num_workers`` or CPU count),
        so every thread has a block in every step.
    passes : int, optional
        Passes over the data (each visits every block once).
    alpha : float, optional
        Decay of the step size ``eta_t = (t + t0) ** -alpha``, in (0.5, 1]; smaller
        forgets old mini-batches faster.
    t0 : float, optional
        Offset of the step size, >= 0; larger damps the first steps.
    seed : int or numpy.random.Generator, optional
        Seed of the order of the blocks; the results are reproducible with it.
    split_every : int, optional
        Fan-in of the tree reduction within a mini-batch.
    check : callable, optional
        ``check(stats)`` with the (unscaled) statistics of every mini-batch of the
        first start, before its M-step; it raises to stop the fit.
    callback : callable, optional
        ``callback(step, results)`` after every step (``step`` counts from 1 over
        all passes).
    label : str, optional
        Prefix of the log lines.
    log_level : int, optional
        Level of the per-step log lines.
    init_stats : list of dict, optional
        Running statistics to start from, one per starting state, at full-data
        scale and taken about that state's parameters (e.g. the statistics of an
        initialisation sample, scaled by N / n_sample). The first step then blends
        with ``eta_1 = (1 + t0) ** -alpha`` instead of replacing them.
    average : float, optional
        Fraction of the last pass's steps whose running statistics are averaged
        (Polyak-Ruppert averaging, re-centred exactly to one reference): the final
        parameters are the M-step of that average, whose noise is that of all
        those steps' rows rather than of the last few mini-batches'. 0 (the
        default): the parameters of the last step.

    Returns
    -------
    list of EMResult
        One per starting state, in order. ``n_iter`` is the number of steps taken;
        ``lower_bound`` the mean log-likelihood of the last mini-batch (before its
        M-step), an estimate only; ``converged`` is ``False`` (see
        :func:`finish_with_em`); ``last_stats`` the running statistics, at full-data
        scale, about the reference of the parameters before the last M-step.
        ``history`` has one entry per step: ``kind`` (``"stepwise"``),
        ``iteration`` (the step), ``pass``, ``batch``, ``n_blocks``, ``n_rows``,
        ``eta``, ``mean_loglik`` (of the mini-batch), ``change`` (from the
        previous mini-batch's, noisy: other rows) and ``seconds``.

    Raises
    ------
    ValueError
        For an invalid ``alpha``, ``t0``, ``passes`` or ``batch_chunks``, or an
        ``X`` that is not row-chunked or has unknown chunk sizes (the message says
        how to fix it).
    """
    _validate(X, inits, passes, alpha, t0, batch_chunks)
    if not (isinstance(average, (int, float, np.number)) and 0 <= average < 1):
        raise ValueError(f"The 'average' parameter must be a float in the range [0, 1). Got {average!r} instead.")
    options = options or {}
    rng = np.random.default_rng(seed)
    n_blocks = X.numblocks[0]
    sizes = np.asarray(X.chunks[0], dtype=np.int64)
    n_total = int(sizes.sum())
    if batch_chunks is None:
        batch_chunks = max(1, scheduler_threads(X))
    n_batches = max(1, n_blocks // batch_chunks)
    source = BlockPasses(X, sample_weight)  # the mini-batches' passes
    results = [EMResult(state=s) for s in inits]
    running = [None] * len(inits)  # blended statistics, one per start
    reference = [None] * len(inits)  # the parameters ``running`` is taken about
    step = 0
    offset = 0  # steps the running statistics already stand for
    if init_stats is not None:
        running = list(init_stats)
        reference = [s.params for s in inits]
        offset = 1
    name = f"stepwise-{family.name}"
    averaged = [None] * len(inits)  # (mean of the running statistics, the state they are about, count)
    first_averaged = n_batches - int(round(average * n_batches))  # first batch of the last pass averaged

    def prefix(i):
        return label + (f"init {i}: " if len(results) > 1 else "")

    for pass_ in range(1, passes + 1):
        batches = np.array_split(rng.permutation(n_blocks), n_batches)
        for b, batch in enumerate(batches):
            blocks = np.sort(batch).tolist()
            n_rows = int(sizes[blocks].sum())
            start = time.perf_counter()
            payload = (family, [res.state for res in results])
            # one task per block: the same sums on any scheduler
            stats_list = source.run(blocks, estep_block, payload, name=name, split_every=split_every, row_wise=True)
            if check is not None:
                check(stats_list[0])
            seconds = time.perf_counter() - start
            t = step + offset
            eta = 1.0 if t == 0 else float((t + t0) ** -alpha)
            scale = n_total / n_rows if n_rows else 0.0
            step += 1
            for i, (res, stats) in enumerate(zip(results, stats_list)):
                mean_ll = stats["loglik"] / stats["weight"] if stats["weight"] > 0 else math.nan
                previous = res.history[-1]["mean_loglik"] if res.history else math.nan
                entry = {
                    "kind": "stepwise",
                    "iteration": step,
                    "pass": pass_,
                    "batch": b,
                    "n_blocks": len(blocks),
                    "n_rows": n_rows,
                    "eta": eta,
                    "mean_loglik": mean_ll,
                    "change": mean_ll - previous,
                    "seconds": seconds,
                }
                if stats["weight"] > 0:
                    batch_stats = scale_stats(stats, scale)
                    if running[i] is not None:
                        moved = recentred(family, running[i], reference[i], res.state.params)
                        batch_stats = blend_stats(moved, batch_stats, eta)
                    running[i] = batch_stats
                    reference[i] = res.state.params
                    if pass_ == passes and b >= first_averaged:
                        averaged[i] = _average_into(family, averaged[i], batch_stats, res.state)
                    res.state = m_step(family, running[i], res.state, options)
                    res.lower_bound = mean_ll
                    res.last_stats = running[i]
                else:  # every row of the mini-batch left out: nothing to learn from
                    logger.warning("%sstep %d: no valid rows in its %d blocks; skipped", prefix(i), step, len(blocks))
                res.n_iter = step
                res.history.append(entry)
                logger.log(
                    log_level,
                    "%spass %d, step %d (%d blocks, eta %.3g): mean log-likelihood %.8g, %.3f s",
                    prefix(i),
                    pass_,
                    step,
                    len(blocks),
                    eta,
                    mean_ll,
                    seconds,
                )
            if callback is not None:
                callback(step, results)
        for i, res in enumerate(results):  # one line per pass at INFO; the steps are at log_level
            recent = [h["mean_loglik"] for h in res.history if h.get("pass") == pass_]
            logger.info(
                "%sstepwise pass %d: %d steps, mean log-likelihood of its mini-batches %.8g",
                prefix(i), pass_, len(recent), float(np.nanmean(recent)) if recent else math.nan,
            )
    for i, res in enumerate(results):
        if averaged[i] is not None and averaged[i][2] > 1:
            mean, about, count = averaged[i]
            res.state = m_step(family, mean, about, options)
            res.last_stats = mean
            logger.info("%sstepwise: the parameters of the mean of the last %d steps' statistics", prefix(i), count)
    return results


def _average_into(family, averaged, stats, state):
    """The running mean of statistics ``(mean, state, count)`` with ``stats`` (taken
    about ``state.params``) added: the mean is re-centred to ``state`` first."""
    if averaged is None:
        return stats, state, 1
    mean, about, count = averaged
    moved = recentred(family, mean, about.params, state.params)
    return blend_stats(moved, stats, 1.0 / (count + 1)), state, count + 1


def finish_with_em(X, family, results, *, tol, max_iter, **kwargs):
    """Batch EM from the states of :func:`run_stepwise` until ``tol``: an exact finish.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
    family : Family
    results : list of EMResult
        From :func:`run_stepwise`.
    tol, max_iter :
        As for :func:`~dask_em.engine.loop.run_em`.
    **kwargs
        Passed to :func:`~dask_em.engine.loop.run_em` (``options``,
        ``sample_weight``, ``split_every``, ``check``, ``callback``, ...).

    Returns
    -------
    list of EMResult
        The results of batch EM (``n_iter``, ``converged``, an exact
        ``lower_bound``), with the stepwise history in front of the batch
        iterations' (those marked ``kind="batch"``).
    """
    finished = run_em(X, family, [res.state for res in results], tol=tol, max_iter=max_iter, **kwargs)
    for res, fin in zip(results, finished):
        for entry in fin.history:
            entry.setdefault("kind", "batch")
        fin.history = list(res.history) + fin.history
    return finished


# --------------------------------------------------------------------------- statistics
def scale_stats(stats, scale):
    """Statistics multiplied by ``scale``: arrays and floats; row counts and other
    objects (K-means' farthest rows) unchanged."""
    return {key: _scaled(key, value, scale) for key, value in stats.items()}


def _scaled(key, value, scale):
    if key in COUNT_KEYS or not _blendable(value):
        return value
    return np.asarray(value, dtype=np.float64) * scale if isinstance(value, np.ndarray) else float(value) * scale


def _blendable(value):
    return isinstance(value, (np.ndarray, float, np.floating))


def blend_stats(running, batch, eta):
    """``(1 - eta) running + eta batch``, key-wise.

    Arrays and floats are blended; row counts and other objects (K-means'
    farthest rows, which cannot be weighted) are taken from ``batch``.
    """
    out = {}
    for key, value in batch.items():
        if key in COUNT_KEYS or not _blendable(value):
            out[key] = value
        else:
            out[key] = (1.0 - eta) * running[key] + eta * value
    return out


def recentred(family, stats, old_params, new_params):
    """``stats`` about ``old_params`` moved to ``new_params`` (see ``Family.recentre``)."""
    if family.recentre is None:
        return stats
    return family.recentre(stats, old_params, new_params)


# --------------------------------------------------------------------------- scheduler
def scheduler_threads(X=None):
    """Threads of the scheduler that would compute ``X``.

    All workers' threads of a ``distributed`` client, the ``num_workers`` of dask's
    local schedulers, else dask's CPU count.
    """
    client = active_client(X)
    if client is not None:
        return int(sum(client.nthreads().values()))
    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def _validate(X, inits, passes, alpha, t0, batch_chunks):
    if getattr(X, "ndim", None) != 2 or not hasattr(X, "numblocks"):
        raise ValueError(f"X must be a 2-D dask array; got {type(X).__name__} of ndim {getattr(X, 'ndim', None)}.")
    if X.numblocks[1] != 1:
        raise ValueError(f"X has {X.numblocks[1]} chunks along the feature axis; call `X.rechunk({{1: -1}})`.")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError("X has unknown chunk sizes along the rows; call `X.compute_chunk_sizes()` first.")
    if not inits:
        raise ValueError("inits must hold at least one MixtureState.")
    if not (isinstance(passes, (int, np.integer)) and passes >= 1):
        raise ValueError(f"The 'passes' parameter must be an int in the range [1, inf). Got {passes!r} instead.")
    if not (isinstance(alpha, (int, float, np.number)) and 0.5 < alpha <= 1):
        raise ValueError(
            f"The 'alpha' parameter must be a float in the range (0.5, 1]. Got {alpha!r} instead; "
            f"0.6 forgets old mini-batches fast, 1 averages them all."
        )
    if not (isinstance(t0, (int, float, np.number)) and t0 >= 0):
        raise ValueError(f"The 't0' parameter must be a float in the range [0, inf). Got {t0!r} instead.")
    if batch_chunks is not None and not (isinstance(batch_chunks, (int, np.integer)) and batch_chunks >= 1):
        raise ValueError(
            f"The 'batch_chunks' parameter must be an int in the range [1, inf) or None. Got {batch_chunks!r} instead."
        )
