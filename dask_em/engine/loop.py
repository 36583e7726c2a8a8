"""The EM loop: one pass and one ``dask.compute`` per iteration, for one or many mixtures.

Several mixtures (``n_init`` restarts) advance in lock-step and share each pass over
the data; a mixture that has converged drops out of later passes.
"""

import logging
import math
import time
from dataclasses import dataclass, field

from dask_em.engine.accelerate import Squarem
from dask_em.engine.anderson import Anderson
from dask_em.engine.estep import MixtureState, estep_block, m_step
from dask_em.engine.passes import run_pass

logger = logging.getLogger(__name__)

#: The row counts of a pass, which an iteration evaluated in memory keeps from it.
_COUNTS = ("weight", "n_rows", "n_nonfinite", "n_bad_weight")


@dataclass
class EMResult:
    """Outcome of EM for one starting point.

    Attributes
    ----------
    state : MixtureState
        Parameters after the last M-step.
    converged : bool
        Whether the change of the mean log-likelihood fell below ``tol``.
    n_iter : int
        Number of EM iterations (passes) run for this mixture.
    lower_bound : float
        Mean log-likelihood per (weighted) row at the start of the last iteration,
        as scikit-learn's ``lower_bound_``; ``-inf`` if no iteration ran.
    history : list of dict
        Per iteration: ``kind`` (``"batch"``; stepwise steps before it say
        ``"stepwise"``), ``iteration``, ``mean_loglik``, ``change``, ``seconds``.
    last_stats : dict or None
        Summed statistics of the last pass (row counts among them).
    accelerator : Anderson or None
        The Anderson acceleration of an accelerated hard-assignment run, kept so a
        checkpoint resumes it where it was.
    """

    state: MixtureState
    converged: bool = False
    n_iter: int = 0
    lower_bound: float = -math.inf
    history: list = field(default_factory=list)
    accelerator: object = None
    last_stats: dict = None


class LikelihoodChange:
    """EM's stopping rule: the mean log-likelihood per row changed by less than ``tol``.

    A stopping rule is called after every M-step as ``rule(result, stats, old_state,
    change)``, where ``stats`` are the summed statistics of the pass (taken with
    ``old_state``) and ``change`` the change of the mean log-likelihood; it returns
    whether ``result`` has converged. ``exact_last_pass(result)`` says whether the
    last pass's statistics are those of the final parameters (then no pass is
    needed to score them).
    """

    def __init__(self, tol):
        self.tol = tol

    def __call__(self, result, stats, old_state, change):
        return abs(change) < self.tol

    def exact_last_pass(self, result):
        return False


def run_em(
    X,
    family,
    inits,
    *,
    tol=None,
    max_iter,
    stopping=None,
    options=None,
    sample_weight=None,
    split_every=None,
    check=None,
    callback=None,
    label="",
    log_level=logging.INFO,
    resume=None,
    accelerate=False,
    local=None,
):
    """Run EM from each starting state until convergence or ``max_iter``.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked data.
    family : Family
    inits : list of MixtureState
        Starting points; all advance together, one pass per iteration.
    tol : float, optional
        Convergence threshold on the change of the mean log-likelihood per row
        (``LikelihoodChange(tol)``), when ``stopping`` is not given.
    max_iter : int
        Maximum number of iterations (passes).
    stopping : callable or list of callable, optional
        Stopping rule (see :class:`LikelihoodChange`), or one per starting state.
    options : dict, optional
        Keyword arguments for ``family.m_step`` (e.g. ``reg_covar``).
    sample_weight : dask.array.Array of shape (N,), optional
    split_every : int, optional
        Fan-in of the tree reduction.
    check : callable, optional
        ``check(stats)`` is called with the summed statistics of every pass before
        the M-step; it raises to stop the fit (non-finite rows, too few rows).
    callback : callable, optional
        ``callback(iteration, results)`` after every iteration (progress, checkpoints).
    label : str, optional
        Prefix of the log lines (e.g. ``"k-means init: "``).
    log_level : int, optional
        Level of the per-iteration log lines (INFO by default).
    resume : list of EMResult, optional
        Results of an interrupted run (from a checkpoint) to continue instead of
        starting from ``inits``: iterations continue from their ``n_iter``, converged
        ones stay out of the passes, and the convergence test uses their saved
        ``lower_bound``, so the outcome equals that of an uninterrupted run
        (of plain EM, and of Anderson-accelerated Lloyd, whose state the results
        carry; a SQUAREM run resumes from its last plain EM step and starts a new
        cycle there).
    accelerate : bool, optional
        Hard-assignment families (k-means): Anderson acceleration
        (:class:`~dask_em.engine.anderson.Anderson`). Every pass evaluates the next
        point, a plain step or an extrapolation of the last ones; ``state`` is the
        M-step of the last point evaluated, ``lower_bound`` that point's mean
        log-likelihood, ``accelerator`` the acceleration's state (a checkpoint
        resumes it); history entries say which kind of point a pass evaluated
        (``"anderson"``: ``"plain"``, ``"extrapolated"`` or ``"rejected"``), and the
        stopping rule judges every evaluated point.
        Other families: SQUAREM (:class:`~dask_em.engine.accelerate.Squarem`; not
        for variational families, which run plain passes). A pass evaluates an
        extrapolated point or an EM step; ``state`` is then always a plain EM step
        (the fallback while an extrapolation is being evaluated), ``lower_bound``
        the mean log-likelihood of the last accepted point, and ``converged`` is
        tested on plain EM steps only; history entries say which kind of point a
        pass evaluated (``"squarem"``: ``"em"``, ``"extrapolated"`` or
        ``"rejected"``).
    local : float, optional
        Families with :attr:`~dask_em.families.Family.local` (k-means): every pass also
        keeps this fraction of the rows (shared by the mixtures of the pass), those
        nearest a boundary, with the exact sums of the others, and an iteration
        whose point is near enough the last pass's is evaluated from them in
        memory, exactly, without a pass (history entries say ``"in_memory": True``).
        Iterations count as before; passes are fewer. Not for a resumed run's
        bit-for-bit outcome: its first iteration is a pass where the interrupted
        run may have had none.

    Returns
    -------
    list of EMResult
        One per starting state, in the same order.
    """
    options = options or {}
    results = list(resume) if resume is not None else [EMResult(state=s) for s in inits]
    if stopping is None:
        stopping = LikelihoodChange(tol)
    rules = stopping if isinstance(stopping, (list, tuple)) else [stopping] * len(results)
    active = [i for i, res in enumerate(results) if not res.converged]
    done = max((results[i].n_iter for i in active), default=max_iter)

    def prefix(i):
        return label + (f"init {i}: " if len(results) > 1 else "")

    accs, anderson = {}, {}
    if accelerate and family.hard:
        for i in active:  # a resumed run continues its acceleration
            res = results[i]
            if not isinstance(res.accelerator, Anderson):
                res.accelerator = Anderson(res.state, lower_bound=res.lower_bound)
            anderson[i] = res.accelerator
    elif accelerate and not family.variational:
        accs = {i: Squarem(family, results[i].state, options, lower_bound=results[i].lower_bound) for i in active}

    def evaluated(i):  # the point the next pass evaluates
        return accs[i].state if i in accs else anderson[i].state if i in anderson else results[i].state

    local = local if local is not None and family.local is not None and not family.marginalize else None
    regions = {}  # i -> the region of its last pass, and that pass's row counts

    for iteration in range(done + 1, max_iter + 1):
        start = time.perf_counter()
        in_memory = {}
        for i in active:
            if i in regions:
                stats = family.local(regions[i][0], evaluated(i).params)
                if stats is not None:
                    in_memory[i] = {**regions[i][1], **stats}
        need = [i for i in active if i not in in_memory]
        if need:
            # the kept rows' budget is shared by the mixtures of the pass
            keep = () if local is None else (local / len(need),)
            payload = (family, [evaluated(i) for i in need]) + keep
            stats_list = run_pass(
                X,
                estep_block,
                payload,
                name=f"estep-{family.name}",
                extra=sample_weight,
                split_every=split_every,
                row_wise=True,
            )
            if check is not None:
                check(stats_list[0])
            for i, stats in zip(need, stats_list):
                if local is not None:
                    region = stats.pop("region")
                    regions[i] = (region, {k: v for k, v in stats.items() if k in _COUNTS})
                in_memory[i] = stats
        seconds = time.perf_counter() - start
        still_active = []
        for i in active:
            stats = in_memory[i]
            res = results[i]
            entry = {"kind": "batch", "iteration": iteration}
            if i not in need:
                entry["in_memory"] = True
            if i in accs:
                acc = accs[i]
                old_state = acc.state
                # as on the plain path, the rule sees this iteration's entry and the M-step
                # it would stop at (it may add to the entry, e.g. a lower bound)
                entry.update(mean_loglik=stats["loglik"] / stats["weight"], seconds=seconds)
                res.history.append(entry)
                res.n_iter = iteration
                res.last_stats = stats

                def stop(change, following, res=res, stats=stats, old_state=old_state, rule=rules[i], entry=entry):
                    entry["change"] = change
                    res.state = following
                    return rule(res, stats, old_state, change)

                mean_ll, change, entry["squarem"] = acc.update(stats, stop)
                converged = acc.converged
                res.state, res.lower_bound = acc.safe_state, acc.lower_bound
                entry.setdefault("change", change)
            else:
                mean_ll = stats["loglik"] / stats["weight"]
                change = mean_ll - res.lower_bound
                old_state = evaluated(i)
                res.state = m_step(family, stats, old_state, options)
                res.lower_bound = mean_ll
                res.n_iter = iteration
                res.last_stats = stats
                res.history.append({**entry, "mean_loglik": mean_ll, "change": change, "seconds": seconds})
                if i in anderson:  # the next point to evaluate
                    res.history[-1]["anderson"] = anderson[i].update(mean_ll, res.state)
                # the rule sees this iteration's entry (it may add to it, e.g. a lower bound)
                converged = rules[i](res, stats, old_state, change)
            logger.log(
                log_level,
                "%siteration %d: mean log-likelihood %.8g, change %.3g, %.3f s%s",
                prefix(i),
                iteration,
                mean_ll,
                change,
                seconds,
                "" if i in need else " (in memory)",
            )
            if converged:
                res.converged = True
                regions.pop(i, None)
                logger.log(log_level, "%sconverged after %d iterations", prefix(i), iteration)
            else:
                still_active.append(i)
        if callback is not None:
            callback(iteration, results)
        active = still_active
        if not active:
            break
    return results
