"""Starting points for EM, computed with a few passes over chunked data.

Methods (``init_params`` of the estimators):

``"kmeans"``
    k-means|| seeding (Bahmani et al., 2012: ``rounds`` passes, each sampling about
    ``oversampling * K`` rows with probability proportional to their squared
    distance to the current candidates), a pass weighting the candidates, weighted
    k-means++ on the candidates in memory, then up to ``LLOYD_MAX_ITER`` Lloyd
    passes; finally one pass computes weights and component parameters from the
    hard assignment. ``rounds + LLOYD_MAX_ITER + 3`` passes at most.
``"k-means++"``
    k-means++ on a uniform sample of ``max(10_000, 100 K)`` rows (one pass), then the
    assignment pass. 2 passes.
``"random_from_data"``
    K rows drawn uniformly (one pass), then the assignment pass. 2 passes.
``"random"``
    Random responsibilities (as scikit-learn); one pass for a shift reference, one
    for the statistics. 2 passes.

Every pass serves all ``n_init`` starting points at once. Sampling draws random
numbers per block from ``(seed, block index)``, so results do not depend on the
scheduler or the order blocks are processed in (they do depend on the chunking).

:func:`dask_em.sample_init.initialize_from_sample` is the one-pass alternative:
one pass gathers a sample (:func:`dask_em.sampling.sample_rows`, independent of
the chunking), and the whole initialisation of every start, any method, runs in
memory on the sample, optionally followed by a few EM iterations there that rank
the starts. One pass whatever ``n_init``.
"""

import logging

import numpy as np

from dask_em._math import as_float64
from dask_em.engine import MixtureState, run_em, run_pass
from dask_em.engine.estep import valid_rows
from dask_em.families import get_family

logger = logging.getLogger(__name__)

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
KMEANS_PARALLEL_ROUNDS = 5
KMEANS_OVERSAMPLING = 2.0
LLOYD_MAX_ITER = 10
KMEANSPP_SAMPLE = 10_000


# --------------------------------------------------------------------------- kernels
def min_sq_dist(X, centers):
    """Squared distance of each row of ``X`` (n, D) to its nearest centre, and its index.

    Both are shifted by ``centers[0]`` first, so data far from the origin keep precision.
    """
    ref = centers[0]
    Xc, Cc = X - ref, centers - ref
    d2 = np.einsum("ij,ij->i", Xc, Xc)[:, None] - 2.0 * (Xc @ Cc.T)
    d2 += np.einsum("ij,ij->i", Cc, Cc)[None, :]
    idx = np.argmin(d2, axis=1)
    return np.maximum(d2[np.arange(X.shape[0]), idx], 0.0), idx


def _top(keys, m):
    if keys.size <= m:
        return np.arange(keys.size)
    return np.argpartition(-keys, m - 1)[:m]


def _sample_block(X, w, jobs, index):
    """Per job ``(seed, m, centers)``: the ``m`` rows with the largest random keys.

    ``centers is None``: key ``u`` (a uniform sample). Otherwise key ``d2 / u`` with
    ``d2`` the squared distance to the nearest centre: a row is kept by k-means||
    with probability ``min(1, l d2 / phi)`` exactly when ``d2 / u > phi / l``.
    With sample weights ``w`` the keys are ``u ** (1 / w)`` and ``w d2 / u``, and
    rows of weight zero are left out.
    """
    mask, n_nonfinite, n_bad_weight = valid_rows(X, w)
    Xf = as_float64(X[mask])
    wf = None if w is None else as_float64(w[mask])
    out = []
    for seed, m, centers in jobs:
        rng = np.random.default_rng([seed, index])
        u = 1.0 - rng.random(Xf.shape[0])  # in (0, 1]
        if centers is None:  # weighted: Efraimidis-Spirakis keys u ** (1 / w)
            keys, cost = (u if wf is None else u ** (1.0 / wf)), 0.0
        else:
            d2, _ = min_sq_dist(Xf, centers)
            if wf is not None:
                d2 = d2 * wf
            keys, cost = d2 / u, float(d2.sum())
        top = _top(keys, m)
        out.append(
            {
                "rows": Xf[top],
                "keys": keys[top],
                "m": m,
                "cost": cost,
                "n_rows": int(Xf.shape[0]),
                "n_nonfinite": n_nonfinite,
                "n_bad_weight": n_bad_weight,
            }
        )
    return out


def _combine_samples(parts):
    out = []
    for j in range(len(parts[0])):
        ps = [p[j] for p in parts]
        rows = np.concatenate([p["rows"] for p in ps])
        keys = np.concatenate([p["keys"] for p in ps])
        top = _top(keys, ps[0]["m"])
        out.append(
            {
                "rows": rows[top],
                "keys": keys[top],
                "m": ps[0]["m"],
                "cost": sum(p["cost"] for p in ps),
                "n_rows": sum(p["n_rows"] for p in ps),
                "n_nonfinite": sum(p["n_nonfinite"] for p in ps),
                "n_bad_weight": sum(p["n_bad_weight"] for p in ps),
            }
        )
    return out


def _count_block(X, w, candidate_sets, index):
    """How many rows (total weight) have each candidate as their nearest, per candidate set."""
    mask, _, _ = valid_rows(X, w)
    Xf = as_float64(X[mask])
    wf = None if w is None else as_float64(w[mask])
    out = []
    for cands in candidate_sets:
        _, idx = min_sq_dist(Xf, cands)
        counts = np.bincount(idx, weights=wf, minlength=len(cands))
        out.append({"counts": counts.astype(np.float64)})
    return out


def _assign_block(X, w, payload, index):
    """Statistics of the family under hard (nearest centre) or random responsibilities."""
    family, jobs = payload
    mask, n_nonfinite, n_bad_weight = valid_rows(X, w)
    Xf = as_float64(X[mask])
    wf = None if w is None else as_float64(w[mask])
    out = []
    for centers, seed, ref in jobs:
        n, K = Xf.shape[0], ref.shape[0]
        if centers is not None:
            _, idx = min_sq_dist(Xf, centers)
            resp = np.zeros((n, K))
            resp[np.arange(n), idx] = 1.0
        else:
            resp = np.random.default_rng([seed, index]).random((n, K))
            resp /= resp.sum(axis=1, keepdims=True)
        if wf is not None:
            resp *= wf[:, None]
        stats = family.suff_stats(Xf, resp, {"means": ref})
        stats.update(nk=resp.sum(axis=0), n_rows=n, n_nonfinite=n_nonfinite, n_bad_weight=n_bad_weight)
        out.append(stats)
    return out


# --------------------------------------------------------------------------- in memory
def kmeans_plusplus(points, n_clusters, rng, weights=None):
    """Greedy k-means++ seeding of in-memory ``points`` (n, D), optionally weighted.

    Like scikit-learn, each step draws ``2 + log(K)`` candidates and keeps the one that
    lowers the potential most. With fewer distinct points than ``n_clusters``, the
    remaining centres repeat points.

    Returns
    -------
    centers : ndarray of shape (n_clusters, D)
    """
    n = points.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    trials = 2 + int(np.log(n_clusters))
    chosen = [rng.choice(n, p=w / w.sum())]
    d2, _ = min_sq_dist(points, points[chosen])
    for _ in range(1, n_clusters):
        pot = w * d2
        total = pot.sum()
        if total <= 0:  # every point coincides with a centre
            chosen.append(rng.choice(n))
            continue
        cand = rng.choice(n, size=trials, p=pot / total)
        cand_d2 = np.stack([np.minimum(d2, min_sq_dist(points, points[[c]])[0]) for c in cand])
        best = int(np.argmin(cand_d2 @ w))
        chosen.append(cand[best])
        d2 = cand_d2[best]
    return points[chosen].copy()


def _weighted_lloyd(points, weights, centers, n_iter=30):
    for _ in range(n_iter):
        _, idx = min_sq_dist(points, centers)
        new = centers.copy()
        for k in range(centers.shape[0]):
            sel = idx == k
            if weights[sel].sum() > 0:
                new[k] = np.average(points[sel], axis=0, weights=weights[sel])
        if np.allclose(new, centers, rtol=0, atol=0):
            break
        centers = new
    return centers


def _round_seed(seed, round_):
    return int(np.random.SeedSequence([seed, round_]).generate_state(1)[0])


# --------------------------------------------------------------------------- passes
def _sample(X, jobs, name, check=None, split_every=None, sample_weight=None):
    res = run_pass(
        X,
        _sample_block,
        jobs,
        name=name,
        combine=_combine_samples,
        extra=sample_weight,
        split_every=split_every,
    )
    if check is not None:
        check(res[0])
    return res


def kmeans_parallel(
    X, n_clusters, seeds, *, check=None, split_every=None, sample_weight=None, lloyd_max_iter=None
):
    """k-means|| seeding plus Lloyd passes; one list of centres per seed.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
    n_clusters : int
    seeds : list of int
        One starting point per seed; all share every pass.
    check : callable, optional
        Called with the counts of the first pass (``n_rows``, ``n_nonfinite``).
    sample_weight : dask.array.Array of shape (N,), optional
    lloyd_max_iter : int, optional
        Lloyd passes after the seeding (default ``LLOYD_MAX_ITER``; 0 for none).

    Returns
    -------
    list of ndarray of shape (n_clusters, D)
    """
    lloyd_max_iter = LLOYD_MAX_ITER if lloyd_max_iter is None else lloyd_max_iter
    sw = {"split_every": split_every, "sample_weight": sample_weight}
    ell = KMEANS_OVERSAMPLING * n_clusters
    first = _sample(X, [(s, 1, None) for s in seeds], "init-kmeans-parallel-seed", check, **sw)
    n_rows = first[0]["n_rows"]
    cands = [r["rows"] for r in first]
    phis = [0.0] * len(seeds)
    m = int(4 * ell + 16)
    for round_ in range(1, KMEANS_PARALLEL_ROUNDS + 1):
        jobs = [(_round_seed(s, round_), m, c) for s, c in zip(seeds, cands)]
        res = _sample(X, jobs, "init-kmeans-parallel-round", **sw)
        for i, r in enumerate(res):
            phis[i] = r["cost"]
            if r["cost"] > 0:
                cands[i] = np.vstack([cands[i], r["rows"][r["keys"] > r["cost"] / ell]])
        logger.debug("k-means|| round %d: candidates %s", round_, [len(c) for c in cands])
    counts = run_pass(
        X, _count_block, cands, name="init-kmeans-parallel-weights", extra=sample_weight,
        split_every=split_every,
    )
    centers = []
    for seed, c, cnt in zip(seeds, cands, counts):
        rng = np.random.default_rng([seed, 0])
        w = cnt["counts"]
        start = kmeans_plusplus(c, n_clusters, rng, weights=w if w.sum() > 0 else None)
        centers.append(_weighted_lloyd(c, w, start))
    if lloyd_max_iter == 0:
        return centers
    kmeans = get_family("kmeans")
    lloyd = run_em(
        X,
        kmeans,
        [MixtureState(np.full(n_clusters, 1.0 / n_clusters), {"means": c}) for c in centers],
        tol=1e-4 * max(phis) / max(n_rows, 1),
        max_iter=lloyd_max_iter,
        label="k-means init: ",
        log_level=logging.DEBUG,
        **sw,
    )
    return [r.state.params["means"] for r in lloyd]


def initial_centers(
    X, n_clusters, method, seeds, *, check=None, split_every=None, sample_weight=None, lloyd_max_iter=None
):
    """Starting centres (K, D), one array per seed, without the assignment pass.

    ``method`` is ``"kmeans"`` (k-means|| plus ``lloyd_max_iter`` Lloyd passes),
    ``"k-means++"`` (on a uniform, weighted if ``sample_weight`` is given, sample of
    ``max(10_000, 100 K)`` rows) or ``"random_from_data"`` (K distinct rows drawn
    uniformly, or with probability proportional to their weight).

    Returns
    -------
    list of ndarray of shape (n_clusters, D)
    """
    sw = {"split_every": split_every, "sample_weight": sample_weight}
    K = n_clusters
    if method == "kmeans":
        return kmeans_parallel(X, K, seeds, check=check, lloyd_max_iter=lloyd_max_iter, **sw)
    if method not in ("k-means++", "random_from_data"):
        raise ValueError(f"Unknown centre method {method!r}; expected 'kmeans', 'k-means++' or 'random_from_data'.")
    m = K if method == "random_from_data" else max(KMEANSPP_SAMPLE, 100 * K)
    res = _sample(X, [(s, m, None) for s in seeds], f"init-sample-{method}", check, **sw)
    if method == "random_from_data":
        return [r["rows"] for r in res]
    return [kmeans_plusplus(r["rows"], K, np.random.default_rng([s, 0])) for s, r in zip(seeds, res)]


def _assign(X, family, jobs, options, check=None, split_every=None, sample_weight=None):
    """One pass: weights and component parameters from hard or random responsibilities."""
    stats = run_pass(
        X,
        _assign_block,
        (family, jobs),
        name=f"init-assign-{family.name}",
        extra=sample_weight,
        split_every=split_every,
    )
    if check is not None:
        check(stats[0])
    states = []
    for (_, _, ref), s in zip(jobs, stats):
        nk = s["nk"] + 10 * np.finfo(np.float64).eps
        states.append(MixtureState(nk / nk.sum(), family.m_step(s, {"means": ref}, **options)))
    return states


def initialize(
    X,
    family,
    n_components,
    method,
    seeds,
    *,
    centers=None,
    options=None,
    check=None,
    split_every=None,
    sample_weight=None,
):
    """Starting :class:`MixtureState` objects, one per seed.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
    family : Family
        Its ``suff_stats`` and ``m_step`` must accept a parameter dict holding only
        ``means`` (K, D), the centres of the assignment.
    n_components : int
    method : {"kmeans", "k-means++", "random", "random_from_data"}
        Ignored when ``centers`` is given.
    seeds : list of int
    centers : ndarray of shape (n_components, D), optional
        Given starting means: one assignment pass computes the rest.
    options : dict
        Keyword arguments for ``family.m_step``.
    check : callable, optional
        Called with the row counts of the first pass.
    sample_weight : dask.array.Array of shape (N,), optional
        Row weights, chunked like the rows of ``X``; every pass uses them.

    Returns
    -------
    list of MixtureState
    """
    options = options or {}
    sw = {"split_every": split_every, "sample_weight": sample_weight}
    K = n_components
    if centers is not None:
        c = as_float64(centers)
        jobs = [(c, None, c)] * len(seeds)
        return _assign(X, family, jobs, options, check, **sw)
    if method == "random":
        res = _sample(X, [(s, 1000, None) for s in seeds], "init-sample-random", check, **sw)
        jobs = [(None, s, np.repeat(r["rows"].mean(axis=0, keepdims=True), K, axis=0))
                for s, r in zip(seeds, res)]
        return _assign(X, family, jobs, options, check, **sw)
    if method not in INIT_METHODS:  # validated by the estimators; kept for direct callers
        raise ValueError(f"Unknown init method {method!r}; expected one of {INIT_METHODS}.")
    starts = initial_centers(X, K, method, seeds, check=check, **sw)
    return _assign(X, family, [(c, None, c) for c in starts], options, check, **sw)
