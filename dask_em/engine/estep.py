"""The E-step chunk kernel and the mixture-level pieces (weights, responsibilities).

Everything here is NumPy on one row block and works for any :class:`Family`.
"""

import functools
from dataclasses import dataclass, field

import numpy as np

from dask_em._math import Workspace, as_float64, work_array
from dask_em.engine.vector_exp import LOWEST_FLOOR, softmax_floored, uses_own_exp

_NK_EPS = 10 * np.finfo(np.float64).eps


def log_tiny(dtype):
    """Log of the smallest normal number of ``dtype`` (about -708 for float64, -87 for float32)."""
    return float(np.log(np.finfo(dtype).tiny))

#: Most rows of float64 data processed at once inside a block (see :func:`slab_rows`).
SLAB_ROWS = 8192


def slab_rows(n_components, n_features, itemsize=8):
    """Rows processed at once: the (rows, K, D) work arrays stay near 16 MiB, large
    enough for efficient GEMMs, small enough for the caches; a power of two between
    1,024 and :data:`SLAB_ROWS` (twice that for float32 data)."""
    scale = max(8 // itemsize, 1)
    rows = scale * 2**21 // max(n_components * n_features, 1)
    return int(min(scale * SLAB_ROWS, max(1024, 1 << max(rows.bit_length() - 1, 0))))


@dataclass
class MixtureState:
    """Parameters of one mixture: mixing ``weights`` (K,) and the family's ``params``."""

    weights: np.ndarray
    params: dict = field(default_factory=dict)


def cast_state(state: MixtureState, dtype) -> MixtureState:
    """``state`` with its float arrays in ``dtype`` (float32 attributes for float32 data)."""
    def cast(a):
        a = np.asarray(a)
        return a.astype(dtype) if a.dtype.kind == "f" else a

    return MixtureState(cast(state.weights), {k: cast(v) for k, v in state.params.items()})


def as_float64_state(state: MixtureState) -> MixtureState:
    """``state`` in float64 (a warm start from float32 attributes computes in float64)."""
    return cast_state(state, np.float64)


def valid_rows(X, w=None):
    """Mask of the rows that enter a fit, and the counts of those left out.

    Rows with any NaN or infinite value are left out; so are rows whose sample
    weight is zero. Negative or non-finite weights are counted, not used.

    Returns
    -------
    mask : ndarray of bool, shape (n,)
    n_nonfinite : int
    n_bad_weight : int
    """
    # fast path: a NaN or inf makes the row sum non-finite (a GEMV, unlike a
    # reduction over the short feature axis); only then find the rows exactly
    if np.isfinite(X @ np.ones(X.shape[1], dtype=X.dtype)).all():
        mask = np.ones(X.shape[0], dtype=bool)
    else:
        mask = np.isfinite(X).all(axis=1)
    n_nonfinite = int(mask.size - np.count_nonzero(mask))
    n_bad_weight = 0
    if w is not None:
        bad_w = ~np.isfinite(w) | (w < 0)
        n_bad_weight = int(np.count_nonzero(bad_w))
        mask &= ~bad_w & (w > 0)
    return mask, n_nonfinite, n_bad_weight


def log_weights(family, state):
    """The log mixing weights the E-step adds to the log-densities (K,); -inf for a
    weight of 0."""
    if family.log_weights is not None:
        return family.log_weights(state.params)
    with np.errstate(divide="ignore"):
        return np.log(state.weights)


def weighted_log_prob(X, family, state, **kwargs):
    """``log pi_k + log p(x | theta_k)`` (n, K); hard families ignore the weights."""
    if family.hard:
        return family.log_prob(X, state.params, **kwargs)
    logw = log_weights(family, state)
    if family.takes_offset:
        return family.log_prob(X, state.params, offset=logw, **kwargs)
    lp = family.log_prob(X, state.params, **kwargs)
    lp += logw
    return lp


def responsibilities(wlp, hard, floor=None, overwrite=False, groups=1, work=None):
    """Responsibilities (n, K) and per-row log-likelihood (n,) from weighted log-probs.

    For hard families the responsibilities are one-hot at the best component and
    the "log-likelihood" is the best weighted log-prob (minus the squared distance
    for K-means). Soft responsibilities below ``exp(floor)`` are set to exactly 0,
    and with numpy's exp ``exp(floor)`` is taken off the others (see
    :func:`_exp_floored`; dask-em's own, :mod:`dask_em.engine.vector_exp`, needs
    not): each is exact to within ``exp(floor)``. By default ``floor`` is the
    lowest that keeps every responsibility a normal number of the dtype. With
    ``overwrite``, ``wlp`` may be reused as work space. Soft responsibilities are
    returned as the transpose of a C-contiguous (K, n) array.

    With ``groups=S`` (soft only), the K columns of ``wlp`` are S mixtures of K/S
    components side by side: each is normalised on its own, and the log-likelihood
    has shape (S, n). ``work``, a :class:`~dask_em._math.Workspace`, lends the
    temporaries.
    """
    if hard:
        labels = np.argmax(wlp, axis=1)
        rows = np.arange(wlp.shape[0])
        resp = np.zeros_like(wlp)
        resp[rows, labels] = 1.0
        return resp, wlp[rows, labels]
    # work on the (K, n) transpose: reductions over the K components then run along
    # contiguous rows, about 4x faster than over the short last axis of (n, K)
    at = wlp.T if overwrite and wlp.T.flags.c_contiguous else np.array(wlp.T, order="C")
    n_all, n = at.shape
    at3 = at.reshape(groups, n_all // groups, n)
    if floor is None:
        floor = log_tiny(at.dtype) + np.log(at3.shape[1]) + 1.0
    top = work_array(work, "top", (groups, n), at.dtype)
    total = work_array(work, "total", (groups, n), at.dtype)
    if floor >= LOWEST_FLOOR and uses_own_exp(at.dtype):  # the passes below in one compiled loop
        softmax_floored(at, groups, floor, top, total)
    else:
        np.max(at3, axis=1, out=top)
        top[~np.isfinite(top)] = 0.0
        at3 -= top[:, None, :]
        _exp_floored(at, floor, work)
        np.sum(at3, axis=1, out=total)
        at3 *= np.reciprocal(total, out=work_array(work, "scale", (groups, n), at.dtype))[:, None, :]
    row_ll = np.log(total)  # a new array: it outlives the work arrays
    row_ll += top
    return at.T, (row_ll[0] if groups == 1 else row_ll)


def _exp_floored(a, floor, work=None):
    """``a = exp(a) - exp(floor)`` in place where ``a > floor``, exactly 0 elsewhere.

    Clamped to ``floor``, exponentiated, then ``exp(floor)`` subtracted: three
    branch-free passes, each result within ``exp(floor)`` of ``exp(a)``. numpy's
    exp runs 10 to 70 times slower on inputs whose result is subnormal or zero
    (float64, numpy 2.4), and masked writes several times slower than a plain pass
    on mixed data. (dask-em's own exp, :mod:`dask_em.engine.vector_exp`, gives
    ``exp(a)`` above ``floor`` and exactly 0 at or below.)
    """
    c = _exp_in_arrays(float(floor), a.dtype.str)
    if c is None:  # this numpy's exp differs between positions of an array
        return _exp_floored_masked(a, floor, work)
    np.maximum(a, floor, out=a)
    np.exp(a, out=a)
    a -= c


def _exp_floored_masked(a, floor, work=None):
    """:func:`_exp_floored` with a mask, for a numpy whose exp of one value differs
    between positions of an array (none known): exp(a) where ``a > floor``, else 0."""
    low = np.less_equal(a, a.dtype.type(floor), out=work_array(work, "flush", a.shape, bool))
    np.maximum(a, floor, out=a)
    np.exp(a, out=a)
    np.putmask(a, low, 0.0)


@functools.lru_cache(maxsize=None)
def _exp_in_arrays(value, dtype):
    """``np.exp(value)`` as computed at every position of an array of ``dtype``,
    aligned or not, or None when positions differ (then no one value can be
    subtracted to get exact zeros)."""
    probe = np.exp(np.full(131, value, dtype=dtype)[1:])  # both SIMD body and tail
    probe2 = np.exp(np.full(130, value, dtype=dtype))
    return probe[0] if np.all(probe == probe[0]) and np.all(probe2 == probe[0]) else None


def _compute_dtype(dtype, family):
    """float32 for float32 data when the family computes in it, else float64."""
    return np.dtype(np.float32) if family.keeps_float32 and dtype == np.float32 else np.dtype(np.float64)


def _as_compute_dtype(X, family):
    return np.ascontiguousarray(X, dtype=_compute_dtype(X.dtype, family))


def _stacked(states):
    """One mixture holding the components of several mixtures of K components each."""
    params = {key: np.concatenate([s.params[key] for s in states]) for key in states[0].params}
    return MixtureState(weights=np.concatenate([s.weights for s in states]), params=params)


def _floor(dtype):
    """The E-step's floor: responsibilities below sqrt(tiny) become 0, as their products
    with the data in the statistics' GEMMs would be subnormal numbers, on which BLAS
    runs ~50x slower."""
    return 0.5 * log_tiny(dtype)


def _estep_slab(X, w, family, state, cache, groups=1, keep=None):
    """Statistics of one slab of valid rows (see :func:`estep_block`): a list of one
    dict per mixture, ``groups`` mixtures being stacked in ``state``."""
    kw = {} if cache is None else {"cache": cache}
    if family.hard_stats is not None:  # assignment and sums in one kernel, no one-hot
        if keep is not None:
            kw["keep"] = keep
        return [family.hard_stats(X, w, state.params, **kw)]
    floor = _floor(X.dtype)
    if family.fused_stats is not None:
        stats = family.fused_stats(X, w, state.params, log_weights(family, state), groups, floor, **kw)
        if stats is not None:  # one compiled loop: no (n, K) arrays
            loglik = stats.pop("loglik")
            return _per_mixture(stats, loglik, groups)
    wlp = weighted_log_prob(X, family, state, **kw)
    work = None if cache is None else cache.get("work")
    resp, row_ll = responsibilities(wlp, family.hard, floor, overwrite=True, groups=groups, work=work)
    if w is not None:
        resp *= w[:, None]
        row_ll = row_ll * w
    stats = family.suff_stats(X, resp, state.params, **kw)
    if "nk" not in stats:  # a family that needed the summed responsibilities returns them
        stats["nk"] = resp.sum(axis=0, dtype=np.float64)
    loglik = row_ll.reshape(groups, -1).sum(axis=1, dtype=np.float64)
    return _per_mixture(stats, loglik, groups)


def _per_mixture(stats, loglik, groups):
    """The statistics of ``groups`` stacked mixtures, one dict each, with ``loglik``
    (groups,) the sums of their rows' log-likelihoods."""
    if groups == 1:
        return [{**stats, "loglik": float(loglik[0])}]
    K = len(stats["nk"]) // groups
    return [
        {**{key: value[g * K : (g + 1) * K] for key, value in stats.items()}, "loglik": float(loglik[g])}
        for g in range(groups)
    ]


def estep_block(X, w, payload, index):
    """E-step on one row block for several mixtures at once (shared data, one read).

    The block is processed in slabs of :func:`slab_rows` rows so that per-row work
    arrays stay small (of the family's ``fused_slab_rows`` where its compiled loop
    runs, which keeps none); statistics are summed over slabs in float64. Families that
    cache get one dict per mixture for the whole block; its ``"rows"`` entry is
    shared by all mixtures and renewed for every slab (work on the rows alone).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    w : ndarray of shape (n,) or None
        Sample weights.
    payload : tuple (family, list of MixtureState[, keep])
        ``keep``, a fraction of the rows, asks a family with :attr:`Family.local`
        for the ``region`` of the pass too (see :func:`dask_em.engine.loop.run_em`).
    index : int
        Position of the block (unused; part of the kernel signature).

    Returns
    -------
    list of dict
        Per mixture: the family's statistics plus ``nk`` (K,), ``loglik`` (weighted
        sum of per-row log-likelihoods), ``weight`` (sum of sample weights),
        ``n_rows``, ``n_nonfinite``, ``n_bad_weight``; with a marginalising family
        also ``missing``, the (weighted) number of missing coordinates.
    """
    family, states = payload[:2]
    keep = payload[2] if len(payload) > 2 else None
    if family.stacks and not family.hard and len(states) > 1 and len({len(s.weights) for s in states}) == 1:
        mixtures = [(_stacked(states), len(states))]  # one set of GEMMs for all starts
    else:
        mixtures = [(state, 1) for state in states]
    work = Workspace()  # the slabs' temporaries, reused (see Workspace)
    caches = [{"work": work} if family.caches else None for _ in mixtures]
    dtype = _compute_dtype(X.dtype, family)
    n_components = max(len(m.weights) for m, _ in mixtures)
    step = slab_rows(n_components, X.shape[1], dtype.itemsize)
    if family.fused_slab_rows is not None and not family.hard:  # one compiled loop: longer slabs
        step = family.fused_slab_rows(n_components, X.shape[1], dtype, _floor(dtype)) or step
    totals = None
    counts = {"weight": 0.0, "n_rows": 0, "n_nonfinite": 0, "n_bad_weight": 0}
    gaps = None
    if family.marginalize:  # rows with gaps go to engine/marginal.py; the others stay below
        from dask_em.engine.marginal import split_gaps

        X, w, gaps = split_gaps(X, w)
        counts["missing"] = 0.0  # the (weighted) count of missing coordinates, of the rows with gaps
    for i in range(0, max(X.shape[0], 1), step):
        # rows are checked slab by slab: the check leaves the slab in the CPU's
        # caches for the kernels, instead of reading the whole block twice
        Xs, ws, slab_counts = _valid_slab(X[i : i + step], None if w is None else w[i : i + step], family)
        for key, value in slab_counts.items():
            counts[key] += value
        rows = {}
        slab = []
        for (mixture, groups), cache in zip(mixtures, caches):
            if cache is not None:
                cache["rows"] = rows
            slab += _estep_slab(Xs, ws, family, mixture, cache, groups, keep)
        if totals is None:
            totals = slab
        else:
            totals = [{key: t[key] + value for key, value in s.items()} for t, s in zip(totals, slab)]
    if gaps is not None:
        from dask_em.engine.marginal import add_gap_stats

        totals, counts = add_gap_stats(totals, counts, gaps, family, mixtures)
    for stats in totals:
        stats.update(counts)
    return totals


def _valid_slab(X, w, family):
    """The valid rows of a slab (see :func:`valid_rows`) in the family's compute
    dtype, their weights in float64, and the counts :func:`estep_block` reports."""
    mask, n_nonfinite, n_bad_weight = valid_rows(X, w)
    if not mask.all():
        X = X[mask]
        w = None if w is None else w[mask]
    X = _as_compute_dtype(X, family)
    w = None if w is None else as_float64(w)
    weight = float(X.shape[0] if w is None else w.sum())
    return X, w, {"weight": weight, "n_rows": X.shape[0], "n_nonfinite": n_nonfinite, "n_bad_weight": n_bad_weight}


def m_step(family, stats, state, options):
    """New :class:`MixtureState` from summed statistics: weights here, the rest by the family."""
    params = family.m_step(stats, state.params, **options)
    if family.mixing_weights is not None:
        return MixtureState(weights=family.mixing_weights(params), params=params)
    nk = stats["nk"] + _NK_EPS
    return MixtureState(weights=nk / nk.sum(), params=params)


#: Per-row outputs of :func:`score_block`.
OUTPUTS = ("labels", "proba", "score")


def rows_in_slabs(X, kernel, *, step, n_cols=None, dtype=np.float64, omit=False, fill=np.nan, what="predicting"):
    """Apply a per-row ``kernel`` to slabs of ``step`` rows, into one output array.

    Memory beyond the block and the output is that of one slab: no whole-block
    mask, copy or conversion. Rows with NaN or infinity are an error, or with
    ``omit`` are left out of the kernel's slab and get ``fill``.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    kernel : callable
        ``kernel(rows) -> ndarray (m,)`` or ``(m, n_cols)`` for finite ``rows`` (m, D).
    step : int
        Rows per slab.
    n_cols : int, optional
        Columns of the output; ``None`` for one value per row.
    dtype : dtype
        Of the output.
    omit : bool
        Fill rows with NaN / inf with ``fill`` instead of raising.
    fill : scalar
    what : str
        For the error message ("predicting").

    Returns
    -------
    ndarray of shape (n,) or (n, n_cols)

    Raises
    ------
    ValueError
        Without ``omit``, if the block holds NaN or infinite values (the message counts them).
    """
    n = X.shape[0]
    out = np.empty((n,) if n_cols is None else (n, n_cols), dtype=dtype)
    for i in range(0, n, max(int(step), 1)):
        slab = X[i : i + step]
        mask, n_bad, _ = valid_rows(slab)
        if not n_bad:
            out[i : i + step] = kernel(slab)
            continue
        if not omit:
            n_bad = sum(valid_rows(X[j : j + step])[1] for j in range(0, n, step))
            raise ValueError(
                f"X contains {n_bad} rows with NaN or infinite values in a block of {n} rows; "
                f"remove or impute them before {what}."
            )
        part = out[i : i + step]
        part[~mask] = fill
        if n_bad < slab.shape[0]:
            part[mask] = kernel(slab[mask])
    return out


def _score_slab(X, family, state, what):
    """:func:`score_block`'s result on finite rows."""
    wlp = weighted_log_prob(_as_compute_dtype(X, family), family, state)
    wlp = wlp.astype(np.float64, copy=False)  # results are float64 whatever the data
    if what == "labels":
        return np.argmax(wlp, axis=1)
    resp, row_ll = responsibilities(wlp, family.hard)
    return row_ll if what == "score" else resp


def score_block(X, payload, omit=False):
    """Per-row results for predict / predict_proba / score_samples on one block.

    Worked out in slabs of :func:`slab_rows` rows (see :func:`rows_in_slabs`), so
    memory beyond the block is that of the output and one slab.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    payload : tuple (family, MixtureState, what)
        ``what`` is ``"labels"`` (n,), ``"proba"`` (n, K) or ``"score"`` (n,).
    omit : bool
        Rows with NaN or infinity get label -1 (NaN for the other outputs)
        instead of raising (``nan_policy="omit"``).

    Raises
    ------
    ValueError
        If the block holds NaN or infinite values and not ``omit`` (the message counts them).
    """
    family, state, what = payload
    if what not in OUTPUTS:
        raise ValueError(f"Unknown output {what!r}; expected 'labels', 'proba' or 'score'.")
    K = len(state.weights)
    step = slab_rows(K, X.shape[1], _compute_dtype(X.dtype, family).itemsize)
    return rows_in_slabs(
        X,
        functools.partial(_score_slab, family=family, state=state, what=what),
        step=step,
        n_cols=K if what == "proba" else None,
        dtype=np.int64 if what == "labels" else np.float64,
        omit=omit,
        fill=-1 if what == "labels" else np.nan,
    )
