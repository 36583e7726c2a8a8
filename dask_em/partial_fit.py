"""``partial_fit``: one stepwise-EM update per batch of rows, for streams that never end.

The estimators' ``partial_fit`` calls :func:`partial_fit_step` with the
:class:`StreamState` its previous call returned; the first call initialises from
the batch the way :func:`~dask_em.fitting.fit_models` initialises from its sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dask_em._progress import verbosity
from dask_em.data import Prepared
from dask_em.engine import EMResult, MixtureState, estep_block, in_process, m_step, run_pass
from dask_em.engine.blas import blas_limited
from dask_em.engine.marginal import marginalizing
from dask_em.engine.stepwise import blend_stats, recentred, scale_stats
from dask_em.fitting import FitResult, ModelSpec, draw_sample, pass_check
from dask_em.settings import stepwise_setting

logger = logging.getLogger("dask_em")


@dataclass
class StreamState:
    """What ``partial_fit`` carries from one call to the next.

    Attributes
    ----------
    state : MixtureState
        The current parameters.
    running : dict
        The running statistics per unit of (weighted) row, about ``reference``.
    reference : dict
        The parameters ``running`` was taken about.
    steps : int
        Updates taken.
    total_weight : float
        Rows (sample weights) seen: the scale of the M-step's statistics.
    """

    state: MixtureState
    running: dict
    reference: dict
    steps: int
    total_weight: float


def partial_fit_step(prepared: Prepared, spec: ModelSpec, stream: StreamState | None):
    """One stepwise-EM update from a batch of rows: the estimators' ``partial_fit``.

    The first call initialises from the batch (a sample of it, in memory, with EM on
    it ranking the starts; one pass), then every call takes the batch's statistics
    under the current parameters (one pass), blends them into the running
    statistics per unit of weight, ``s <- (1 - eta_t) s + eta_t s_batch`` with
    ``eta_t = (t + t0) ** -alpha`` (the first update replaces), re-centred exactly to
    the current parameters, and takes the M-step on them scaled to the rows seen so
    far (so pseudo-counts weigh as in a fit of all of them). For a variational
    model (``spec.complete_starts``) the first call also completes the start on the
    batch's sample (the priors taken from the data are the first batch's), and the
    update is stochastic variational inference with ``N`` the rows seen so far: the
    posterior's parameters are the priors plus the running statistics at that
    scale, so the priors weigh as in a batch fit of every row seen.

    Returns
    -------
    stream : StreamState
    result : FitResult
        ``best`` holds the new parameters, ``n_iter`` the number of updates and
        ``lower_bound`` the batch's mean log-likelihood under the parameters before
        the update; ``final_stats`` the batch's statistics.
    """
    if prepared.nan_policy == "marginalize":
        spec.family = marginalizing(spec.family)
    family = spec.family
    check = pass_check(prepared.nan_policy, [spec])
    with verbosity(spec.verbose), in_process(prepared.source.is_numpy):
        prepared.load()
        if stream is None:
            sample = draw_sample(prepared, [spec], check) if spec.needs_sample else None
            rows = None if sample is None else sample.rows
            weights = None if sample is None else sample.weights
            with blas_limited():
                state = spec.initialize(rows, weights, spec.seeds, True)[0]
            if spec.complete_starts is not None:  # a variational model: posterior and priors from the batch
                state = spec.complete_starts(prepared, [EMResult(state=state)], check, sample)[0].state
            stream = StreamState(state, None, None, 0, 0.0)
        (stats,) = run_pass(
            prepared.X, estep_block, (family, [stream.state]), name=f"partial-fit-{family.name}",
            extra=prepared.weights, row_wise=True,
        )
        check(stats)
        weight = float(stats["weight"])
        batch = scale_stats(stats, 1.0 / weight)
        t = stream.steps
        t0, alpha = stepwise_setting("t0", family.hard), stepwise_setting("alpha", family.hard)
        eta = 1.0 if t == 0 else float((t + t0) ** -alpha)
        if stream.running is not None:
            moved = recentred(family, stream.running, stream.reference, stream.state.params)
            batch = blend_stats(moved, batch, eta)
        total = stream.total_weight + weight
        new = m_step(family, scale_stats(batch, total), stream.state, spec.options)
        mean_ll = float(stats["loglik"]) / weight
        logger.info("partial_fit update %d (eta %.3g): batch mean log-likelihood %.8g", t + 1, eta, mean_ll)
    history = [{"kind": "partial_fit", "iteration": t + 1, "eta": eta, "mean_loglik": mean_ll}]
    stream = StreamState(new, batch, stream.state.params, t + 1, total)
    best = EMResult(state=new, converged=False, n_iter=t + 1, lower_bound=mean_ll, history=history)
    return stream, FitResult(best, [best], stats)


__all__ = ["StreamState", "partial_fit_step"]
