"""The contract every mixture-component family fulfils.

A family is a bundle of pure NumPy functions over a parameter dict. It never imports
dask, keeps no state, and knows nothing of mixing weights: the engine owns those.
"""

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

#: Component parameters: arrays by name (``means``, ``covariances``, ``probs``...).
Params = dict[str, np.ndarray]
#: Statistics of a pass: arrays (or objects with an associative ``+``) by name.
Stats = dict[str, Any]


# The signatures the engine calls. Positional parameters are positional-only here,
# so a family may name them as it likes; keywords a family may take besides them
# are named in the docstrings (``cache`` with Family.caches, ``offset`` with
# Family.takes_offset, the estimator's options for m_step).
class LogProb(Protocol):
    """``log_prob(X, params) -> (n, K)``; also ``cache=`` and ``offset=`` when the
    family says so (:attr:`Family.caches`, :attr:`Family.takes_offset`)."""

    def __call__(self, X: np.ndarray, params: Params, /) -> np.ndarray: ...


class SuffStats(Protocol):
    """``suff_stats(X, resp, params) -> dict``; also ``cache=`` when :attr:`Family.caches`."""

    def __call__(self, X: np.ndarray, resp: np.ndarray, params: Params, /) -> Stats: ...


class MStep(Protocol):
    """``m_step(stats, params, **options) -> params``, the options given by the estimator."""

    def __call__(self, stats: Stats, params: Params, /) -> Params: ...


class NParameters(Protocol):
    """``n_parameters(params) -> int``."""

    def __call__(self, params: Params, /) -> int: ...


class Sample(Protocol):
    """``sample(params, counts, rng) -> (sum(counts), D)``."""

    def __call__(
        self, params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator, /
    ) -> np.ndarray: ...


class CheckData(Protocol):
    """``check_data(X) -> None``, raising a ``ValueError`` for values off the support."""

    def __call__(self, X: np.ndarray, /) -> None: ...


@dataclass(frozen=True)
class MissingOps:
    """A family's math for rows with missing features, one pattern at a time.

    Every function works on rows ``X`` (n, D) that share one pattern of observed
    features (``observed``, bool (D,), at least one True); the missing entries of
    ``X`` are NaN and never read.

    Attributes
    ----------
    factors : callable
        ``factors(params, observed) -> object``: what the other functions need of
        the parameters for this pattern (for a Gaussian, the marginal covariance's
        factor and the regression of the missing on the observed features), computed
        once per row block, per pattern, for all components.
    log_prob : callable
        ``log_prob(X, params, factors) -> (n, K)``: log-density of the observed
        features of each row (the missing ones integrated out).
    suff_stats : callable
        ``suff_stats(X, resp, params, factors) -> dict``: the family's statistics
        (same keys and shapes as ``Family.suff_stats``) of the complete rows, in
        expectation over the missing features given the observed ones and the
        component, weighted by ``resp`` (n, K).
    expect : callable
        ``expect(X, resp, params, factors) -> (n, n_missing)``: the expectation of
        the missing features, ``sum_k resp_ik E[x_m | x_o, k]`` (imputation).
    """

    factors: Callable
    log_prob: Callable
    suff_stats: Callable
    expect: Callable


@dataclass(frozen=True)
class Family:
    """The pure functions that define one kind of mixture component.

    Attributes
    ----------
    name : str
        Registry name, also used in dask task names (``estep-<name>``).
    log_prob : LogProb
        ``log_prob(X, params) -> ndarray (n, K)``: log-density of each row of
        ``X`` (float64, shape (n, D)) under each component.
    suff_stats : SuffStats
        ``suff_stats(X, resp, params) -> dict``: sums over the rows of ``X``
        weighted by ``resp`` (shape (n, K)). Sizes depend on K and D, never on n,
        and statistics of two row blocks add key-wise. ``params`` are the current
        parameters (they may serve as a shift reference, e.g. Gaussian means).
        It may include ``nk``, ``resp.sum(axis=0)`` in float64; the engine adds it
        otherwise.
    m_step : MStep
        ``m_step(stats, params, **options) -> dict``: new component parameters
        from summed statistics; ``stats["nk"]`` holds the summed responsibilities.
    n_parameters : NParameters
        ``n_parameters(params) -> int``: free parameters of the components
        (the engine adds ``K - 1`` for the mixing weights).
    sample : Sample
        ``sample(params, counts, rng) -> ndarray (sum(counts), D)``: ``counts[k]``
        draws from component ``k``, in component order.
    hard : bool
        Hard-assignment EM (K-means): responsibilities are one-hot at the best
        component, and mixing weights do not enter the assignment.
    hard_stats : callable or None
        Hard families: ``hard_stats(X, weights, params) -> dict``, the statistics of
        ``suff_stats`` for the one-hot assignment of every row to its best component
        (the largest ``log_prob``, the first of equal ones), weighted by ``weights``
        (n,) or ``None``, plus ``nk`` and ``loglik`` (the weighted sum of the rows'
        best ``log_prob``); also ``cache=`` when :attr:`caches`. The E-step then calls
        it instead of ``log_prob`` and ``suff_stats``, and builds no (n, K) one-hot
        responsibilities. ``None``: the generic path.
    fused_stats : callable or None
        Soft families: ``fused_stats(X, weights, params, log_weights, groups, floor)
        -> dict or None``, what ``log_prob`` (plus ``log_weights``), the engine's
        responsibilities (floored at ``floor``, for ``groups`` mixtures side by side,
        times ``weights``) and ``suff_stats`` give together, in one pass over the rows
        (a compiled kernel), with ``nk`` and ``loglik`` (groups,); also ``cache=``
        when :attr:`caches`. ``None`` from the call (the kernel does not apply or is
        turned off, see :mod:`dask_em.compiled`) or as the attribute: the generic path.
    fused_slab_rows : callable or None
        ``fused_slab_rows(n_components, n_features, dtype, floor) -> int or None``:
        the rows of a slab (:func:`dask_em.engine.estep.estep_block`) where
        ``fused_stats`` runs its kernel for those arguments, which needs no (n, K)
        arrays, so that slabs may be longer than the generic path's; None where it
        would not run (the generic path's slabs). It must answer as ``fused_stats``
        does: a longer slab on the generic path would hold larger work arrays.
    caches : bool
        ``log_prob`` and ``suff_stats`` (and ``hard_stats``, ``fused_stats``) take a
        ``cache`` dict.
        The engine gives one dict per row block and per mixture, and calls ``log_prob`` then
        ``suff_stats`` on the same rows, slab after slab: values derived from the
        parameters may be kept there for the whole block, and work arrays of the
        rows (e.g. whitened rows) are reused by ``suff_stats``. ``cache["rows"]``
        is a dict shared by all the mixtures of a pass and renewed for every slab,
        for work that depends on the rows alone.
    stacks : bool
        Every parameter and every statistic is an array with the K components
        along axis 0, so the parameters of several mixtures concatenate into one
        mixture of all their components. The engine then evaluates several
        mixtures (``n_init`` starts) of the same K with one call per slab.
    takes_offset : bool
        ``log_prob`` takes ``offset``, an array (K,) to add to every row's
        log-densities; the engine passes the log mixing weights, which the family
        can add at no cost (to a constant it adds anyway, or inside a GEMM) instead
        of in a pass of its own over the (n, K) result.
    keeps_float32 : bool
        The functions accept float32 ``X`` (computing in float32, returning float64
        statistics); otherwise the engine hands them float64.
    check_data : callable or None
        ``check_data(X) -> None``: raises a ``ValueError`` naming the column and
        the value when ``X`` holds values outside the family's support (negative
        counts, non-binary values). Families call it inside ``log_prob`` and
        ``suff_stats``, so bad data are found inside the passes; estimators call it
        up front on in-memory data. ``None``: every finite value is valid.
    check_params : callable or None
        ``check_params(params, n_components, n_features) -> None``: raises a
        ``ValueError`` saying what is wrong (which parameter, which entry, what it
        must be) unless ``params`` have the family's keys and shapes and valid
        values; used on parameters read from a file. ``None``: not checked.
    recentre : callable or None
        ``recentre(stats, old_params, new_params) -> stats``: the statistics of
        :attr:`suff_stats`, taken about the reference of ``old_params`` (e.g. shifted
        by the old means), re-expressed exactly about that of ``new_params``; a new
        dict, the other keys passed through. Stepwise EM uses it to add statistics
        taken under different parameters. ``None``: the statistics do not depend on
        the parameters' reference point (they are not shifted); nothing to do.
    log_weights : callable or None
        ``log_weights(params) -> (K,)``: the log mixing weights the E-step adds to
        the log-densities, from the parameters (a variational family's expected
        log weights ``E[log pi_k]``). ``None``: ``log(weights)``.
    mixing_weights : callable or None
        ``mixing_weights(params) -> (K,)``: the mixing weights after an M-step,
        from the new parameters (a variational family's posterior mean weights);
        they sum to 1. ``None``: the normalised summed responsibilities.
    missing : object or None
        The family's math for rows with missing features (NaN), used under
        ``nan_policy="marginalize"``: an object with ``factors(params, observed)``,
        ``log_prob(X, params, factors)``, ``suff_stats(X, resp, params, factors)``
        and ``expect(X, resp, params, factors)``, for rows that share one pattern
        of observed features (see :mod:`dask_em.families.gaussian_missing`).
        ``None``: the family cannot marginalise (``"marginalize"`` is refused).
    variational : bool
        The M-step returns a variational posterior (the priors added to the
        statistics) and the objective is the lower bound (ELBO), not the E-step's
        summed log-normaliser (``loglik``). SQUAREM
        (:mod:`dask_em.engine.accelerate`) does not apply: its safeguard judges a
        point by ``loglik``, and extrapolated statistics can leave the posterior's
        domain.
    local : callable or None
        Hard families whose ``hard_stats`` takes ``keep=`` (a fraction of the rows):
        it then also returns ``region``, a summary of the pass from which
        ``local(region, params) -> dict or None`` gives the statistics of a whole
        pass at other parameters near those of the pass, without reading the data
        (``None`` where it cannot; :mod:`dask_em.families.kmeans_region`).
        ``None``: every step needs a pass.
    marginalize : bool
        Set by the fit pipeline when ``nan_policy="marginalize"``: the E-step
        hands rows with gaps to :mod:`dask_em.engine.marginal` (needs ``missing``).

    Notes
    -----
    A statistic is usually an array, summed key-wise. It may also be any object
    with an associative, commutative ``+`` that also accepts ``0 + s`` (the
    farthest rows kept by K-means, for example).
    """

    name: str
    log_prob: LogProb
    suff_stats: SuffStats
    m_step: MStep
    n_parameters: NParameters
    sample: Sample
    hard: bool = False
    caches: bool = False
    stacks: bool = False
    takes_offset: bool = False
    keeps_float32: bool = False
    check_data: Callable = None
    check_params: Callable = None
    recentre: Callable = None
    log_weights: Callable = None
    mixing_weights: Callable = None
    missing: object = None
    variational: bool = False
    marginalize: bool = False
    hard_stats: Callable = None
    fused_stats: Callable = None
    fused_slab_rows: Callable = None
    local: Callable = None
