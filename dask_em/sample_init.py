"""Starting points from one pass: a sample of rows, then every start in memory.

One pass draws a random sample (:func:`dask_em.sampling.sample_rows`: uniform or weighted, the same
whatever the chunking), and the whole initialisation of every seed runs on it in
memory with NumPy:

``"kmeans"``
    k-means++ on at most ``max(10_000, 100 K)`` rows of the sample, then weighted
    Lloyd iterations on the whole sample.
``"k-means++"``
    k-means++ alone.
``"random_from_data"``
    K distinct rows of the sample.
``"random"``
    Random responsibilities on the sample.
given ``centers``
    The hard assignment to them.

Weights and component parameters come from the hard (or random) assignment of the
sample, through the family's ``suff_stats`` and ``m_step``; EM iterations on the
sample (the engine's ``estep_block`` and ``m_step`` on NumPy arrays, accelerated
by SQUAREM, :mod:`dask_em.engine.accelerate`) then rank the starts by their
log-likelihood on the sample, so a caller can keep the best before the full data
are read again. One pass in all, whatever ``n_init``.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np

from dask_em.engine import MixtureState, add_stats, estep_block, m_step
from dask_em.engine.accelerate import run_squarem
from dask_em.initialization import INIT_METHODS, KMEANSPP_SAMPLE, kmeans_plusplus, lloyd, min_sq_dist
from dask_em.sampling import SAMPLE_MAX_BYTES, estimation_weights, sample_rows
from dask_em.settings import map_on_threads

logger = logging.getLogger(__name__)

#: Default sample of :func:`initialize_from_sample`: ``max(1000 K, 100_000)`` rows.
SAMPLE_ROWS_PER_COMPONENT = 1000
SAMPLE_MIN_ROWS = 100_000
#: EM iterations on the sample that rank the starts (:func:`initialize_from_sample`).
SAMPLE_EM_MAX_ITER = 10
#: Rows per piece of an E-step on the sample (:func:`estep_sample`).
SAMPLE_PIECE_ROWS = 8192
#: Seedings tried by the ``"kmeans"`` method when k-means++ seeds on a part of the
#: sample (see :func:`_centers_on_sample`). On overlapping clusters (N = 1e5 to 1e7,
#: D = 16, K = 8) the best of 4 reached the least-inertia partition 6 times in 6 at
#: N = 1e7 (1 start: 3 in 6; scikit-learn's k-means++ on all rows: 3 in 6), for about
#: 10 ms (benchmarks/README.md).
SEEDING_CANDIDATES = 4
#: Elements of the (rows, K) work arrays of the in-memory kernels, per slab of rows.
_SLAB_ELEMENTS = 2**21


@dataclass
class SampleStart:
    """A starting point computed on a sample (see :func:`initialize_from_sample`).

    Attributes
    ----------
    state : MixtureState
        The starting parameters (after ``n_iter`` EM iterations on the sample).
    seed : int
        The seed that drew it.
    sample_loglik : float
        Mean log-likelihood of ``state`` per (weighted) row of the sample; for
        K-means, minus the mean squared distance to the nearest centre.
    n_iter : int
        EM iterations (E-steps, SQUAREM's included) run on the sample.
    converged : bool
        Whether EM on the sample met ``tol`` within ``max_iter_sample``.
    """

    state: MixtureState
    seed: int
    sample_loglik: float
    n_iter: int = 0
    converged: bool = False


#: Largest spread (max - min) of a feature the initialisation accepts: its squares,
#: summed over up to 2**40 rows, stay finite in float64.
SPREAD_LIMIT = float(np.sqrt(np.finfo(np.float64).max)) * 2.0**-20


def check_magnitudes(rows, what="X"):
    """Raise a ``ValueError`` naming the feature whose values are too large to square.

    Squared distances, variances and sums of squares overflow float64 when a
    feature's values spread over more than :data:`SPREAD_LIMIT` (about 1e148); the
    fit would then fail on infinite statistics, which look like collapsed components.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        A sample of the data; NaN or infinity in it is a ``ValueError`` too (the
        same two reductions find it: no scan of its own).
    what : str
        Name of the data in the message.
    """
    if rows.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        spread = _by_column(rows, np.max) - _by_column(rows, np.min)
    bad = ~(spread <= SPREAD_LIMIT)
    if not bad.any():  # finite rows too: NaN or infinity would spread NaN or infinity
        return
    if not np.isfinite(rows).all():
        raise ValueError("rows hold NaN or infinite values; leave those rows out (sample_rows does).")
    size = np.abs(rows).max(axis=0)
    j = int(np.argmax(np.where(bad, size, -1.0)))
    raise ValueError(
        f"Feature {j} of {what} holds values of magnitude up to {size[j]:.3g} (they spread over "
        f"{spread[j]:.3g}): too large to square in float64, so squared distances and covariances "
        f"would overflow (spreads up to about {SPREAD_LIMIT:.1e} work). Scale the features first, "
        f"e.g. X / X.std(axis=0) or sklearn.preprocessing.StandardScaler."
    )


def _by_column(rows, reduce):
    """``reduce(rows, axis=0)`` for a max or min of C-ordered rows (n, D), about 4 times
    faster for few columns: consecutive rows are viewed as one wide row first, so
    NumPy's inner loop runs over about 1,024 values instead of D."""
    n, D = rows.shape
    group = max(1, 1024 // max(D, 1))
    whole = n - n % group
    if group == 1 or whole == 0 or not rows.flags.c_contiguous:
        return reduce(rows, axis=0)
    wide = reduce(rows[:whole].reshape(-1, group * D), axis=0).reshape(group, D)
    return reduce(np.concatenate([wide, rows[whole:]]), axis=0)


def default_sample_size(n_components):
    """Rows of the initialisation sample: ``max(1000 K, 100_000)``."""
    return max(SAMPLE_ROWS_PER_COMPONENT * n_components, SAMPLE_MIN_ROWS)


def _slab_step(width):
    return max(256, _SLAB_ELEMENTS // max(width, 1))


def nearest_centers(points, centers):
    """Index of the nearest centre (n,) and squared distance to it (n,), in slabs of rows.

    Parameters
    ----------
    points : ndarray of shape (n, D)
    centers : ndarray of shape (K, D)
    """
    n = points.shape[0]
    labels, d2 = np.empty(n, dtype=np.intp), np.empty(n)
    step = _slab_step(centers.shape[0])
    for i in range(0, n, step):
        d2[i : i + step], labels[i : i + step] = min_sq_dist(points[i : i + step], centers)
    return labels, d2


def estep_sample(rows, weights, payload, threads=None):
    """:func:`~dask_em.engine.estep_block` on the in-memory sample, on the machine's threads.

    The rows are cut into pieces of :data:`SAMPLE_PIECE_ROWS` that run on up to
    ``threads`` threads (:func:`~dask_em.settings.map_on_threads`; NumPy's
    and BLAS's calls release the GIL, and BLAS runs on one thread meanwhile, see
    :func:`~dask_em.engine.blas.blas_limited`), and their statistics are summed in
    the pieces' order: the same bits whatever the number of threads. Measured on
    100,000 x 16 rows, K=8, two cores: 60 -> 38 ms an E-step (full), 21 -> 15 ms (diag).

    Parameters
    ----------
    rows : ndarray of shape (n, D)
    weights : ndarray of shape (n,) or None
    payload : tuple (family, list of MixtureState)
    threads : int, optional

    Returns
    -------
    list of dict
        Per mixture, the statistics of all the rows (as :func:`estep_block`).
    """
    n = rows.shape[0]
    starts = range(0, n, SAMPLE_PIECE_ROWS)

    def piece(i):
        w = None if weights is None else weights[i : i + SAMPLE_PIECE_ROWS]
        return estep_block(rows[i : i + SAMPLE_PIECE_ROWS], w, payload, i)

    return add_stats(map_on_threads(piece, starts, threads))


def _start_from_assignment(rows, weights, family, centers, rng, ref, options):
    """A :class:`MixtureState` from the statistics of the rows assigned to their
    nearest centre (``centers``) or given random responsibilities (``rng``)."""
    K = ref.shape[0]
    if family.hard and centers is not None:  # a Lloyd step: the E-step of a fit, in a few GEMMs
        start = MixtureState(np.full(K, 1.0 / K), {"means": centers})
        (stats,) = estep_sample(rows, weights, (family, [start]))
        return m_step(family, stats, start, options)
    stats = None
    step = _slab_step(K)
    for i in range(0, rows.shape[0], step):
        P = rows[i : i + step]
        if centers is not None:
            _, labels = min_sq_dist(P, centers)
            resp = np.zeros((P.shape[0], K))
            resp[np.arange(P.shape[0]), labels] = 1.0
        else:
            resp = rng.random((P.shape[0], K))
            resp /= resp.sum(axis=1, keepdims=True)
        if weights is not None:
            resp *= weights[i : i + step, None]
        part = family.suff_stats(P, resp, {"means": ref})
        part["nk"] = resp.sum(axis=0)
        stats = part if stats is None else add_stats([stats, part])
    nk = stats["nk"] + 10 * np.finfo(np.float64).eps
    return MixtureState(nk / nk.sum(), family.m_step(stats, {"means": ref}, **options))


def sample_inertia(rows, weights, centers):
    """The (weighted) inertia of in-memory ``rows`` (n, D) about their nearest ``centers`` (K, D)."""
    d2 = nearest_centers(rows, centers)[1]
    return float(d2.sum() if weights is None else np.dot(weights, d2))


def _centers_on_sample(rows, weights, K, method, rng):
    """Starting centres (K, D) on the in-memory sample, for one seed.

    k-means++ seeds on at most ``max(KMEANSPP_SAMPLE, 100 K)`` rows of the sample.
    When that is a strict subset, ``"kmeans"`` draws :data:`SEEDING_CANDIDATES`
    seedings there, takes each to Lloyd's fixed point on the subset, and continues
    from the one of least inertia with Lloyd on the whole sample.
    """
    n = rows.shape[0]
    p = None if weights is None else weights / weights.sum()
    if method == "random_from_data":
        return rows[rng.choice(n, K, replace=False, p=p)].copy()
    m = max(KMEANSPP_SAMPLE, 100 * K)
    if n <= m:
        centers = kmeans_plusplus(rows, K, rng, weights=weights)
        return centers if method == "k-means++" else lloyd(rows, centers, weights)
    sub = np.sort(rng.choice(n, m, replace=False))
    sub_rows, sub_weights = rows[sub], None if weights is None else weights[sub]
    if method == "k-means++":
        return kmeans_plusplus(sub_rows, K, rng, weights=sub_weights)
    candidates = [
        lloyd(sub_rows, kmeans_plusplus(sub_rows, K, rng, weights=sub_weights), sub_weights)
        for _ in range(SEEDING_CANDIDATES)
    ]
    best = min(candidates, key=lambda c: sample_inertia(sub_rows, sub_weights, c))
    return lloyd(rows, best, weights)


def _em_on_sample(rows, weights, family, starts, options, tol, max_iter, accelerate=True):
    """EM in memory on the sample for every start, in lock-step (as :func:`run_em`):
    SQUAREM-accelerated (:mod:`dask_em.engine.accelerate`) unless ``accelerate`` is
    false or the family assigns hard (K-means: plain Lloyd iterations)."""

    def estep(states):
        return estep_sample(rows, weights, (family, states))

    if accelerate and not family.hard:
        accs = run_squarem(estep, family, [s.state for s in starts], options=options, tol=tol, max_iter=max_iter)
        for start, acc in zip(starts, accs):
            start.state, start.n_iter, start.converged = acc.safe_state, acc.n_iter, acc.converged
        return
    lower = [-math.inf] * len(starts)
    active = list(range(len(starts)))
    for iteration in range(1, max_iter + 1):
        stats_list = estep([starts[i].state for i in active])
        still = []
        for i, stats in zip(active, stats_list):
            mean_ll = stats["loglik"] / stats["weight"]
            change, lower[i] = mean_ll - lower[i], mean_ll
            starts[i].state = m_step(family, stats, starts[i].state, options)
            starts[i].n_iter = iteration
            if abs(change) < tol:
                starts[i].converged = True
            else:
                still.append(i)
        active = still
        if not active:
            break


def initialize_on_sample(
    rows,
    family,
    n_components,
    method,
    seeds,
    *,
    weights=None,
    centers=None,
    options=None,
    em_on_sample=True,
    tol=1e-3,
    max_iter_sample=SAMPLE_EM_MAX_ITER,
    accelerate=True,
    rank=True,
):
    """Starting points computed in memory on a sample of rows, best first.

    Per seed: centres by ``method`` (or the given ``centers``), then weights and
    component parameters from the hard assignment of the sample to them (random
    responsibilities for ``"random"``), then up to ``max_iter_sample`` EM iterations
    on the sample. Every start is scored by its mean log-likelihood on the sample.
    For a hard-assignment family (K-means), the centres of ``"kmeans"`` are Lloyd's
    converged centroids already, and are the start as they are (equal weights).

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        Finite rows, e.g. from :func:`dask_em.sampling.sample_rows`.
    family : Family
        Its ``suff_stats`` and ``m_step`` must accept parameters holding only
        ``means`` (K, D).
    n_components : int
    method : {"kmeans", "k-means++", "random", "random_from_data"}
        ``"kmeans"``: k-means++ then Lloyd to convergence; ``"k-means++"``: k-means++
        alone (both seed on at most ``max(10_000, 100 K)`` rows of the sample;
        ``"kmeans"`` keeps the best of :data:`SEEDING_CANDIDATES` seedings when
        that is a part of the sample);
        ``"random_from_data"``: K distinct rows; ``"random"``: random
        responsibilities. Ignored when ``centers`` is given.
    seeds : list of int
        One start per seed.
    weights : ndarray of shape (n,), optional
        Weights of the rows (from :func:`dask_em.sampling.estimation_weights`).
    centers : ndarray of shape (n_components, D), optional
        Given starting means (the same start for every seed).
    options : dict, optional
        Keyword arguments of ``family.m_step``.
    em_on_sample : bool
        Run EM on the sample before scoring.
    tol : float
        Convergence threshold of EM on the sample (change of the mean log-likelihood).
    max_iter_sample : int
        Most EM iterations (E-steps) on the sample.
    accelerate : bool
        Accelerate EM on the sample with SQUAREM (:mod:`dask_em.engine.accelerate`;
        not for hard-assignment families): the same fixed point in fewer E-steps.
    rank : bool
        Score every start on the sample and sort them (one E-step of the sample);
        ``False`` keeps the seeds' order and leaves ``sample_loglik`` at ``-inf``
        (a fit with one start has nothing to rank).

    Returns
    -------
    list of SampleStart
        One per seed, sorted by ``sample_loglik``, best first (non-finite last).
    """
    options = options or {}
    K = n_components
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"n_components must be a positive int, got {K!r}.")
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (n, D), got shape {rows.shape}.")
    check_magnitudes(rows)  # and finite
    if rows.shape[0] < K:
        raise ValueError(
            f"The sample holds {rows.shape[0]} rows, fewer than n_components={K}; "
            f"give more rows (a larger n_sample or max_bytes, or more data with finite values)."
        )
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float64)
        if centers.shape != (K, rows.shape[1]):
            raise ValueError(f"centers must have shape {(K, rows.shape[1])}, got {centers.shape}.")
    elif method not in INIT_METHODS:
        raise ValueError(f"Unknown init method {method!r}; expected one of {INIT_METHODS}.")
    starts = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 0])
        if centers is not None:
            state = _start_from_assignment(rows, weights, family, centers, None, centers, options)
        elif method == "random":
            ref = np.repeat(np.average(rows, axis=0, weights=weights)[None], K, axis=0)
            state = _start_from_assignment(rows, weights, family, None, rng, ref, options)
        else:
            c = _centers_on_sample(rows, weights, K, method, rng)
            if family.hard and method == "kmeans":  # Lloyd's centroids: K-means' start as they are
                state = MixtureState(np.full(K, 1.0 / K), {"means": c})
            else:
                state = _start_from_assignment(rows, weights, family, c, None, c, options)
        starts.append(SampleStart(state=state, seed=seed, sample_loglik=-math.inf))
    if em_on_sample and max_iter_sample > 0:
        _em_on_sample(rows, weights, family, starts, options, tol, max_iter_sample, accelerate)
    if not rank:
        for s in starts:
            logger.debug("start of seed %d after %d EM iterations on the sample (not scored: nothing to rank)",
                         s.seed, s.n_iter)
        return starts
    for start, stats in zip(starts, estep_sample(rows, weights, (family, [s.state for s in starts]))):
        start.sample_loglik = float(stats["loglik"] / stats["weight"])
    starts.sort(key=lambda s: -s.sample_loglik if math.isfinite(s.sample_loglik) else math.inf)
    for s in starts:
        logger.debug("start of seed %d: sample mean log-likelihood %.8g after %d EM iterations on the sample",
                     s.seed, s.sample_loglik, s.n_iter)
    return starts


def initialize_from_sample(
    X,
    family,
    n_components,
    method,
    seeds,
    *,
    centers=None,
    options=None,
    check=None,
    sample_weight=None,
    n_sample=None,
    max_bytes=SAMPLE_MAX_BYTES,
    sample_seed=None,
    em_on_sample=True,
    tol=1e-3,
    max_iter_sample=SAMPLE_EM_MAX_ITER,
    split_every=None,
):
    """Starting points from one pass over ``X``: a sample, then everything in memory.

    One pass (one ``dask.compute``) draws a random sample of rows with
    :func:`dask_em.sampling.sample_rows` (weighted by ``sample_weight``, the same
    whatever the chunking); :func:`initialize_on_sample` then computes and ranks the
    start of every seed on it. One pass whatever the method and ``n_init``.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked, with known chunk sizes.
    family : Family
    n_components : int
    method : {"kmeans", "k-means++", "random", "random_from_data"}
        Ignored when ``centers`` is given.
    seeds : list of int
        One start per seed (non-negative ints).
    centers : ndarray of shape (n_components, D), optional
        Given starting means.
    options : dict, optional
        Keyword arguments of ``family.m_step``.
    check : callable, optional
        Called with the row counts of the pass (``n_rows``, ``n_nonfinite``,
        ``n_bad_weight``) before anything is computed from the sample.
    sample_weight : dask.array.Array of shape (N,), optional
        Row weights. The sample is drawn with probability growing with the weight,
        and its rows are weighted by :func:`dask_em.sampling.estimation_weights`.
    n_sample : int, optional
        Rows in the sample (default :func:`default_sample_size`: ``max(1000 K, 100_000)``).
    max_bytes : int, optional
        Cap on the float64 sample's size (256 MiB by default); lowers ``n_sample``.
    sample_seed : int, optional
        Seed of the sample (default ``seeds[0]``).
    em_on_sample : bool, optional
        Run up to ``max_iter_sample`` EM iterations on the sample, in memory, before
        ranking the starts.
    tol : float, optional
        Convergence threshold of EM on the sample.
    max_iter_sample : int, optional
    split_every : int, optional
        Fan-in of the sampling pass's tree of combines.

    Returns
    -------
    list of SampleStart
        One per seed, best ``sample_loglik`` first; ``[s.state for s in starts]``
        are the starting :class:`MixtureState` objects.

    Raises
    ------
    ValueError
        Unknown ``method`` (before the pass), or fewer sampled rows than components.
    """
    K = n_components
    if centers is None and method not in INIT_METHODS:
        raise ValueError(f"Unknown init method {method!r}; expected one of {INIT_METHODS}.")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give one seed per start (n_init seeds).")
    n = default_sample_size(K) if n_sample is None else n_sample
    seed = seeds[0] if sample_seed is None else sample_seed
    rows, weights, counts = sample_rows(X, n, seed, sample_weight, max_bytes, split_every=split_every)
    if check is not None:
        check(counts)
    logger.info("initialisation sample: %d of %d rows", counts["n_sample"], counts["n_rows"])
    return initialize_on_sample(
        rows,
        family,
        K,
        method,
        seeds,
        weights=estimation_weights(weights, counts["threshold"]),
        centers=centers,
        options=options,
        em_on_sample=em_on_sample,
        tol=tol,
        max_iter_sample=max_iter_sample,
    )


__all__ = [
    "SampleStart",
    "default_sample_size",
    "initialize_from_sample",
    "initialize_on_sample",
    "lloyd",
    "nearest_centers",
]
