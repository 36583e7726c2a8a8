"""K-means as a component family: hard-assignment EM with squared Euclidean distance.

``params = {"means": (K, D)}``. ``log_prob`` is minus the squared distance, so the
engine's hard E-step assigns each row to its nearest mean and its "log-likelihood"
is minus the inertia. Statistics are shifted by the current means ``c_k``, as for
Gaussians::

    s1[k]  = sum_i r_ik (x_i - c_k)          (K, D)
    s2[k]  = sum_i r_ik |x_i - c_k|^2        (K,), the cluster's inertia: gives the
                                             data variance (scikit-learn's relative tol)
    sig[k] = sum_i r_ik (x_i - m) . v        (K,), v fixed, m a point fixed for
                                             the block: equal between two passes
                                             exactly when the partition is
                                             unchanged (strict convergence)
    far    = the K rows farthest from their assigned centre (:class:`FarRows`)

Rows with missing features (``nan_policy="marginalize"``) follow k-POD, the
hard-assignment limit of spherical Gaussians with missing coordinates: see
:mod:`dask_em.families.kmeans_missing`.

An empty cluster is re-seeded in the M-step at the farthest row of the pass
(taken out of its old cluster), as scikit-learn does; it is never NaN.

Speed: the E-step of a fit calls :func:`hard_stats`, a Lloyd step per slab of rows.
With numba (``dask_em.kernels``, :mod:`dask_em.compiled`) it is one compiled loop over
tiles of rows (:mod:`dask_em.families._kmeans_numba`), 2-3x faster; else a few BLAS
calls: one GEMM for the distances of all rows to all centres, their minimum, the
(K, n) indicator of the nearest centre, and two GEMMs with it for every sum (no
per-row Python, no (n, K) one-hot). The two give the same sums up to rounding (a row
within rounding of equidistant may go to either centre). Strict convergence compares
``sig`` between consecutive iterations of one kind: passes (on the workers) with
passes, steps in memory (:mod:`~dask_em.families.kmeans_region`, in the client) with
steps in memory, each kind with its process's kernel.

Precision: the compiled loop takes each distance from the differences ``x - c_k``.
numpy's kernel takes them about a reference point ``m`` near the data (the
centres' mean, or in a fit the mean of the block's first rows). With
``xc = x - m`` and ``cc_k = c_k - m``, ``|x - c_k|^2 = |xc|^2 - 2 xc . cc_k + |cc_k|^2``,
exact to about ``eps (|xc|^2 + |cc_k|^2)``. Expanded about the origin instead (as
scikit-learn's Lloyd does), data far from it would lose ``eps |x|^2``.
"""

import math
from functools import partial
from typing import Sequence

import numpy as np

from dask_em._math import dot, work_array
from dask_em.compiled import use_compiled
from dask_em.families._checks import check_keys, check_shape, check_values
from dask_em.families._family import Family, Params, Stats
from dask_em.families.kmeans_missing import missing_ops
from dask_em.families.kmeans_region import evaluate as evaluate_region
from dask_em.families.kmeans_region import slab_region


class FarRows:
    """The ``m`` rows of a pass farthest from their assigned centre.

    A statistic combined with ``+`` by keeping the ``m`` largest distances
    (associative and commutative; ``0 + s`` is ``s``), so it travels through the
    engine's key-wise tree sum like an array.

    Attributes
    ----------
    rows : ndarray (m', D)
    d2 : ndarray (m',)
        Squared distance to the assigned centre, in decreasing order.
    labels : ndarray of int (m',)
    weights : ndarray (m',)
    m : int
    """

    def __init__(self, rows: np.ndarray, d2: np.ndarray, labels: np.ndarray, weights: np.ndarray, m: int):
        order = np.argsort(-d2, kind="stable")[:m]
        self.rows, self.d2 = rows[order], d2[order]
        self.labels, self.weights, self.m = labels[order], weights[order], m

    def __add__(self, other: "FarRows | int | float") -> "FarRows":
        if not isinstance(other, FarRows):
            return self if other == 0 else NotImplemented
        return FarRows(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.d2, other.d2]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.weights, other.weights]),
            self.m,
        )

    __radd__ = __add__

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The fields as a tuple of arrays (for comparisons)."""
        return self.rows, self.d2, self.labels, self.weights


def _derived(params, ref=None):
    """Values of the centres about a reference point ``ref`` (D,) (default: the
    centres' mean) that every slab of a block reuses."""
    centers = np.asarray(params["means"], dtype=np.float64)
    ref = centers.mean(axis=0) if ref is None else ref
    cc = centers - ref
    return {
        "centers": centers,
        "ref": ref,
        "cc": cc,
        # one GEMM with the rows about ``ref`` gives -2 cc_k . xc for every k, and xc . v
        "gemm": np.vstack([-2.0 * cc, _signature_vector(centers.shape[1])]),  # (K + 1, D)
        "ccsq": np.einsum("ij,ij->i", cc, cc)[:, None],  # (K, 1)
    }


def _signature_vector(D):
    return np.cos(np.arange(1, D + 1) * 0.7548776662466927)  # fixed, no special structure


def _block_derived(X, params, cache):
    """:func:`_derived` about the block's reference point: the mean of the first rows
    the block's ``cache`` saw (the centres' mean without a cache)."""
    if cache is None:
        return _derived(params)
    if "derived" not in cache:
        cache["derived"] = _derived(params, X.mean(axis=0) if X.shape[0] else None)
    return cache["derived"]


def _centred(X, ref, work=None):
    """``xc = X - ref`` (n, D) and ``|xc|^2`` (n,)."""
    n, D = X.shape
    xc = np.subtract(X, ref, out=work_array(work, "xc", (n, D), np.float64))
    return xc, np.einsum("ij,ij->i", xc, xc, out=work_array(work, "xsq", (n,), np.float64))


def _distances(xc, xsq, derived, work=None):
    """A (K + 3, n) array: ``|cc_k|^2 - 2 cc_k . xc`` for every centre, transposed
    (rows 0..K-1; one GEMM), the squared distance to it less ``|xc|^2``; ``xc . v``
    (row K); rows K+1 and K+2 are left for the caller."""
    K = derived["cc"].shape[0]
    out = work_array(work, "d2", (K + 3, xc.shape[0]), np.float64)
    np.dot(derived["gemm"], xc.T, out=out[: K + 1])
    out[:K] += derived["ccsq"]
    return out


def log_prob(X: np.ndarray, params: Params, cache=None) -> np.ndarray:
    """Minus the squared Euclidean distance of each row to each mean (at most 0).

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    params : dict with ``means`` (K, D)
    cache : dict, optional
        Per-block values (see :attr:`Family.caches`).

    Returns
    -------
    ndarray of shape (n, K)
    """
    X = np.asarray(X, dtype=np.float64)
    derived = _block_derived(X, params, cache)
    K = derived["cc"].shape[0]
    xc, xsq = _centred(X, derived["ref"])
    lp = np.negative(_distances(xc, xsq, derived)[:K].T)  # (n, K), C-ordered
    lp -= xsq[:, None]
    np.minimum(lp, 0.0, out=lp)
    return lp


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, cache=None) -> Stats:
    """Shifted sums, signature and farthest rows for one-hot (or weighted) ``resp`` (n, K).

    The E-step of a fit calls :func:`hard_stats` instead, which assigns the rows too.
    ``cache``: per-block values (see :attr:`Family.caches`).
    """
    X = np.asarray(X, dtype=np.float64)
    derived = _block_derived(X, params, cache)
    K = derived["cc"].shape[0]
    xc, xsq = _centred(X, derived["ref"])
    d2 = _distances(xc, xsq, derived)[:K]
    d2 += xsq
    np.maximum(d2, 0.0, out=d2)
    nk = resp.sum(axis=0, dtype=np.float64)
    labels = np.argmax(resp, axis=1) if resp.size else np.zeros(0, dtype=np.intp)
    weights = resp[np.arange(X.shape[0]), labels] if resp.size else np.zeros(0)
    diff = X - derived["centers"][labels]
    return {
        "s1": dot(resp.T, xc) - nk[:, None] * derived["cc"],
        "s2": np.einsum("ik,ki->k", resp, d2),
        "sig": dot(resp.T, dot(X, derived["gemm"][K])),
        "far": FarRows(X, np.einsum("ij,ij->i", diff, diff), labels, weights, K),
    }


def hard_stats(X: np.ndarray, w: np.ndarray | None, params: Params, cache=None, keep=None) -> Stats:
    """Statistics of the rows assigned to their nearest centre, in three GEMMs or
    one compiled loop (see the module docstring).

    The statistics of :func:`suff_stats` for the one-hot assignment of each row to
    its nearest centre (the first of equally near ones), plus ``nk`` and ``loglik`` (minus the weighted sum of squared
    distances). One GEMM gives every distance (K, n); the (weighted) indicator of
    each row's nearest centre (K, n) then gives ``s1`` in one GEMM, and ``sig``,
    ``s2`` and ``nk`` in another.

    Distances are taken about a reference point of the block (the mean of its first
    rows, kept in ``cache``), so ``sig`` sums ``(x - ref) . v``: within one block,
    the same terms in the same order whenever the partition is the same, which is
    all strict convergence needs. The rows about it are computed once per slab for
    all the mixtures of a pass (``cache["rows"]``).

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    w : ndarray of shape (n,) or None
        Sample weights.
    params : dict with ``means`` (K, D)
    cache : dict, optional
        See :attr:`Family.caches`: ``"work"`` (a :class:`~dask_em._math.Workspace`),
        ``"rows"``, and the block's reference point and values of the centres.
    keep : float, optional
        Also return ``region``, a :class:`~dask_em.families.kmeans_region.Region`
        keeping about this fraction of the rows (those nearest a boundary), from
        which further Lloyd steps are taken in memory (:attr:`Family.local`).

    Returns
    -------
    dict
        ``s1``, ``s2``, ``sig``, ``far`` (as :func:`suff_stats`), ``nk``, ``loglik``;
        ``region`` with ``keep``.
    """
    cache = {} if cache is None else cache
    work = cache.get("work")
    derived = _block_derived(X, params, cache)
    if use_compiled("dask_em.families._kmeans_numba"):
        return _compiled_stats(X, w, derived, cache, keep)
    K = derived["cc"].shape[0]
    n = X.shape[0]
    rows = cache.get("rows")
    shared = None if rows is None else rows.get("kmeans")
    if shared is not None and np.array_equal(shared[0], derived["ref"]):
        xc, xsq = shared[1:]  # another mixture of the pass computed them
    else:
        xc, xsq = _centred(X, derived["ref"], work)
        if rows is not None:
            rows["kmeans"] = (derived["ref"], xc, xsq)
    out = _distances(xc, xsq, derived, work)
    d2 = out[:K]  # less |xc|^2, the same for every centre
    # rows K.. of `out`: xc . v, the squared distance to the nearest centre, 1
    best = np.min(d2, axis=0, out=out[K + 1])
    resp = np.equal(d2, best, out=work_array(work, "resp", (K, n), np.float64))
    best += xsq
    np.maximum(best, 0.0, out=best)
    out[K + 2] = 1.0
    if w is not None:
        if resp.sum() != n:  # equally near centres: keep the first
            _first_only(resp)
        resp *= w
    sig, s2, nk = dot(resp, out[K:].T).T
    if w is None and nk.sum() != n:
        _first_only(resp)
        sig, s2, nk = dot(resp, out[K:].T).T
    stats = {
        "s1": dot(resp, xc) - nk[:, None] * derived["cc"],
        "s2": s2,
        "sig": sig,
        "far": _far_rows(X, best, lambda rows: np.argmax(resp[:, rows], axis=0), w, derived, cache),
        "nk": nk,
        "loglik": -float(s2.sum()),
    }
    if keep is not None:
        stats["region"] = _region(X, w, d2, xsq, out[K], best, stats, derived, keep)
    return stats


def _region(X, w, d2, xsq, sv, best, stats, derived, keep):
    """The slab's :class:`~dask_em.families.kmeans_region.Region` (see :func:`hard_stats`):
    ``d2`` (K, n) the squared distances less ``|xc|^2``, ``best`` the nearest one."""
    n = X.shape[0]
    labels = np.argmin(d2, axis=0)  # the first of equally near centres, as ``resp``
    if d2.shape[0] > 1:
        others = d2.copy()
        others[labels, np.arange(n)] = np.inf
        second = np.min(others, axis=0)
        second += xsq
        np.maximum(second, 0.0, out=second)
    else:
        second = np.full(n, np.inf)
    scale = math.sqrt(float(xsq.max(initial=0.0)) + float(derived["ccsq"].max()))
    return slab_region(X, w, labels, best, second, scale, sv, stats, derived["centers"], keep)


def _compiled_stats(X, w, derived, cache, keep):
    """:func:`hard_stats` by the compiled Lloyd step (:mod:`dask_em.families._kmeans_numba`):
    the same statistics, the distances taken from the differences ``x - c_k``."""
    from dask_em._exp_numba import tile_rows
    from dask_em.families._kmeans_numba import lloyd_stats

    work = cache.get("work")
    centers = derived["centers"]
    K, D = centers.shape
    n = X.shape[0]
    X = np.ascontiguousarray(X)
    labels = work_array(work, "labels", (n,), np.int64)
    best = work_array(work, "best", (n,), np.float64)
    second, sv = (work_array(work, name, (n if keep is not None else 0,), np.float64) for name in ("second", "sv"))
    nk, s1, s2, sig = np.zeros(K), np.zeros((K, D)), np.zeros(K), np.zeros(K)
    weights = np.empty(0) if w is None else np.asarray(w, dtype=np.float64)
    largest = lloyd_stats(X, weights, centers, derived["ref"], derived["gemm"][K], tile_rows(D),
                          labels, best, second, sv, nk, s1, s2, sig)
    stats = {
        "s1": s1,
        "s2": s2,
        "sig": sig,
        "far": _far_rows(X, best, lambda rows: labels[rows], w, derived, cache),
        "nk": nk,
        "loglik": -float(s2.sum()),
    }
    if keep is not None:
        scale = math.sqrt(largest + float(derived["ccsq"].max()))
        # the region keeps its own copies of the work arrays' values it needs
        stats["region"] = slab_region(X, w, labels.copy(), best, second, scale, sv, stats, centers, keep)
    return stats


def _first_only(resp):
    """Keep only the first nonzero of every column of ``resp`` (K, n) that has several."""
    cols = np.flatnonzero(np.count_nonzero(resp, axis=0) > 1)
    part = resp[:, cols]
    first = np.argmax(part != 0, axis=0)
    keep = part[first, np.arange(cols.size)]
    resp[:, cols] = 0.0
    resp[first, cols] = keep


def _far_rows(X, best, labels_of, w, derived, cache):
    """:class:`FarRows` of a slab, the same as :func:`suff_stats` would give.

    Candidates come from the distances to the nearest centre ``best`` (n,), with a
    margin above their rounding error, then their exact distances decide;
    ``labels_of(rows)`` gives the candidates' nearest centres. Rows below the K-th largest
    distance seen earlier in the block (``cache["far_floor"]``) cannot be among the
    block's farthest and are left out without a partition of the slab.
    """
    K = derived["cc"].shape[0]
    n = X.shape[0]
    scale = float(derived["ccsq"].max())  # the largest |c_k - ref|^2
    floor = cache.get("far_floor")
    if floor is not None:
        rows = np.flatnonzero(best >= floor - 1e-10 * (floor + scale))
    elif n > K:
        kth = np.partition(best, n - K)[n - K]
        # every row whose exact distance could reach the K-th largest one
        rows = np.flatnonzero(best >= kth - 1e-10 * (kth + scale))
    else:
        rows = np.arange(n)
    if floor is not None and not rows.size:
        return 0  # FarRows adds 0 as nothing
    labels = labels_of(rows)
    P = X[rows]
    diff = P - derived["centers"][labels]
    far = FarRows(P, np.einsum("ij,ij->i", diff, diff), labels, np.ones(rows.size) if w is None else w[rows], K)
    top = np.concatenate([cache.get("far_top", np.zeros(0)), far.d2])
    top = -np.sort(-top)[:K]
    cache["far_top"] = top
    if top.size == K:
        cache["far_floor"] = float(top[-1])
    return far


def m_step(stats: Stats, params: Params) -> Params:
    """Centroids ``c + s1 / n_k``; empty clusters re-seeded at the farthest rows.

    The i-th empty cluster (in index order) moves to the i-th farthest row of the
    pass, which leaves its old cluster, as in scikit-learn's Lloyd iteration. Without
    ``far`` statistics (or with fewer rows than empty clusters) an empty cluster
    keeps its centre.
    """
    nk = np.array(stats["nk"], dtype=np.float64, copy=True)
    s1 = np.array(stats["s1"], dtype=np.float64, copy=True)
    old = np.asarray(params["means"], dtype=np.float64)
    means = old.copy()
    far = stats.get("far")
    empty = np.flatnonzero(nk <= 0)
    if empty.size and far is not None:
        for i, k in enumerate(empty[: len(far.d2)]):
            x, j, w = far.rows[i], far.labels[i], far.weights[i]
            s1[j] -= w * (x - old[j])
            nk[j] -= w
            means[k] = x
    filled = nk > 0
    means[filled] = old[filled] + s1[filled] / nk[filled, None]
    return {"means": means}


def mean_variance(stats: Stats, params: Params) -> float:
    """Mean over the features of the (weighted) variance of the data, from one
    pass's statistics (scikit-learn's scale of ``tol``).

    Exact from the shifted sums: the total squared distance to the overall mean
    ``m`` is ``sum_k s2_k + 2 (c_k - m) . s1_k + n_k |c_k - m|^2``.
    """
    c, nk, s1, s2 = params["means"], stats["nk"], stats["s1"], stats["s2"]
    N = nk.sum()
    m = (nk[:, None] * c + s1).sum(axis=0) / N
    dc = c - m
    total = np.sum(s2) + 2.0 * np.sum(dc * s1) + np.sum(nk * np.einsum("ij,ij->i", dc, dc))
    return float(total / (N * c.shape[1]))


def recentre(stats, old_params, new_params):
    """``s1`` and ``s2`` about the old centres, re-expressed exactly about the new ones.

    With ``d_k = c_k - c'_k``: ``s1' = s1 + n_k d_k`` and
    ``s2' = s2 + 2 d_k . s1 + n_k |d_k|^2``. ``sig`` and ``far`` are not shifted and
    pass through, as do other keys.

    Parameters
    ----------
    stats : dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (K,) about ``old_params["means"]``.
    old_params, new_params : dict
        ``means`` (K, D).

    Returns
    -------
    stats : dict
        A new dict.
    """
    nk = np.asarray(stats["nk"], dtype=np.float64)
    s1 = np.asarray(stats["s1"], dtype=np.float64)
    d = np.asarray(old_params["means"], dtype=np.float64) - np.asarray(new_params["means"], dtype=np.float64)
    s2 = np.asarray(stats["s2"], dtype=np.float64) + 2.0 * np.einsum("ij,ij->i", d, s1) + nk * np.einsum("ij,ij->i", d, d)
    return {**stats, "s1": s1 + nk[:, None] * d, "s2": s2}


def n_parameters(params: Params) -> int:
    """``K * D`` centre coordinates."""
    return int(np.size(params["means"]))


def sample(params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """K-means is not a generative model; sampling from it is refused."""
    raise ValueError(
        "K-means has no generative model to sample from; fit a GaussianMixture "
        "with covariance_type='spherical' instead."
    )


def check_params(params, n_components, n_features):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        Must be ``{"means": ndarray (n_components, n_features)}``, all finite.
    n_components, n_features : int
    """
    check_keys(params, ["means"])
    means = params["means"]
    check_shape("means", means, (n_components, n_features))
    check_values("means", means, ~np.isfinite(means), "must be finite")


FAMILY = Family(
    name="kmeans",
    log_prob=log_prob,
    suff_stats=suff_stats,
    hard_stats=hard_stats,
    m_step=m_step,
    n_parameters=n_parameters,
    sample=sample,
    hard=True,
    caches=True,
    check_params=check_params,
    recentre=recentre,
    missing=missing_ops(FarRows, _signature_vector),
    local=partial(evaluate_region, kernel=hard_stats),
)
