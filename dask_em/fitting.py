"""The fit sequence, written once for every model.

Every estimator, :func:`~dask_em.select_n_components` and the command line fit
through :func:`fit_models`::

    data.prepare(X, ...) -> Prepared         the data edge: NaN policy, weights, persist
    estimator._model_spec(prepared) -> ModelSpec   what to fit: family, starts, stopping
    fit_models(prepared, [ModelSpec]) -> [FitResult]
        load the data (persist); one pass draws a sample of rows on which every
        start of every model is initialised in memory; then, per algorithm:
          "em":       batch EM passes for every start (scikit-learn's algorithm)
          "stepwise": EM on the sample ranks the starts; the best runs stepwise EM
                      over mini-batches of chunks, then batch EM passes to ``tol``
        (one pass per iteration for every start and every model of one family),
        score the final parameters when asked, pick the best start, warn
    estimator._set_fitted(result)            fitted attributes

Models of the same family and M-step options share every pass: the ``n_init``
starts of one estimator, and the candidates of a selection (whose starts also
share the one sampling pass). ``algorithm="auto"`` is batch EM for data in
memory (NumPy input, or persisted) and stepwise EM for data streamed from their
source, where passes are what a fit costs.

:func:`dask_em.partial_fit.partial_fit_step` is one stepwise update from one
batch of rows: the estimators' ``partial_fit``. The settings a fit reads from
``dask.config`` are in :mod:`dask_em.settings`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


from dask_em._progress import notebook_progress, verbosity
from dask_em.checkpoint import Checkpointer, chain_callbacks
from dask_em.compiled import kernel_setting
from dask_em.data import Prepared, nonfinite_rows_error
from dask_em.engine import EMResult, estep_block, in_process, run_em, run_pass
from dask_em.engine.blas import blas_limited
from dask_em.engine.loop import LikelihoodChange
from dask_em.engine.marginal import marginalizing
from dask_em.engine.passes import watch_passes
from dask_em.engine.stepwise import run_stepwise, scale_stats
from dask_em.exceptions import ConvergenceWarning
from dask_em.families import Family
from dask_em.io.locations import check_output
from dask_em.io.locations import exists as output_exists
from dask_em.sample_init import default_sample_size
from dask_em.sampling import estimation_weights, sample_rows
from dask_em.settings import (
    accelerate_setting,
    checkpoint_settings,
    local_fraction,
    stepwise_settings,
)
from dask_em.weights import bad_weight_error

logger = logging.getLogger("dask_em")


@dataclass
class ModelSpec:
    """What a fit needs to know of one model: an estimator describes itself with it.

    Attributes
    ----------
    family : Family
    n_components : int
    initialize : callable
        ``initialize(rows, weights, seeds, em_on_sample) -> list of MixtureState``:
        one starting point per seed, computed in memory on a sample of rows (n, D)
        with their estimation weights (or None), best first when
        ``em_on_sample`` (EM on the sample ranks them). Called with ``rows=None``
        when ``needs_sample`` is False (every parameter given).
    seeds : list of int
        One per start (``n_init``).
    tol : float
    max_iter : int
    options : dict
        Keyword arguments of the family's M-step (``reg_covar``, ``alpha``).
    needs_sample : bool
        Whether initialisation needs the sample (False when every starting
        parameter is given).
    n_sample : int, optional
        Rows of the initialisation sample (default ``max(1000 K, 100_000)``).
    algorithm : {"auto", "em", "stepwise"}
        See the module docstring.
    stopping : callable, optional
        The stopping rule (see :class:`~dask_em.engine.loop.LikelihoodChange`, the
        default); K-means uses a centre-shift rule.
    warm : EMResult, optional
        Warm start: EM continues from this state, and its ``lower_bound`` is the
        reference of the first convergence test (as scikit-learn's ``warm_start``).
    pick : {"lower_bound", "final"}
        How the best start is chosen: highest ``lower_bound`` (scikit-learn's
        mixtures) or highest log-likelihood of the final parameters (K-means:
        lowest inertia); "final" scores the final parameters (one more pass, unless
        the stopping rule says the last pass already did).
    score_final : bool
        Compute the statistics of the best start's final parameters (BIC tables).
    warn : bool
        Warn (:class:`~dask_em.exceptions.ConvergenceWarning`) when the best start
        did not converge.
    too_few_rows : callable
        ``too_few_rows(n_rows) -> str``: the message when fewer rows than
        components enter the fit.
    init_name : str
        For the log (``init_params``).
    verbose : int
        The estimator's ``verbose``: log lines on stderr (see :func:`dask_em._progress.verbosity`), or in
        a notebook a progress line updated in place.
    identity : object
        The estimator, whose class and parameters a checkpoint must match.
    complete_starts : callable, optional
        ``complete_starts(prepared, results, check, sample) -> results``: completes
        the starting results before EM, cold or warm (a variational model: its
        initial responsibilities and the priors taken from the data); ``check`` is
        the pass check. ``sample`` is the initialisation :class:`Sample` of a
        stepwise fit or of ``partial_fit``'s first batch, on which cold starts are
        completed in memory (statistics scaled to the rows it stands for), else
        None: one pass over the data. Not called when a checkpoint is resumed.
    """

    family: Family
    n_components: int
    initialize: Callable
    seeds: list
    tol: float
    max_iter: int
    options: dict = field(default_factory=dict)
    needs_sample: bool = True
    n_sample: int | None = None
    algorithm: str = "em"
    stopping: Callable | None = None
    warm: EMResult | None = None
    pick: str = "lower_bound"
    score_final: bool = False
    warn: bool = True
    too_few_rows: Callable | None = None
    init_name: str = ""
    verbose: int = 0
    identity: object = None
    complete_starts: Callable | None = None

    def rule(self):
        """The stopping rule of this fit: ``stopping`` (fitted to the resolved
        ``algorithm`` where it has a ``for_algorithm`` method), else the change of
        the mean log-likelihood below ``tol``."""
        if self.stopping is None:
            return LikelihoodChange(self.tol)
        if hasattr(self.stopping, "for_algorithm"):
            return self.stopping.for_algorithm(self.algorithm)
        return self.stopping

    def few_rows_message(self, n_rows):
        if self.too_few_rows is not None:
            return self.too_few_rows(n_rows)
        return (
            f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
            f"n_samples = {n_rows}."
        )


@dataclass
class FitResult:
    """Outcome of one model's fit.

    Attributes
    ----------
    best : EMResult
        The chosen start.
    results : list of EMResult
        Every start, in seed order.
    final_stats : dict or None
        Summed statistics of ``best``'s final parameters (``loglik``, ``weight``,
        ``nk``, ...) when they were computed (``pick="final"`` or ``score_final``).
    """

    best: EMResult
    results: list
    final_stats: dict | None = None


def pass_check(nan_policy: str, specs: list[ModelSpec], logged: list | None = None):
    """The check run on the row counts of every pass of a fit.

    Rows with NaN or infinity are an error under ``"raise"``; under ``"omit"``
    they are left out and their number is logged once. Under ``"marginalize"``
    the EM passes leave out (and count) only rows with every feature missing or
    an infinite value; the sampling pass (its counts hold ``n_sample``) draws
    from the rows without gaps, so they must number at least K. Bad sample
    weights and fewer rows than components are errors. ``logged`` is shared by the
    checks of one fit (its sampling pass and each group's passes), so that the rows
    left out are logged once per fit.
    """
    largest = max(specs, key=lambda s: s.n_components)
    logged = [] if logged is None else logged

    def check(stats):
        n_bad, n_rows = stats["n_nonfinite"], stats["n_rows"]
        if nan_policy == "marginalize" and "n_sample" in stats:
            if n_rows < largest.n_components:
                raise ValueError(
                    f"nan_policy='marginalize' initialises on the rows without NaN, and only "
                    f"{n_rows} of {n_rows + n_bad} rows have no NaN (fewer than "
                    f"n_components={largest.n_components}); give every starting parameter "
                    f"(weights_init, means_init, precisions_init), or use fewer components."
                )
            logger.info("initialisation sample drawn from the %d rows without NaN (of %d rows)",
                        n_rows, n_rows + n_bad)
            n_bad = 0
        elif n_bad and nan_policy == "marginalize":
            if not logged:
                logger.info(
                    "left out %d rows with every feature missing or an infinite value (of %d rows); "
                    "rows with some features missing are fitted on the others",
                    n_bad, n_rows + n_bad,
                )
                logged.append(n_bad)
        elif n_bad and nan_policy == "omit":
            if not logged:
                logger.info(
                    "left out %d rows with NaN or infinite values (of %d rows); they get no label",
                    n_bad,
                    n_rows + n_bad,
                )
                logged.append(n_bad)
        elif n_bad:
            raise nonfinite_rows_error(
                n_bad, n_rows + n_bad,
                "remove or impute them before fitting, e.g. X = X[da.isfinite(X).all(axis=1)].compute_chunk_sizes()",
            )
        if stats.get("n_bad_weight", 0):
            raise bad_weight_error(stats["n_bad_weight"])
        if n_rows < largest.n_components:
            raise ValueError(largest.few_rows_message(n_rows) + " (rows with a positive sample weight)")

    return check


def resolve_algorithm(algorithm, in_memory):
    """The algorithm a fit runs: ``"auto"`` is batch EM (``"em"``) for data in memory
    and ``"stepwise"`` for data streamed from their source."""
    if algorithm != "auto":
        return algorithm
    return "em" if in_memory else "stepwise"


def _groups(specs, in_memory):
    """Indices of the specs that can share passes: same family, M-step options and algorithm."""
    groups = {}
    for i, spec in enumerate(specs):
        algorithm = resolve_algorithm(spec.algorithm, in_memory)
        spec.algorithm = algorithm
        key = (spec.family.name, repr(sorted(spec.options.items())), spec.max_iter, algorithm)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@dataclass
class Sample:
    """The initialisation sample of a group of models: rows, their estimation weights
    (None without sample weights), and the number of valid rows it stands for."""

    rows: object
    weights: object
    n_valid: int

    def stats(self, family, states):
        """Statistics of ``states`` on the sample, at full-data scale (init of stepwise EM)."""
        with blas_limited():
            stats = estep_block(self.rows, self.weights, (family, states), 0)
        # estimation weights make weighted sums unbiased totals; unweighted rows scale by N / n
        scale = 1.0 if self.weights is not None else self.n_valid / max(self.rows.shape[0], 1)
        return [scale_stats(s, scale) for s in stats]


def draw_sample(prepared, specs, check):
    """One pass: a uniform (or weighted) sample of rows for the starts of ``specs``."""
    size = max(spec.n_sample or default_sample_size(spec.n_components) for spec in specs)
    rows, weights, counts = sample_rows(prepared.X, size, specs[0].seeds[0], prepared.weights)
    check(counts)
    logger.info("initialisation sample: %d of %d rows", counts["n_sample"], counts["n_rows"])
    return Sample(rows, estimation_weights(weights, counts["threshold"]), counts["n_rows"])


def distinct_rows(rows, enough):
    """Number of distinct rows of ``rows`` (n, D): exact when below ``enough``, else a
    number >= ``enough``.

    Rows are projected on a fixed random direction first: equal rows project alike,
    so as many distinct projections as ``enough`` prove as many distinct rows, in
    one GEMV and a 1-D sort; only fewer call for the exact (row-wise) count.
    """
    if rows.shape[0] == 0:
        return 0
    proj = rows @ np.random.default_rng(0).standard_normal(rows.shape[1])
    n = np.unique(proj[: 16 * enough]).size  # usually enough already: no sort of every row
    n = n if n >= enough else np.unique(proj).size
    return n if n >= enough else np.unique(rows, axis=0).shape[0]


def _warn_few_distinct(sample, specs):
    """Warn when a model has more components than the data have distinct rows, or the
    data are one repeated row, as seen in the initialisation sample (no extra pass)."""
    rows = sample.rows
    d = distinct_rows(rows, max(2, max(spec.n_components for spec in specs)))
    whole = rows.shape[0] >= sample.n_valid  # the sample holds every row that enters the fit
    seen = (
        "X" if whole else f"the initialisation sample ({rows.shape[0]} of the {sample.n_valid} rows of X)"
    )
    for spec in specs:
        K, hard = spec.n_components, spec.family.hard
        name = "n_clusters" if hard else "n_components"
        parts = []
        if d < K and hard and whole:  # scikit-learn's KMeans warning, in its words
            parts.append(
                f"Number of distinct clusters ({d}) found smaller than n_clusters ({K}). "
                f"Possibly due to duplicate points in X."
            )
        elif d < K and d > 1:
            parts.append(
                f"{seen[0].upper() + seen[1:]} holds only {d} distinct rows, fewer than {name} ({K}): "
                f"several {'clusters' if hard else 'components'} will coincide or be empty. Use {name} <= {d}, "
                f"or remove the duplicate rows."
            )
        if d == 1:
            parts.append(
                f"Every row of {seen} is the same ({np.array2string(rows[0], threshold=8)}): the data are "
                f"one repeated row, so every {'cluster' if hard else 'component'} describes that point "
                f"{'' if hard else '(covariances are reg_covar alone) '}and the fit says nothing else; "
                f"check the input."
            )
        if parts:
            warnings.warn(" ".join(parts), ConvergenceWarning, stacklevel=4)


def _starts(spec, sample):
    """Starting results of ``spec``: its warm start, or its starts on the sample."""
    if spec.warm is not None:
        return [EMResult(state=spec.warm.state, lower_bound=spec.warm.lower_bound)]
    stepwise = spec.algorithm == "stepwise"
    logger.info("initialising %d start(s) with %r", len(spec.seeds), spec.init_name)
    rows = None if sample is None else sample.rows
    weights = None if sample is None else sample.weights
    with blas_limited():  # small products, in memory (see blas_limited)
        states = spec.initialize(rows, weights, spec.seeds, stepwise)
    return [EMResult(state=s) for s in (states[:1] if stepwise else states)]


def _score(prepared, family, states):
    """Statistics of ``states`` over the data: one pass for all of them."""
    return run_pass(
        prepared.X, estep_block, (family, states), name=f"score-{family.name}",
        extra=prepared.weights, row_wise=True,
    )


def _stepwise_phase(prepared, specs, results, sample, check, callback):
    """Stepwise EM from the starts (one per spec), continuing from the sample's statistics."""
    spec = specs[0]
    settings = stepwise_settings(spec.family.hard)
    if any(s.warm is not None for s in specs) or settings["passes"] == 0:
        return results  # a warm start continues with batch EM
    init_stats = None if sample is None else sample.stats(spec.family, [r.state for r in results])
    stepped = run_stepwise(
        prepared.X,
        spec.family,
        [r.state for r in results],
        options=spec.options,
        sample_weight=prepared.weights,
        seed=spec.seeds[0],
        check=check,
        callback=callback,
        init_stats=init_stats,
        **settings,  # passes, alpha, t0, batch_chunks, average
        log_level=logging.DEBUG,  # a line per step with verbose=2; a line per pass at INFO
    )
    # the exact finish starts afresh: its first pass has no reference to test against
    return [EMResult(state=r.state, history=r.history) for r in stepped]


def _local(spec, prepared):
    """The fraction of rows a stepwise KMeans finish keeps per pass (``run_em``'s ``local``)."""
    if spec.algorithm != "stepwise" or not spec.family.hard:
        return None
    return local_fraction(spec.n_components, prepared.n_features, prepared.X.shape[0])


def _fit_group(prepared, specs, sample, checkpoint, callback, progress=None, logged=None):
    X, weights = prepared.X, prepared.weights
    callback = chain_callbacks(progress, callback)
    family = specs[0].family
    check = pass_check(prepared.nan_policy, specs, logged)
    saver = None
    if checkpoint is not None:
        saver = Checkpointer(checkpoint, specs[0], prepared, checkpoint_settings(family.hard))
    resume = saver.resume() if saver is not None else None
    if resume is not None:
        results, owner = resume, [0] * len(resume)
    else:
        if progress is not None:
            n_starts = sum(1 if spec.warm is not None else len(spec.seeds) for spec in specs)
            progress.phase(f"initialising {n_starts} start(s)")
        results, owner = [], []
        for j, spec in enumerate(specs):
            starts = _starts(spec, sample)
            if spec.complete_starts is not None:
                on_sample = sample if spec.algorithm == "stepwise" else None
                starts = spec.complete_starts(prepared, starts, check, on_sample)
            results += starts
            owner += [j] * len(starts)
        if specs[0].algorithm == "stepwise":
            results = _stepwise_phase(prepared, specs, results, sample, check, callback)
            if saver is not None:
                saver(0, results)
    rules = {j: spec.rule() for j, spec in enumerate(specs)}
    results = run_em(
        X,
        family,
        None,
        max_iter=specs[0].max_iter,
        stopping=[rules[j] for j in owner],
        options=specs[0].options,
        sample_weight=weights,
        check=check,
        callback=chain_callbacks(saver, callback),
        resume=results,
        # a stepwise k-means finish is Lloyd on overlapping clusters, slow to meet its
        # shift test: Anderson acceleration costs no pass of its own (engine/anderson.py),
        # and steps near the last pass's centres are taken in memory (families/kmeans_region.py;
        # not with a checkpoint, which must resume bit for bit)
        accelerate=accelerate_setting() or (specs[0].algorithm == "stepwise" and family.hard),
        local=_local(specs[0], prepared) if saver is None else None,
    )
    per_spec = [[r for r, j in zip(results, owner) if j == k] for k in range(len(specs))]
    # the final parameters are scored in one pass for every start that needs it
    need = []
    for k, spec in enumerate(specs):
        if spec.pick == "final":
            need += [r for r in per_spec[k] if not rules[k].exact_last_pass(r)]
    finals = {id(r): r.last_stats for k in range(len(specs)) for r in per_spec[k]}
    chosen = {}
    for k, spec in enumerate(specs):
        if spec.pick != "final":
            chosen[k] = max(per_spec[k], key=lambda r: r.lower_bound)  # first of equals
            if spec.score_final:
                need.append(chosen[k])
    if need:
        if progress is not None:
            progress.phase("scoring the final parameters (one pass)")
        for r, stats in zip(need, _score(prepared, family, [r.state for r in need])):
            finals[id(r)] = stats
    out = []
    for k, spec in enumerate(specs):
        if spec.pick == "final":
            chosen[k] = max(per_spec[k], key=lambda r: finals[id(r)]["loglik"])
        best = chosen[k]
        final = finals[id(best)] if (spec.pick == "final" or spec.score_final) else None
        out.append(FitResult(best, per_spec[k], final))
    return out


def fit_models(prepared: Prepared, specs: list[ModelSpec], *, checkpoint=None, callback=None) -> list[FitResult]:
    """Fit every model described by ``specs`` to the same data; models that can share passes do.

    Parameters
    ----------
    prepared : Prepared
        From :func:`dask_em.data.prepare`.
    specs : list of ModelSpec
        One per model (an estimator's fit has one; a selection one per candidate).
    checkpoint : str or os.PathLike, optional
        File the EM state is saved to after every iteration, and resumed from when
        it exists and belongs to the same fit (one model only).
    callback : callable, optional
        ``callback(iteration, results)`` after every EM iteration.

    Returns
    -------
    list of FitResult
        In the order of ``specs``.
    """
    n = prepared.X.shape[0]
    for spec in specs:
        if n < spec.n_components:
            raise ValueError(spec.few_rows_message(n))
    if checkpoint is not None and len(specs) != 1:
        raise ValueError("checkpoint applies to the fit of one model, not to a selection of several.")
    if prepared.nan_policy == "marginalize":
        for spec in specs:
            spec.family = marginalizing(spec.family)
    if checkpoint is not None:  # before any pass: a bad path fails now, not after the first iteration
        check_output(checkpoint, "file", "checkpoint")
    kernel_setting()  # a bad dask_em.kernels fails here, not in the first E-step's tasks
    out = [None] * len(specs)
    verbose = max(spec.verbose for spec in specs)
    progress = notebook_progress(specs, prepared)
    # in a notebook the display takes the place of the INFO lines; verbose=2 adds the log
    log_verbose = verbose if progress is None or verbose >= 2 else 0
    with verbosity(log_verbose), watch_passes(None if progress is None else progress.passed), \
            in_process(prepared.source.is_numpy):  # small in-memory passes skip dask (engine/inline.py)
        if progress is not None:
            progress.phase("preparing the data")
        prepared.load()
        groups = _groups(specs, prepared.in_memory)
        resumable = checkpoint is not None and output_exists(checkpoint)
        cold = [spec for spec in specs if spec.warm is None and spec.needs_sample]
        logged = []  # the rows a fit leaves out are logged once, whatever its passes
        # one sampling pass initialises every start of every model
        sample = None
        if cold and not resumable:
            if progress is not None:
                progress.phase("drawing the initialisation sample (one pass)")
            sample = draw_sample(prepared, cold, pass_check(prepared.nan_policy, specs, logged))
            _warn_few_distinct(sample, cold)
        for group in groups:
            results = _fit_group(prepared, [specs[i] for i in group], sample, checkpoint, callback, progress, logged)
            for i, res in zip(group, results):
                out[i] = res
        if progress is not None:
            progress.finish(out)
    for spec, res in zip(specs, out):
        if spec.warn and not res.best.converged and spec.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
    return out


__all__ = ["FitResult", "ModelSpec", "Sample", "draw_sample", "fit_models", "pass_check", "resolve_algorithm"]
