"""Testing helpers: a conformance suite for component families (:func:`check_family`)
and a Zarr store that counts chunk reads (:class:`CountingStore`).

Every built-in family passes it (``tests/test_check_family.py``); a user who writes
a family (see :class:`dask_em.families.Family`) can run it on theirs::

    from dask_em.testing import check_family
    check_family(my_family, true_params, reference=my_scipy_log_pdf)
"""

import collections
import os
import threading
import weakref

import dask.array as da
import numpy as np

from dask_em.engine import MixtureState, add_stats, run_em


def _arrays(value):
    if hasattr(value, "arrays"):
        return [np.asarray(a, dtype=np.float64) for a in value.arrays()]
    return [np.asarray(value, dtype=np.float64)]


def _assert_close(name, got, want, rtol, atol=0.0):
    for g, w in zip(_arrays(got), _arrays(want)):
        if g.shape != w.shape or not np.allclose(g, w, rtol=rtol, atol=atol):
            err = np.max(np.abs(g - w)) if g.shape == w.shape else f"shapes {g.shape} vs {w.shape}"
            raise AssertionError(f"check_family: {name} (max abs difference {err}).")


def _compare_params(name, got, want, keys, tol):
    for key in keys:
        w = np.asarray(want[key], dtype=np.float64)
        _assert_close(f"{name}: parameter {key!r}", got[key], w, rtol=tol, atol=tol * max(np.abs(w).max(), 1e-12))


def _stats(family, X, resp, params):
    stats = family.suff_stats(X, resp, params)
    stats["nk"] = resp.sum(axis=0)
    return stats


def check_family(
    family,
    params,
    *,
    reference=None,
    X=None,
    labels=None,
    weights=None,
    options=None,
    compare=None,
    n_samples=20_000,
    recover_tol=0.1,
    seed=0,
):
    """Check that ``family`` fulfils the contract the engine relies on.

    Checks, in order (an ``AssertionError`` names the first that fails):

    1. ``sample`` draws ``counts[k]`` rows from component ``k`` (skipped when the
       family refuses to sample; then give ``X`` and ``labels``).
    2. ``log_prob`` has shape (n, K) and agrees with ``reference`` (an independent
       implementation, e.g. scipy.stats) to 1e-10. For a family that
       ``takes_offset``, ``log_prob(X, params, offset=o)`` is ``log_prob(X, params) + o``.
    3. Additivity: statistics of ``X[:m]`` plus those of ``X[m:]`` equal those of
       ``X`` (random responsibilities).
    4. Shift invariance: the M-step of statistics taken around the true parameters
       and around other parameters (the M-step's result as reference) agree to 1e-8,
       i.e. shifted statistics are corrected exactly.
    5. Re-centring (families with ``recentre``): statistics about the true
       parameters, moved to other parameters, equal those taken about the other
       parameters (1e-9 of the largest of them), for every array statistic, and
       give the same M-step (1e-8).
    6. The M-step of the statistics of ``X`` under its true labels recovers
       ``params`` (within ``recover_tol``, relative).
    7. Sample then fit: EM on ``X`` as a chunked dask array, through the engine,
       from a perturbed start, recovers ``params`` (within ``recover_tol``).

    Parameters
    ----------
    family : Family
        The family to check.
    params : dict
        True component parameters (K components); components should be well
        separated so that check 7 is meaningful.
    reference : callable, optional
        ``reference(X, params) -> ndarray (n, K)``, an independent log-density.
    X, labels : ndarray of shape (n, D) and (n,), optional
        Data and true components, instead of sampling from ``params``.
    weights : ndarray of shape (K,), optional
        Mixing weights for sampling (uniform by default).
    options : dict, optional
        Keyword arguments of ``family.m_step``.
    compare : list of str, optional
        Parameter keys compared in checks 6 and 7 (default: all keys of ``params``).
    n_samples : int
        Rows sampled from ``params`` (when ``X`` is not given).
    recover_tol : float
        Tolerance, relative to each parameter's largest value, of checks 6 and 7.
    seed : int
        Seed of the sampling and of the checks' random draws.

    Returns
    -------
    list of str
        Names of the checks that ran.
    """
    options = options or {}
    rng = np.random.default_rng(seed)
    ran = []
    K = _n_components(family, params)
    w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    if X is None:
        counts = rng.multinomial(n_samples, w)
        X = np.asarray(family.sample(params, counts, rng), dtype=np.float64)
        labels = np.repeat(np.arange(K), counts)
        if X.shape[0] != n_samples or not np.all(np.isfinite(X)):
            raise AssertionError(f"check_family: sample returned shape {X.shape} or non-finite values.")
        ran.append("sample")
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    compare = list(params) if compare is None else compare

    lp = family.log_prob(X, params)
    if lp.shape != (X.shape[0], K):
        raise AssertionError(f"check_family: log_prob returned shape {lp.shape}, expected {(X.shape[0], K)}.")
    if reference is not None:
        _assert_close("log_prob against the reference", lp, reference(X, params), rtol=1e-10, atol=1e-10)
        ran.append("log_prob-reference")
    if family.takes_offset:
        offset = np.log(rng.dirichlet(np.ones(K)))
        _assert_close("log_prob with an offset", family.log_prob(X, params, offset=offset), lp + offset,
                      rtol=1e-10, atol=1e-10)
        ran.append("log_prob-offset")

    resp = rng.dirichlet(np.ones(K), size=X.shape[0])
    whole = _stats(family, X, resp, params)
    m = X.shape[0] // 3
    parts = add_stats([_stats(family, X[:m], resp[:m], params), _stats(family, X[m:], resp[m:], params)])
    for key in whole:
        _assert_close(f"additivity of statistic {key!r} over row blocks", parts[key], whole[key], rtol=1e-9, atol=1e-9)
    ran.append("additivity")

    onehot = np.zeros((X.shape[0], K))
    onehot[np.arange(X.shape[0]), labels] = 1.0
    exact = family.m_step(_stats(family, X, onehot, params), params, **options)
    other = family.m_step(_stats(family, X, resp, params), params, **options)
    again = family.m_step(_stats(family, X, onehot, other), other, **options)
    _compare_params("shift invariance of the M-step", again, exact, exact.keys(), 1e-8)
    ran.append("shift-invariance")
    if family.recentre is not None:
        about_true = _stats(family, X, resp, params)
        moved = family.recentre(about_true, params, other)
        direct = _stats(family, X, resp, other)
        for key, value in direct.items():
            if isinstance(value, np.ndarray):
                # sums about a point near the means nearly cancel: compare on the
                # scale of the largest of the statistics involved
                scale = max(np.abs(value).max(), np.abs(about_true[key]).max(), 1.0)
                _assert_close(f"recentre of statistic {key!r}", moved[key], value, rtol=1e-9, atol=1e-9 * scale)
        _compare_params("M-step of re-centred statistics", family.m_step(moved, other, **options),
                        family.m_step(direct, other, **options), other.keys(), 1e-8)
        ran.append("recentre")
    _compare_params("M-step of the true-label statistics", exact, params, compare, recover_tol)
    ran.append("m-step-recovers")

    start_resp = 0.8 * onehot + 0.2 * resp
    start = MixtureState(start_resp.mean(axis=0), family.m_step(_stats(family, X, start_resp, params), params, **options))
    Xd = da.from_array(X, chunks=(max(1, X.shape[0] // 5), -1))
    (res,) = run_em(Xd, family, [start], tol=1e-8, max_iter=200, options=options)
    _compare_params("sample-then-fit", res.state.params, params, compare, recover_tol)
    if not family.hard:
        _assert_close("sample-then-fit: mixing weights", res.state.weights, np.bincount(labels, minlength=K) / len(labels),
                      rtol=0, atol=recover_tol)
    ran.append("sample-then-fit")
    return ran


def _n_components(family, params):
    first = params["means"] if "means" in params else next(iter(params.values()))
    return int(np.shape(first)[0])


# --------------------------------------------------------------------------- chunk reads
#: Names of the Zarr metadata documents (formats 2 and 3); every other key is a chunk.
ZARR_METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def is_chunk_key(key):
    """Whether a Zarr store key names a chunk (or shard), not a metadata document."""
    return key.rsplit("/", 1)[-1] not in ZARR_METADATA_KEYS


#: Live counters by id, so that a counter pickled and unpickled in the same process
#: (a ``distributed`` cluster with worker threads serialises its tasks) is the same one.
_COUNTERS = weakref.WeakValueDictionary()


def _counter_by_id(key):
    try:
        return _COUNTERS[key]
    except KeyError:
        raise RuntimeError(
            "A ChunkReadCounter was unpickled in another process: chunk reads are counted in the "
            "process that made it only. Use dask's threaded scheduler or LocalCluster(processes=False)."
        ) from None


class ChunkReadCounter:
    """Thread-safe tally of reads per chunk key (shared by a store and its copies).

    Pickled and unpickled in the same process it stays the same counter, so it also
    counts on a ``distributed.LocalCluster(processes=False)``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reads = collections.Counter()
        _COUNTERS[id(self)] = self

    def __reduce__(self):
        return _counter_by_id, (id(self),)

    def record(self, key):
        if is_chunk_key(key):
            with self._lock:
                self._reads[key] += 1

    @property
    def reads(self):
        """``collections.Counter``: reads of each chunk key so far (a copy)."""
        with self._lock:
            return collections.Counter(self._reads)

    @property
    def n_reads(self):
        """Chunk reads so far, all keys together."""
        with self._lock:
            return sum(self._reads.values())

    def reset(self):
        with self._lock:
            self._reads.clear()


def _zarr_store_base():
    try:
        from zarr.storage import WrapperStore
    except ImportError:  # zarr 2 has no store wrappers
        return None
    return WrapperStore


_WrapperStore = _zarr_store_base()

if _WrapperStore is not None:

    class CountingStore(_WrapperStore):
        """A Zarr (zarr-python 3) store that counts the reads of every chunk key.

        Wrap the store of an array on disk, read it through dask, and count the
        passes over it: ``store.passes(array)`` is the number of chunk reads divided
        by the array's number of chunks. Every request for a chunk counts (``get``,
        ``get_partial_values``, batched reads), metadata documents do not.
        Reads are counted in this process: use dask's threaded or synchronous
        scheduler (a ``distributed`` worker reads from its own copy).

        Parameters
        ----------
        store : zarr.abc.store.Store or str or os.PathLike
            The store to wrap; a path opens a :class:`zarr.storage.LocalStore`.
        read_only : bool, optional
            For a path: open the directory read-only (the default).

        Examples
        --------
        >>> store = CountingStore("data.zarr")                      # doctest: +SKIP
        >>> X = da.from_zarr(zarr.open_array(store, mode="r"))      # doctest: +SKIP
        >>> X.sum().compute(); store.passes(X.numblocks[0])         # doctest: +SKIP
        1.0
        """

        def __init__(self, store, read_only=True, *, counter=None):
            if isinstance(store, (str, os.PathLike)):
                from zarr.storage import LocalStore

                store = LocalStore(os.fspath(store), read_only=read_only)
            super().__init__(store)
            self.counter = ChunkReadCounter() if counter is None else counter

        def _with_store(self, store):
            return type(self)(store, counter=self.counter)

        def __repr__(self):
            return f"CountingStore({self._store!r}, chunk reads={self.counter.n_reads})"

        async def get(self, key, prototype, byte_range=None):
            self.counter.record(key)
            return await self._store.get(key, prototype, byte_range)

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                self.counter.record(key)
            return await self._store.get_partial_values(prototype, key_ranges)

        async def _get_many(self, requests):
            requests = list(requests)
            for key, *_ in requests:
                self.counter.record(key)
            async for item in self._store._get_many(requests):
                yield item

        @property
        def chunk_reads(self):
            """``collections.Counter``: reads of each chunk key so far."""
            return self.counter.reads

        @property
        def n_chunk_reads(self):
            """Chunk reads so far."""
            return self.counter.n_reads

        def passes(self, n_chunks):
            """Chunk reads so far divided by ``n_chunks`` (an int, or a ``zarr.Array``
            whose ``nchunks`` is used): the passes over an array read whole each time."""
            n = int(getattr(n_chunks, "nchunks", n_chunks))
            if n < 1:
                raise ValueError(f"n_chunks must be a positive number of chunks, got {n_chunks!r}.")
            return self.counter.n_reads / n

        def reset(self):
            """Forget the reads counted so far."""
            self.counter.reset()

else:  # pragma: no cover - zarr 2

    class CountingStore:
        """Needs zarr-python 3 (``zarr.storage.WrapperStore``)."""

        def __init__(self, *args, **kwargs):
            raise ImportError("CountingStore needs zarr-python >= 3; upgrade with `pip install -U zarr`.")


__all__ = ["ChunkReadCounter", "CountingStore", "check_family", "is_chunk_key"]
