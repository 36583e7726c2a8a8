"""Exact Lloyd steps in memory: the rows near the clusters' boundaries, and the sums of the others.

A pass of Lloyd's algorithm at centres ``c0`` assigns every row to its nearest centre.
A row's *margin* is the distance to its second-nearest centre minus the distance to its
nearest. When every centre then moves by ``delta_k = |c_k - c0_k|``, a row's distance to
its own centre grows by at most ``delta_own`` and to any other shrinks by at most
``delta_other`` (the triangle inequality), so a row whose margin exceeds the sum of the
two largest moves keeps its centre. A :class:`Region` keeps, from one pass:

- the rows with the smallest margins (at most a fraction ``fraction`` of the rows), with
  their weights;
- the exact sums (``nk``, ``s1``, ``s2``, ``sig``, as :func:`dask_em.families.kmeans.hard_stats`
  returns them) of all other rows, about ``c0``, and ``thr``, a margin every one of them
  exceeds.

:func:`evaluate` then gives the statistics of a whole pass at any centres ``c`` within
that region (the two largest moves from ``c0`` summing to less than ``thr``) without
reading the data: the other rows' sums moved exactly to ``c`` (the algebra of
``x - c = (x - c0) + (c0 - c)``), plus the kept rows assigned afresh. Lloyd steps from
there are the steps a pass would take (up to the order of summation), until a step
leaves the region; then a pass is needed again. On overlapping clusters, where Lloyd
moves the centres by a little per pass for many passes, most of those passes become
steps in memory.

Margins are taken from the pass's distances (float64, about a point near the block),
less an allowance for their rounding, so a row is only counted as fixed when its
margin exceeds ``thr`` with room to spare.
"""

import math

import numpy as np

from dask_em._math import Workspace
from dask_em.settings import map_on_threads

#: Allowance for rounding, relative to the largest distance from the block's reference
#: point (the distances' float64 rounding is about 1e-8 of it at worst; see the module).
MARGIN_SLACK = 1e-6
#: Rows a slab keeps, as a multiple of its share (``fraction`` of its rows).
SLAB_EXCESS = 1.5
#: Kept rows per call of the kernel in :func:`evaluate` (work arrays of a few MiB).
PIECE_ROWS = 65_536


def _row_sums(centers, rows, labels, weights, sv):
    """``nk``, ``s1``, ``s2``, ``sig`` of ``rows`` (m, D) assigned to ``labels``, about
    ``centers`` (K, D), as :func:`dask_em.families.kmeans.hard_stats` sums them."""
    onehot = np.zeros((centers.shape[0], labels.size))  # each row's centre, times its weight
    onehot[labels, np.arange(labels.size)] = weights
    diff = rows - centers[labels]
    return onehot.sum(axis=1), onehot @ diff, onehot @ np.einsum("ij,ij->i", diff, diff), onehot @ sv


class Region:
    """Rows near the boundaries at centres ``c0``, and the exact sums of all other rows.

    Combined with ``+`` (associative; ``0 + r`` is ``r``), so it travels through the
    engine's key-wise tree sum. Each slab keeps :data:`SLAB_EXCESS` times its share of
    rows, so that the region's rows are close to the smallest margins of all rows;
    :meth:`trimmed` keeps the ``ceil(fraction * covered)`` rows of smallest margin and
    folds the others into the sums, lowering ``thr`` to the smallest margin it folded.

    Attributes
    ----------
    centers : ndarray (K, D)
        ``c0``, the centres the pass evaluated.
    nk, s1, s2, sig : ndarray
        (K,), (K, D), (K,), (K,): sums of the rows not kept, about ``c0``.
    rows : ndarray (m, D)
        The kept rows (float64).
    weights, sv, margin : ndarray (m,)
        Their weights, signature terms (see :mod:`dask_em.families.kmeans`) and margins.
    labels : ndarray of int (m,)
        Their nearest centre at ``c0``.
    thr : float
        Every row not kept has a margin above ``thr`` (``inf`` when none is).
    covered : int
        Rows the region describes (kept or summed).
    fraction : float
        Most rows kept, as a fraction of ``covered``.
    """

    def __init__(self, centers, nk, s1, s2, sig, rows, weights, sv, margin, labels, thr, covered, fraction):
        self.centers = centers
        self.nk, self.s1, self.s2, self.sig = nk, s1, s2, sig
        # the kept rows' arrays, as parts joined when first read (a sum of many slabs'
        # regions would otherwise copy the growing arrays again at every step)
        self._parts = [(rows, weights, sv, margin, labels)]
        self.thr, self.covered, self.fraction = float(thr), int(covered), float(fraction)
        self._trimmed = None
        self._pieces = None  # for evaluate's kernel: the kept rows in pieces, their caches

    @property
    def size(self):
        """Rows kept."""
        return sum(part[3].size for part in self._parts)

    def _joined(self):
        if len(self._parts) > 1:
            self._parts = [tuple(np.concatenate(arrays) for arrays in zip(*self._parts))]
        return self._parts[0]

    rows = property(lambda self: self._joined()[0])
    weights = property(lambda self: self._joined()[1])
    sv = property(lambda self: self._joined()[2])
    margin = property(lambda self: self._joined()[3])
    labels = property(lambda self: self._joined()[4])

    def trimmed(self):
        """The region keeping the ``ceil(fraction * covered)`` rows of smallest margin,
        the others folded into the sums (``thr`` lowered to the smallest margin
        folded); ``self`` when it keeps no more. Computed once."""
        if self._trimmed is not None:
            return self._trimmed
        keep = math.ceil(self.fraction * self.covered)
        if self.size <= keep:
            self._trimmed = self
            return self
        order = np.argpartition(self.margin, keep)
        kept, folded = np.sort(order[:keep]), order[keep:]
        nk, s1, s2, sig = _row_sums(self.centers, self.rows[folded], self.labels[folded], self.weights[folded],
                                    self.sv[folded])
        self._trimmed = Region(
            self.centers, self.nk + nk, self.s1 + s1, self.s2 + s2, self.sig + sig,
            self.rows[kept], self.weights[kept], self.sv[kept], self.margin[kept], self.labels[kept],
            min(self.thr, float(self.margin[folded].min())),
            self.covered,
            self.fraction,
        )
        return self._trimmed

    def __add__(self, other):
        if not isinstance(other, Region):
            return self if other == 0 else NotImplemented
        joined = Region(self.centers, self.nk + other.nk, self.s1 + other.s1, self.s2 + other.s2,
                        self.sig + other.sig, *([None] * 5), min(self.thr, other.thr),
                        self.covered + other.covered, self.fraction)
        joined._parts = self._parts + other._parts
        # slabs keep SLAB_EXCESS times their share: trimmed at the end (``trimmed``),
        # or here when far more than the share piles up, so memory stays bounded
        if joined.size > 2 * math.ceil(self.fraction * joined.covered) + 1024:
            return joined.trimmed()
        return joined

    __radd__ = __add__

    def contains(self, centers):
        """Whether every row not kept keeps its centre at ``centers`` (K, D)."""
        moves = np.sort(np.sqrt(((np.asarray(centers, dtype=np.float64) - self.centers) ** 2).sum(axis=1)))
        return bool(moves[-2:].sum() < self.thr)


def slab_region(X, w, labels, d_best, d_second, xc_scale, sv, stats, centers, fraction):
    """The :class:`Region` of one slab, from the quantities ``hard_stats`` computed.

    Parameters
    ----------
    X : ndarray (n, D), float64
        The slab's valid rows.
    w : ndarray (n,) or None
        Their weights.
    labels : ndarray of int (n,)
        Nearest centre of each row.
    d_best, d_second : ndarray (n,)
        Squared distances to the nearest and the second-nearest centre (``inf`` when K = 1).
    xc_scale : float
        The largest distance from the slab's reference point to a row or a centre
        (the scale of the distances' rounding).
    sv : ndarray (n,)
        Each row's signature term.
    stats : dict
        The slab's ``nk``, ``s1``, ``s2``, ``sig`` (about ``centers``), all rows.
    centers : ndarray (K, D)
    fraction : float
        Rows kept, as a fraction of all rows (:data:`SLAB_EXCESS` times that here).
    """
    n = X.shape[0]
    margin = np.sqrt(d_second) - np.sqrt(d_best) - MARGIN_SLACK * xc_scale
    keep = min(n, math.ceil(SLAB_EXCESS * fraction * n))
    if keep == n:  # every row kept: nothing to sum
        K, D = centers.shape
        weights = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
        return Region(centers, np.zeros(K), np.zeros((K, D)), np.zeros(K), np.zeros(K), np.array(X, dtype=np.float64),
                      weights, np.array(sv, dtype=np.float64), margin, labels, math.inf, n, fraction)
    part = np.argpartition(margin, keep - 1)
    kept, folded = np.sort(part[:keep]), part[keep:]
    thr = float(margin[folded].min())
    weights = np.ones(kept.size) if w is None else np.asarray(w[kept], dtype=np.float64)
    rows, lab = X[kept], labels[kept]
    nk, s1, s2, sig = _row_sums(centers, rows, lab, weights, sv[kept])
    return Region(
        centers,
        stats["nk"] - nk,
        stats["s1"] - s1,
        stats["s2"] - s2,
        stats["sig"] - sig,
        np.array(rows, dtype=np.float64),
        weights,
        np.array(sv[kept], dtype=np.float64),
        margin[kept],
        lab,
        thr,
        n,
        fraction,
    )


def _run_pieces(region, kernel, params):
    """``kernel`` on every piece of :data:`PIECE_ROWS` kept rows, on the in-memory
    threads (:func:`~dask_em.settings.map_on_threads`); the results in the pieces'
    order. Each piece keeps its rows about their mean and its work arrays between
    calls, so its ``sig`` is the same, bit for bit, for the same partition; the
    pieces do not depend on the thread count, so neither do the sums."""
    if region._pieces is None:
        rows, weights = region.rows, region.weights
        region._pieces = [(rows[i:i + PIECE_ROWS], weights[i:i + PIECE_ROWS], {}, Workspace())
                          for i in range(0, rows.shape[0], PIECE_ROWS)]

    def run(piece):
        rows, weights, memo, work = piece
        return kernel(rows, weights, params, cache={"rows": memo, "work": work})

    return map_on_threads(run, region._pieces)


def evaluate(region, params, kernel):
    """The statistics a pass would return at ``params``, or ``None`` outside the region.

    ``None`` also when a cluster would be empty (its re-seeding needs the pass's
    farthest rows). The row counts of the pass (``weight``, ``n_rows`` ...) are not
    included; the caller keeps those of the pass that made the region.

    Parameters
    ----------
    region : Region
    params : dict with ``means`` (K, D)
    kernel : callable
        ``kernel(rows, weights, params, cache) -> dict``, the family's statistics of
        rows assigned to their nearest centre (:func:`dask_em.families.kmeans.hard_stats`),
        run on the kept rows, in pieces (:func:`_run_pieces`). Its ``sig`` is taken
        about each piece's mean, so two evaluations of the same partition give the
        same ``sig``, bit for bit, as strict convergence needs.

    Returns
    -------
    dict or None
        ``nk``, ``s1``, ``s2``, ``sig``, ``loglik`` as :func:`dask_em.families.kmeans.hard_stats`.
    """
    c = np.asarray(params["means"], dtype=np.float64)
    region = region.trimmed()
    if not region.contains(c):
        return None
    dd = region.centers - c  # the other rows' sums, moved exactly from c0 to c
    nk = region.nk
    s1 = region.s1 + nk[:, None] * dd
    s2 = region.s2 + 2.0 * np.einsum("ij,ij->i", dd, region.s1) + nk * np.einsum("ij,ij->i", dd, dd)
    sig = region.sig
    if region.size:
        for part in _run_pieces(region, kernel, {"means": c}):
            nk, s1, s2, sig = nk + part["nk"], s1 + part["s1"], s2 + part["s2"], sig + part["sig"]
    if np.any(nk <= 0):
        return None
    return {"nk": nk, "s1": s1, "s2": s2, "sig": sig, "loglik": -float(s2.sum())}
