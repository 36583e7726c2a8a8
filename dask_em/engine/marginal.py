"""Rows with missing features: the E-step and the per-row outputs that marginalise them.

Under ``nan_policy="marginalize"`` a row whose non-finite values are all NaN, with at
least one feature observed, *has gaps*: its missing features are latent variables
too (Ghahramani & Jordan 1994). Its log-likelihood and responsibilities are those
of its observed features, and it adds to the statistics the expected statistics of
the complete row given the observed part and the component (the family's
:class:`~dask_em.families.MissingOps`).

Rows without NaN take the fast path of :func:`~dask_em.engine.estep.estep_block`
untouched: :func:`split_gaps` takes the rows with gaps out of a block (one GEMV
when the block has no NaN at all), and :func:`estep_gaps` handles them grouped by
their pattern of observed features, so that each pattern's conditional factors
are computed once per block for all components. Rows with every feature missing,
or with an infinite value, are still left out and counted (``n_nonfinite``).
"""

from dataclasses import replace

import numpy as np

from dask_em.engine.estep import log_tiny, log_weights, responsibilities, score_block, slab_rows


def marginalizing(family):
    """``family`` with its E-step marginalising missing features (``nan_policy="marginalize"``).

    Raises
    ------
    ValueError
        When the family has no math for missing features (``Family.missing``).
    """
    if family.missing is None:
        raise ValueError(
            f"nan_policy='marginalize' is not available for the {family.name!r} model yet; "
            f"use nan_policy='omit' to leave rows with NaN out of the fit."
        )
    return family if family.marginalize else replace(family, marginalize=True)


def gap_rows(X):
    """Mask (n,) of the rows with gaps: NaN the only non-finite value, one feature observed."""
    finite = np.isfinite(X)
    n_obs = np.count_nonzero(finite, axis=1)
    n_nan = np.count_nonzero(np.isnan(X), axis=1)
    return (n_obs > 0) & (n_obs < X.shape[1]) & (n_obs + n_nan == X.shape[1])


def split_gaps(X, w=None):
    """Take the rows with gaps out of a block.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    w : ndarray of shape (n,) or None

    Returns
    -------
    X_rest, w_rest
        The other rows (complete, or left out by the E-step's check); ``X`` itself
        when there is no row with gaps.
    gaps : tuple (X_gaps, w_gaps) or None
    """
    if X.shape[0] == 0:
        return X, w, None
    # a NaN or inf makes the row sum non-finite (one GEMV): only those rows are looked at
    suspects = np.flatnonzero(~np.isfinite(X @ np.ones(X.shape[1], dtype=X.dtype)))
    if suspects.size == 0:
        return X, w, None
    gap = np.zeros(X.shape[0], dtype=bool)
    gap[suspects] = gap_rows(X[suspects])
    if not gap.any():
        return X, w, None
    rest = ~gap
    return X[rest], None if w is None else w[rest], (X[gap], None if w is None else w[gap])


def patterns(X):
    """Rows grouped by their pattern of observed features.

    Returns
    -------
    list of (observed, rows)
        ``observed``: bool (D,); ``rows``: indices (increasing) of the rows with it.
    """
    observed = ~np.isnan(X)
    n, D = observed.shape
    if n == 0:
        return []
    if D <= 62:  # one integer per pattern: an integer sort, ~20x faster than rows of bools
        codes = observed @ (np.int64(1) << np.arange(D, dtype=np.int64))
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    else:
        keys, inverse = np.unique(observed, axis=0, return_inverse=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        starts = np.searchsorted(inverse.reshape(-1)[order], np.arange(keys.shape[0]))
    bounds = np.r_[starts, n]
    return [(observed[order[bounds[j]]], order[bounds[j] : bounds[j + 1]]) for j in range(starts.size)]


def _pattern_wlp(X, family, state, factors):
    """Weighted log-probs (n, K) of rows sharing one pattern (hard families: no weights)."""
    wlp = family.missing.log_prob(X, state.params, factors)
    if not family.hard:
        wlp += log_weights(family, state)
    return wlp


def estep_gaps(X, w, family, mixtures):
    """Statistics of the rows with gaps of one block, for several mixtures.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows with gaps (see :func:`gap_rows`).
    w : ndarray of shape (n,) or None
        Sample weights.
    family : Family
        With ``missing`` math.
    mixtures : list of (MixtureState, groups)
        As in :func:`~dask_em.engine.estep.estep_block`: ``groups`` mixtures of
        the same K may be stacked in one state.

    Returns
    -------
    stats : list of dict
        Per mixture (stacked ones split): the family's statistics, ``nk`` and
        ``loglik``, to add to those of the complete rows.
    counts : dict
        ``weight``, ``n_rows`` and ``n_bad_weight`` of these rows, and ``missing``
        their (weighted) number of missing coordinates.
    """
    X = np.asarray(X, dtype=np.float64)
    n_bad_weight = 0
    if w is not None:
        w = np.asarray(w, dtype=np.float64)
        bad = ~np.isfinite(w) | (w < 0)
        n_bad_weight = int(np.count_nonzero(bad))
        keep = ~bad & (w > 0)
        if not keep.all():
            X, w = X[keep], w[keep]
    n_missing = np.count_nonzero(np.isnan(X), axis=1)
    counts = {"weight": float(X.shape[0] if w is None else w.sum()), "n_rows": X.shape[0],
              "n_bad_weight": n_bad_weight,
              "missing": float(n_missing.sum() if w is None else n_missing @ w)}
    groups_of_rows = patterns(X)
    floor = 0.5 * log_tiny(np.float64)
    out = []
    for state, groups in mixtures:
        K = len(state.weights)
        step = slab_rows(K, X.shape[1])
        total = None
        for observed, rows in groups_of_rows:
            factors = family.missing.factors(state.params, observed)  # once per block and pattern
            for i in range(0, rows.size, step):
                part = rows[i : i + step]
                Xp = X[part]
                resp, row_ll = responsibilities(_pattern_wlp(Xp, family, state, factors), family.hard, floor,
                                                overwrite=True, groups=groups)
                resp = np.ascontiguousarray(resp)
                if w is not None:
                    resp *= w[part, None]
                    row_ll = row_ll * w[part]
                stats = family.missing.suff_stats(Xp, resp, state.params, factors)
                stats["loglik"] = np.atleast_1d(row_ll.sum(axis=-1, dtype=np.float64))
                total = stats if total is None else {key: total[key] + value for key, value in stats.items()}
        if total is None:  # no row with gaps survived the weights
            empty = family.missing.suff_stats(X[:0], np.zeros((0, K)), state.params,
                                              family.missing.factors(state.params, np.ones(X.shape[1], bool)))
            total = {**empty, "loglik": np.zeros(groups)}
        out += _split_groups(total, K, groups)
    return out, counts


def _split_groups(stats, K, groups):
    """Statistics of ``groups`` stacked mixtures, one dict each (as the E-step's slabs)."""
    loglik = stats.pop("loglik")
    if groups == 1:
        return [{**stats, "loglik": float(loglik[0])}]
    k = K // groups
    return [
        {**{key: value[g * k : (g + 1) * k] for key, value in stats.items()}, "loglik": float(loglik[g])}
        for g in range(groups)
    ]


def add_gap_stats(totals, counts, gaps, family, mixtures):
    """``totals`` (per mixture) and ``counts`` of a block with its rows with gaps added."""
    stats, gap_counts = estep_gaps(gaps[0], gaps[1], family, mixtures)
    totals = [{key: value + extra[key] for key, value in t.items()} for t, extra in zip(totals, stats)]
    for key, value in gap_counts.items():
        counts[key] += value
    return totals, counts


# --------------------------------------------------------------------------- per-row outputs
def _score_gaps(X, family, state):
    """Weighted log-probs (n, K) of rows with gaps, pattern by pattern."""
    wlp = np.empty((X.shape[0], len(state.weights)))
    for observed, rows in patterns(X):
        factors = family.missing.factors(state.params, observed)
        wlp[rows] = _pattern_wlp(X[rows], family, state, factors)
    return wlp


def score_block_marginal(X, payload):
    """As :func:`~dask_em.engine.estep.score_block`, rows with gaps scored on their
    observed features; rows with every feature missing, or an infinite value, get
    label -1 and NaN probabilities / scores.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    payload : tuple (family, MixtureState, what)

    Returns
    -------
    ndarray of shape (n,) or (n, K)
    """
    family, state, what = payload
    complete = np.isfinite(X).all(axis=1)
    if complete.all():
        return score_block(X, payload)
    K = len(state.weights)
    if what == "labels":
        out = np.full(X.shape[0], -1, dtype=np.int64)
    else:
        out = np.full((X.shape[0],) + ((K,) if what == "proba" else ()), np.nan)
    if complete.any():
        out[complete] = score_block(X[complete], payload)
    gap = gap_rows(X)
    if gap.any():
        wlp = _score_gaps(np.asarray(X[gap], dtype=np.float64), family, state)
        if what == "labels":
            out[gap] = np.argmax(wlp, axis=1)
        else:
            resp, row_ll = responsibilities(wlp, family.hard)
            out[gap] = resp if what == "proba" else row_ll
    return out


def impute_block(X, payload):
    """Rows with each NaN replaced by its conditional expectation under the mixture.

    For a row with gaps, ``sum_k p(k | x_o) E[x_m | x_o, k]``; for a row with every
    feature missing, the mixture's mean ``sum_k pi_k E[x | k]``. Complete rows, and
    rows with an infinite value, are returned as they are. Hard families (K-means)
    fill a row with gaps from the centre nearest over its observed features, and
    leave a row with every feature missing as it is (no centre is nearer than another).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    payload : tuple (family, MixtureState)

    Returns
    -------
    ndarray of shape (n, D), float64
    """
    family, state = payload
    out = np.array(X, dtype=np.float64)
    if out.shape[0] == 0 or not np.isnan(out).any():
        return out
    gap = gap_rows(out)
    for observed, rows in patterns(out[gap]):
        idx = np.flatnonzero(gap)[rows]
        factors = family.missing.factors(state.params, observed)
        resp, _ = responsibilities(_pattern_wlp(out[idx], family, state, factors), family.hard)
        out[np.ix_(idx, np.flatnonzero(~observed))] = family.missing.expect(out[idx], resp, state.params, factors)
    empty = np.isnan(out).all(axis=1)
    if empty.any() and not family.hard:
        D = out.shape[1]
        observed = np.zeros(D, dtype=bool)
        factors = family.missing.factors(state.params, observed)
        weights = np.exp(log_weights(family, state))
        weights = weights / weights.sum()
        mean = family.missing.expect(out[:1], weights[None, :], state.params, factors)
        out[empty] = mean
    return out
