"""A uniform (or weighted) random sample of rows, gathered in one pass.

:func:`sample_rows` keeps the rows with the ``n`` smallest random keys (bottom-k
sampling). A row's key depends only on the seed, its global row index and its
weight, never on the chunking or on the order blocks are read in, so the same
data, seed and size give the same sample whatever the chunks.

Keys
    ``v``, a uniform number in [0, 1) from a counter-based hash (splitmix64) of the
    seed and the row index. Without weights the key is ``v``. With sample weights it
    is ``E / w`` where ``E = -log(1 - v)`` is a standard exponential: the smallest
    keys are then an Efraimidis-Spirakis weighted sample without replacement
    (``u ** (1 / w)`` largest is the same order). Ties are broken by the row index.

Each block keeps its own ``n + 1`` smallest keys, and a tree of combines keeps the
``n + 1`` smallest of those: one ``run_pass``, one ``dask.compute``. The ``n + 1``-th
key is the threshold ``tau`` (in the exponential scale): a row of weight ``w`` was
kept with probability ``1 - exp(-w tau)`` given the others (Cohen & Kaplan 2007,
rank conditioning), so :func:`estimation_weights` gives each kept row the weight
that makes sums over the sample unbiased estimates of sums over the data.

Memory: a block is read in slabs (:func:`_sample_block` needs ``O(n + slab)``
beside the block, whatever its size); a block's partial result holds at most
``n + 1`` of its rows in the data's dtype; a combine takes as many partial results
as fit in a quarter of a block (:func:`sample_split_every`); and the final sample is
float64, capped at ``max_bytes``.
"""

import logging
import math

import numpy as np

from dask_em.engine.estep import valid_rows
from dask_em.engine.passes import run_pass, split_every_default

logger = logging.getLogger(__name__)

#: Most bytes the float64 sample of :func:`sample_rows` may take by default.
SAMPLE_MAX_BYTES = 256 * 2**20
#: Bytes of a block checked for NaN / inf at once inside the block kernel.
_SLAB_BYTES = 16 * 2**20
#: Rows hashed at once: the hash's work arrays stay in the CPU's caches.
_HASH_ROWS = 2**16

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# --------------------------------------------------------------------------- keys
def seed_state(seed):
    """The 64-bit hash state of a non-negative integer ``seed`` (via ``SeedSequence``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint64)[0]


def row_uniforms(state, start, n):
    """Uniform numbers in [0, 1), one per global row ``start, ..., start + n - 1``.

    splitmix64 of ``state + (index + 1) * golden`` (Steele et al. 2014); its top 53
    bits make the float. A pure function of ``(state, index)``: any block of rows
    gets the same numbers. Computed in slabs of :data:`_HASH_ROWS` rows with
    reused buffers (about 9 ns per row).

    Parameters
    ----------
    state : numpy.uint64
        From :func:`seed_state`.
    start, n : int

    Returns
    -------
    ndarray of shape (n,), float64
    """
    out = np.empty(n)
    if n == 0:
        return out
    step = min(n, _HASH_ROWS)
    z, tmp = np.empty(step, dtype=np.uint64), np.empty(step, dtype=np.uint64)
    ramp = np.arange(step, dtype=np.uint64)
    ramp *= _GOLDEN  # wraps modulo 2**64, as splitmix64 does
    for i in range(0, n, step):
        m = min(step, n - i)
        zs, ts = z[:m], tmp[:m]
        # state + (start + i + 1 + j) * golden, modulo 2**64
        np.add(ramp[:m], np.uint64((int(state) + (start + i + 1) * int(_GOLDEN)) % 2**64), out=zs)
        np.right_shift(zs, np.uint64(30), out=ts)
        zs ^= ts
        zs *= _MIX1
        np.right_shift(zs, np.uint64(27), out=ts)
        zs ^= ts
        zs *= _MIX2
        np.right_shift(zs, np.uint64(31), out=ts)
        zs ^= ts
        zs >>= np.uint64(11)
        np.multiply(zs, 2.0**-53, out=out[i : i + m])
    return out


def _smallest(keys, index, m):
    """Positions (increasing) of the ``m`` smallest finite ``keys``, ties at the
    boundary going to the smaller ``index``: a total order, so the same rows are
    kept whatever the grouping. Linear time; nothing is sorted."""
    cand = np.flatnonzero(keys < np.inf)
    if cand.size <= m:
        return cand
    kth = np.partition(keys[cand], m - 1)[m - 1]
    below = cand[keys[cand] < kth]
    tied = cand[keys[cand] == kth]
    if below.size + tied.size > m:  # rare: equal keys across the boundary
        tied = tied[np.argsort(index[tied], kind="stable")[: m - below.size]]
    return np.sort(np.concatenate([below, tied]))


def _by_key(keys, index):
    """Order of the rows by (key, index).

    Keys are 53-bit hashes, so equal keys are rare: a plain sort orders them, and only
    when two are equal does the (slower, ~7x) two-key sort break the tie by index.
    """
    order = np.argsort(keys)
    ordered = keys[order]
    if np.any(ordered[1:] == ordered[:-1]):
        return np.lexsort((index, keys))
    return order


# --------------------------------------------------------------------------- the pass
def _slab_steps(X, m):
    """Rows of a block whose keys are drawn at once (at least ``m``, so that the
    running selection of ``m`` rows costs no more than the keys drawn beside it),
    and rows checked for NaN / inf at once (at most :data:`_SLAB_BYTES` of data)."""
    key_step = max(m, _HASH_ROWS)
    check = max(1024, _SLAB_BYTES // max(X.shape[1] * X.dtype.itemsize, 1))
    return min(check, key_step), key_step


def _sample_block(X, w, payload, index):
    """The ``m`` rows of one block with the smallest keys, and the block's row counts.

    ``payload`` is ``(state, m, starts)``: the hash state, how many rows to keep, and
    the global index of the first row of every block. The block is read in slabs:
    each slab's keys are drawn, its rows checked for NaN / inf, and the ``m``
    smallest keys seen so far kept; memory beyond the block is ``O(m + slab)``,
    whatever the block's size. Only the kept rows are copied.
    """
    state, m, starts = payload
    n, start = X.shape[0], int(starts[index])
    check_step, key_step = _slab_steps(X, m)
    best_keys, best_pos = np.empty(0), np.empty(0, dtype=np.int64)
    counts = {"n_rows": 0, "n_nonfinite": 0, "n_bad_weight": 0}
    for i in range(0, n, key_step):
        size = min(key_step, n - i)
        keys = row_uniforms(state, start + i, size)
        ws = None if w is None else np.asarray(w[i : i + size], dtype=np.float64)
        if ws is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                # exponential race, Exp(w) keys; 1 - v is exact on the 2**-53 grid
                np.subtract(1.0, keys, out=keys)
                np.log(keys, out=keys)
                keys /= -ws
        for j in range(0, size, check_step):
            part = slice(j, j + check_step)
            mask, n_nonfinite, n_bad_weight = valid_rows(X[i + j : i + j + check_step], None if ws is None else ws[part])
            keys[part][~mask] = np.inf
            counts["n_rows"] += int(np.count_nonzero(mask))
            counts["n_nonfinite"] += n_nonfinite
            counts["n_bad_weight"] += n_bad_weight
        # positions increase along the block, so they break ties as the global index does
        keys = np.concatenate([best_keys, keys])
        pos = np.concatenate([best_pos, np.arange(i, i + size, dtype=np.int64)])
        keep = _smallest(keys, pos, m)
        best_keys, best_pos = keys[keep], pos[keep]
    whole = best_pos.size == n  # every row kept, in order: no copy
    return {
        "rows": X if whole else X[best_pos],
        "keys": best_keys,
        "index": best_pos + start,
        "weights": None if w is None else (w if whole else np.asarray(w)[best_pos]),
        "m": m,
        **counts,
    }


def _combine_samples(parts):
    """Keep the ``m`` smallest keys of several partial samples (associative).

    The kept rows are copied once, straight into the result.
    """
    m = parts[0]["m"]
    keys = np.concatenate([p["keys"] for p in parts])
    index = np.concatenate([p["index"] for p in parts])
    keep = _smallest(keys, index, m)
    counts = {key: sum(p[key] for p in parts) for key in ("n_rows", "n_nonfinite", "n_bad_weight")}
    if keep.size == keys.size:  # every row kept (small data): the parts joined as they are
        weights = None if parts[0]["weights"] is None else np.concatenate([p["weights"] for p in parts])
        rows = np.concatenate([p["rows"] for p in parts])
        return {"rows": rows, "keys": keys, "index": index, "m": m, "weights": weights, **counts}
    # gather each part's kept rows from the part itself: one copy of the kept rows
    bounds = np.cumsum([0] + [len(p["keys"]) for p in parts])
    cuts = np.searchsorted(keep, bounds)
    local = [keep[cuts[j] : cuts[j + 1]] - bounds[j] for j in range(len(parts))]
    width = parts[0]["rows"].shape[1]
    rows = np.empty((keep.size, width), dtype=np.result_type(*[p["rows"] for p in parts]))
    at = 0
    for p, loc in zip(parts, local):
        target = rows[at : at + loc.size]
        if p["rows"].dtype == rows.dtype:  # no temporary copy ("clip": the indices are valid)
            np.take(p["rows"], loc, axis=0, out=target, mode="clip")
        else:
            target[...] = p["rows"][loc]
        at += loc.size
    out = {"rows": rows, "keys": keys[keep], "index": index[keep], "weights": None, "m": m, **counts}
    if parts[0]["weights"] is not None:
        out["weights"] = np.concatenate([np.asarray(p["weights"])[loc] for p, loc in zip(parts, local)])
    return out


def sample_split_every(X, n_keep, split_every=None):
    """Fan-in of the sample's tree of combines.

    A combine holds its inputs' kept rows at once, so it takes as many as fit in a
    quarter of a row block: at least 2, at most ``split_every`` (the pass's
    default when None). A worker then needs little more memory for a combine
    than for reading a block.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
    n_keep : int
        Rows a partial sample keeps (``n + 1``).
    split_every : int, optional
    """
    most = split_every or split_every_default()
    block_rows = max(X.chunks[0], default=1)
    part_rows = max(min(n_keep, block_rows), 1)
    return int(max(2, min(most, block_rows // (4 * part_rows))))


def _check_input(X, sample_weight):
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D dask array (rows, features), got {X.ndim} dimensions.")
    if X.numblocks[1] != 1:
        raise ValueError(
            f"X has {X.numblocks[1]} chunks along the feature axis; call X.rechunk({{1: -1}}) "
            f"so that every block holds whole rows."
        )
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            "X has unknown chunk sizes along the rows (after boolean indexing?); "
            "call X.compute_chunk_sizes() first: the sample needs each row's global index."
        )
    if sample_weight is not None and tuple(sample_weight.shape) != (X.shape[0],):
        raise ValueError(
            f"sample_weight has shape {tuple(sample_weight.shape)}, expected ({X.shape[0]},)."
        )


def sample_size(n_rows, n_features, max_bytes=SAMPLE_MAX_BYTES):
    """``n_rows``, lowered so that the float64 sample (n_rows, n_features) fits in ``max_bytes``."""
    cap = max(1, int(max_bytes) // (8 * max(int(n_features), 1)))
    return int(min(int(n_rows), cap))


def sample_rows(
    X, n_rows, seed, sample_weight=None, max_bytes=SAMPLE_MAX_BYTES, *, split_every=None, return_index=False
):
    """A random sample of the rows of ``X``, in one pass (one ``dask.compute``).

    Rows are kept without replacement: uniformly, or with sample weights as an
    Efraimidis-Spirakis weighted sample (a row of weight 3 is about three times as
    likely to be kept as one of weight 1 while the sample is a small part of the
    data). Rows with a NaN or infinite value, and rows of weight 0 (or of a
    negative or non-finite weight) are never kept; they are counted.

    The sample depends on the data, ``seed``, ``n_rows`` and the weights only: not
    on the chunking of ``X``, the scheduler or the order blocks are read in.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked (one chunk along the features), with known chunk sizes.
    n_rows : int
        Rows wanted; fewer when ``X`` has fewer valid rows, or when ``n_rows`` rows
        of float64 would exceed ``max_bytes``.
    seed : int
        Non-negative.
    sample_weight : dask.array.Array of shape (N,), optional
        Row weights (rechunked like the rows of ``X``).
    max_bytes : int, optional
        Cap on the size of the float64 sample (256 MiB by default).
    split_every : int, optional
        Largest fan-in of the tree of combines (see :func:`sample_split_every`).
    return_index : bool, optional
        Also return the global row index of every sampled row.

    Returns
    -------
    rows : ndarray of shape (n, D), float64
        The sampled rows, in the order of their keys (a random order: its first
        ``m`` rows are the sample of size ``m``).
    weights : ndarray of shape (n,) or None
        The sample weights of the sampled rows; ``None`` without ``sample_weight``.
        :func:`estimation_weights` turns them into estimation weights.
    counts : dict
        ``n_rows`` (valid rows in ``X``: finite, positive weight), ``n_nonfinite``,
        ``n_bad_weight`` (as an E-step reports them, for a fit's ``check``),
        ``n_sample`` (rows in the sample) and ``threshold`` (the rank-conditioning
        threshold in the exponential scale; ``inf`` when every valid row was kept).
    index : ndarray of shape (n,), int64
        Only with ``return_index``: the rows' positions in ``X``.
    """
    _check_input(X, sample_weight)
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise ValueError(f"n_rows must be a positive int, got {n_rows!r}.")
    n = sample_size(n_rows, X.shape[1], max_bytes)
    if n < n_rows:
        logger.info("sample of %d rows capped to %d rows (%d bytes)", n_rows, n, max_bytes)
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(np.int64)
    payload = (seed_state(seed), n + 1, starts)  # one more: the threshold
    res = run_pass(
        X,
        _sample_block,
        payload,
        name="sample-rows",
        combine=_combine_samples,
        extra=sample_weight,
        split_every=sample_split_every(X, n + 1, split_every),
    )
    order = _by_key(res["keys"], res["index"])
    keys = res["keys"][order]
    threshold = math.inf
    if keys.size > n:
        threshold = float(keys[n])
        if sample_weight is None:
            threshold = float(-np.log(1.0 - threshold))
    keep = order[:n]
    rows = res["rows"]
    rows = np.take(rows, keep, axis=0) if rows.dtype == np.float64 else rows[keep].astype(np.float64)
    weights = None if res["weights"] is None else np.asarray(res["weights"][keep], dtype=np.float64)
    counts = {key: res[key] for key in ("n_rows", "n_nonfinite", "n_bad_weight")}
    counts.update(n_sample=rows.shape[0], threshold=threshold)
    logger.debug("sampled %d of %d valid rows (threshold %.4g)", rows.shape[0], counts["n_rows"], threshold)
    if return_index:
        return rows, weights, counts, res["index"][keep]
    return rows, weights, counts


def estimation_weights(weights, threshold):
    """Weights that make sums over a sample of :func:`sample_rows` estimate sums over
    the data: ``w / (1 - exp(-w tau))``, the row's weight over its probability of
    being kept given the threshold ``tau`` (rank conditioning, Cohen & Kaplan 2007).

    Parameters
    ----------
    weights : ndarray of shape (n,) or None
        The sampled rows' sample weights (``None``: all 1).
    threshold : float
        ``counts["threshold"]`` of :func:`sample_rows`; ``inf`` when all rows were kept.

    Returns
    -------
    ndarray of shape (n,) or None
        ``None`` for an unweighted sample: its estimation weights are all equal.
    """
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if math.isinf(threshold):
        return w.copy()
    return w / -np.expm1(-w * threshold)


__all__ = ["SAMPLE_MAX_BYTES", "estimation_weights", "row_uniforms", "sample_rows", "sample_size", "seed_state"]
