"""Gaussian components with full, tied, diagonal or spherical covariance.

Parameters are a dict with scikit-learn's names and shapes (K components, D features):

============  =================  ======================  ===================
type          ``means``          ``covariances``          ``precisions_cholesky``
============  =================  ======================  ===================
full          (K, D)             (K, D, D)               (K, D, D), upper
tied          (K, D)             (D, D)                  (D, D), upper
diag          (K, D)             (K, D)                  (K, D)
spherical     (K, D)             (K,)                    (K,)
============  =================  ======================  ===================

``precisions_cholesky`` ``P`` satisfies ``precision = P @ P.T`` (full, tied) or
``precision = P ** 2`` (diag, spherical), as in scikit-learn.

Statistics are *shifted* by the current means ``c_k`` (DESIGN.md, "Numerics")::

    s1[k] = sum_i r_ik (x_i - c_k)
    s2[k] = sum_i r_ik (x_i - c_k)(x_i - c_k)^T     (full; diagonal or trace for
                                                     diag / spherical; summed
                                                     over k for tied)

and the M-step corrects exactly: ``mu = c + s1/N``, ``Sigma = s2/N - (s1/N)(s1/N)^T``.

For speed the sums are formed with a few GEMMs over all components at once, on
``X - ref`` with ``ref`` a point among the rows (the mean of the first few hundred,
the same for every mixture of a pass), and then moved exactly to each ``c_k``.
The data's offset from the origin never enters (data at +1e8 fit as well as centred
data); what remains is rounding of relative size ``eps * (|x - ref| / sigma_k)^2``,
bounded by the spread of the data, not by their distance from the origin. Full
covariances use the whitened rows of the E-step and are centred on each ``c_k``
exactly. float32 data are processed in float32 and summed in float64. With numba, diag
and spherical take :func:`fused_stats` instead: the same expansion about ``ref``, the
log-densities, responsibilities and sums in one compiled loop, in float64.

Whatever depends on the covariance type outside the E-step kernels (the M-step's
covariances, log-determinants, and in :mod:`dask_em.families.gaussian_params` the
conversions between covariances, precisions and their factors, shapes and checks,
parameter counts, sampling) is one small function per type, picked from a dict keyed
by ``covariance_type`` (as in scikit-learn's ``_gaussian_mixture.py``). The E-step kernels (:func:`log_prob`,
:func:`suff_stats`, :func:`fused_stats`) keep their branches: they share the work arrays and GEMMs.
"""

from functools import partial

import numpy as np

from dask_em._math import LOG_2PI, dot, work_array
from dask_em.families._family import Family, Params, Stats

# the parameters' conversions, shapes, checks, counts and sampling live in
# gaussian_params; the public ones are part of this module's interface too
from dask_em.families.gaussian_params import (  # noqa: F401
    COVARIANCE_TYPES,
    _inverse_lower,
    _pick,
    _too_large,
    check_params,
    check_precisions,
    cholesky_from_precisions,
    covariance_shape,
    covariances_from_cholesky,
    full_covariances,
    n_parameters,
    precisions_cholesky_from_covariances,
    precisions_from_cholesky,
    sample,
)

# scikit-learn adds this to the summed responsibilities to avoid dividing by zero.
_NK_EPS = 10 * np.finfo(np.float64).eps

#: Under ``dask_em.kernels="auto"``, full covariances take the compiled E-step up to this
#: many features. Whole fits on 2 threads, against numpy's kernel: on an AMD EPYC (Zen 4,
#: 512-bit vectors in both), 0.31-0.53x its time at D=16 to 32, 0.38-0.41x at D=64,
#: 0.5-0.6x at D=96 to 256; on an Intel Xeon (AVX-512 in BLAS, 256-bit vectors in the
#: loop), before the loop's tiles of 384 rows, 0.4-0.6x at D=16 to 32, 1.0-1.2x at D=64.
#: BLAS keeps the many-feature fits, where its GEMMs are no longer thin
#: (benchmarks/README.md).
FUSED_FULL_FEATURES = 64
#: Bytes of rows of a slab where the compiled E-step runs (:func:`fused_slab_rows`):
#: its loop keeps no (n, K) arrays, so a slab is longer than the generic path's
#: ``dask_em.engine.estep.slab_rows`` (whose (rows, K, D) work arrays stay near 16 MiB:
#: 2,048 rows at D=64 K=16). D=64 K=16 on an AMD EPYC (Zen 4), one thread: 3,264 ns a
#: row in slabs of 2,048 rows, 3,121 in slabs of 16,384 (8 MiB): fewer calls, sums of
#: slabs and part tiles (benchmarks/README.md).
FUSED_SLAB_BYTES = 8 * 2**20


# --------------------------------------------------------------------------- log-prob
# log det of the precision from its factor: (K,) per component, a scalar for tied
def _log_det_full(prec_chol, n_features):
    return np.sum(np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)


def _log_det_tied(prec_chol, n_features):
    return np.sum(np.log(np.diag(prec_chol)))


def _log_det_diag(prec_chol, n_features):
    return np.sum(np.log(prec_chol), axis=1)


def _log_det_spherical(prec_chol, n_features):
    return n_features * np.log(prec_chol)


_LOG_DET_CHOLESKY = {
    "full": _log_det_full,
    "tied": _log_det_tied,
    "diag": _log_det_diag,
    "spherical": _log_det_spherical,
}


def _shifted_rows(X, covariance_type, cache):
    """The rows shifted by a reference point, transposed, ready for the GEMMs below.

    ``ref`` is the mean of the first few hundred rows of the block's first slab,
    rounded to the data's dtype, so that the very same value shifts the rows and
    (in float64) the means; ``cache["ref"]`` keeps it for the later slabs.
    Returns a dict with ``ref`` (D,) float64 and, in the data's dtype:

    - ``xt`` (m, n), C-contiguous: the rows of ``(X - ref)**2`` (diag and spherical
      only), then those of ``X - ref``, then a row of ones. One GEMM with ``xt``
      gives every component's log-density, constant included; one GEMM with its
      transpose gives the weighted sums of squares and of rows, and the summed
      weights (the row of ones);
    - ``xr`` (n, D), ``X - ref``, a (Fortran-ordered) view into ``xt``.

    They depend on the rows only, so they are kept in ``cache["rows"]`` (shared by
    the mixtures of a pass) and in ``cache`` itself for :func:`suff_stats`.
    """
    shared = None if cache is None else cache.get("rows")
    if shared is not None and "ref" in shared:
        rows = shared
    else:
        n, D = X.shape
        dt = X.dtype
        ref = _reference(X, cache)
        work = None if cache is None else cache.get("work")
        squares = covariance_type in ("diag", "spherical")
        m = (2 * D if squares else D) + 1
        # transposed: a contiguous subtraction, and the square and the ones fill
        # whole rows (writing columns of an (n, m) array costs about 2x)
        xt = work_array(work, "rows-xt", (m, n), dt)
        xr_t = np.subtract(X.T, ref[:, None], out=xt[m - 1 - D : m - 1])
        if squares:
            np.square(xr_t, out=xt[:D])
        xt[m - 1] = 1.0
        rows = {"ref": ref.astype(np.float64), "xt": xt, "xr": xr_t.T}
        if shared is not None:
            shared.update(rows)
    if cache is not None:
        cache["shifted"] = rows
    return rows


def _reference(X, cache):
    """The rows' shift (D,), in ``X``'s dtype: any point among the rows will do, here
    the mean of the first (at most) 256, kept in ``cache["ref"]`` for the block's later
    slabs."""
    ref = None if cache is None else cache.get("ref")
    if ref is None:
        n, D = X.shape
        ref = X[:256].mean(axis=0, dtype=np.float64) if n else np.zeros(D)
        ref = ref.astype(X.dtype) if np.all(np.isfinite(ref)) else np.zeros(D, dtype=X.dtype)
        if cache is not None and n:
            cache["ref"] = ref
    return ref


def _derived(cache, key, make):
    """``make()``, computed once per cache (one row block and one mixture)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def log_prob(
    X: np.ndarray,
    params: Params,
    covariance_type: str,
    cache: dict | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Log-density of each row under each Gaussian component.

    All components are evaluated together, with one GEMM on the shifted rows (see
    :func:`_shifted_rows`). For ``full``, it gives the whitened rows
    ``y_k = (x - mu_k) P_k`` of every component, (K, D, n), the shift by each mean
    riding along on the row of ones; they are left in ``cache["y"]`` for
    :func:`suff_stats`. For ``diag`` and ``spherical``, it gives the log-densities
    themselves, the constants (and ``offset``) riding on the row of ones.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64
    params : dict
        ``means`` and ``precisions_cholesky`` (see the module docstring).
    covariance_type : {"full", "tied", "diag", "spherical"}
    cache : dict, optional
        Lives for one row block and one mixture (see :class:`Family`): values
        derived from ``params`` are kept there, and the work arrays of the current
        rows. ``cache["rows"]``, when present, is shared by all mixtures of a pass.
    offset : ndarray of shape (K,), optional
        Added to every row's log-densities (the engine's log mixing weights).

    Returns
    -------
    log_prob : ndarray of shape (n, K), in the dtype of ``X``
        The transpose of a C-contiguous (K, n) array.
    """
    means = params["means"]
    prec_chol = params["precisions_cholesky"]
    n, D = X.shape
    K = means.shape[0]
    dt = X.dtype
    rows = _shifted_rows(X, covariance_type, cache)
    work = None if cache is None else cache.get("work")
    mr = means - rows["ref"]
    const = _pick(_LOG_DET_CHOLESKY, covariance_type)(prec_chol, D) - 0.5 * D * LOG_2PI
    if offset is not None:
        const = const + offset
    if covariance_type == "full":
        # rows of the (K*D, D + 1) factor: P_k^T, then the shift -P_k^T (mu_k - ref)
        PT = _derived(cache, "pt", lambda: np.swapaxes(prec_chol, 1, 2).reshape(K * D, D))
        F = np.empty((K * D, D + 1), dtype=dt)
        F[:, :D] = PT
        F[:, D] = -np.einsum("kd,kde->ke", mr, prec_chol).reshape(-1)
        Y = np.matmul(F, rows["xt"], out=work_array(work, "y", (K * D, n), dt))
        Y = Y.reshape(K, D, n)  # one contiguous (D, n) per component
        if cache is not None:
            cache["y"] = Y
        out = np.einsum("kdn,kdn->kn", Y, Y, out=work_array(work, "log-prob", (K, n), dt))
        out *= -0.5
        out += np.asarray(const, dtype=dt).reshape(-1, 1)
    elif covariance_type == "tied":
        Y = rows["xr"] @ prec_chol.astype(dt)
        B = mr @ prec_chol
        out = (Y @ (B.T).astype(dt)).T  # (K, n)
        out -= 0.5 * np.einsum("nd,nd->n", Y, Y)
        out += np.asarray(const - 0.5 * np.einsum("kd,kd->k", B, B), dtype=dt).reshape(-1, 1)
    else:
        F = _quadratic_terms(prec_chol, mr, const, covariance_type)  # one GEMM for all components
        out = np.matmul(F.astype(dt, copy=False), rows["xt"], out=work_array(work, "log-prob", (K, n), dt))
    return out.T


def _quadratic_terms(prec_chol, mr, const, covariance_type):
    """diag and spherical: the log-densities ``-0.5 sum_d p2_kd (xr_d - mr_kd)^2 + const``
    expanded in the shifted rows ``xr``, as the (K, 2D + 1) float64 factor
    ``[-p2 / 2, p2 mr, const - sum_d p2 mr^2 / 2]`` of ``[xr**2, xr, 1]``."""
    K, D = mr.shape
    p2 = prec_chol**2 if covariance_type == "diag" else np.outer(prec_chol**2, np.ones(D))
    F = np.empty((K, 2 * D + 1))
    F[:, :D] = -0.5 * p2
    F[:, D : 2 * D] = p2 * mr
    F[:, 2 * D] = const - 0.5 * np.sum(p2 * mr * mr, axis=1)
    return F


# --------------------------------------------------------------------------- statistics
def _inverse_upper(P):
    """Inverse of upper-triangular factors (..., D, D)."""
    return np.swapaxes(_inverse_lower(np.swapaxes(P, -1, -2)), -1, -2)


def suff_stats(
    X: np.ndarray, resp: np.ndarray, params: Params, covariance_type: str, cache: dict | None = None
) -> Stats:
    """First and second moments of ``X`` weighted by ``resp``, about the current means.

    Sums are formed with GEMMs on the shifted rows (see :func:`_shifted_rows`) and
    moved exactly to each ``c_k``, so the data's offset from the origin never enters.
    For ``full`` with whitened rows in ``cache`` (from :func:`log_prob`),
    ``s2[k] = P_k^-T (sum_i r_ik y_ik y_ik^T) P_k^-1``.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64
    resp : ndarray of shape (n, K)
    params : dict
        ``means`` (K, D), the shift ``c_k``; ``precisions_cholesky`` when ``cache``
        holds whitened rows.
    covariance_type : {"full", "tied", "diag", "spherical"}
    cache : dict, optional
        As given to :func:`log_prob` for the same rows.

    Returns
    -------
    stats : dict of float64 arrays
        ``nk`` (K,), the summed responsibilities; ``s1`` (K, D) and ``s2``:
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    """
    centers = params["means"]
    K, D = centers.shape
    dt = X.dtype
    if cache is not None and "shifted" in cache:  # log_prob shifted the same rows
        rows = cache["shifted"]
    else:
        rows = _shifted_rows(X, covariance_type, None)
    cr = centers - rows["ref"]
    RT = resp.T.astype(dt, copy=False)  # (K, n); C-contiguous from the engine
    # one GEMM: [sum_i r_ik (x_i - ref)^2 (diag, spherical), sum_i r_ik (x_i - ref), nk]
    G = dot(rows["xt"], RT.T).T.astype(np.float64)  # (K, m); in this order ~15% faster
    nk = G[:, -1]
    T = G[:, -1 - D : -1]
    s1 = T - nk[:, None] * cr
    if covariance_type == "full":
        if cache is not None and "y" in cache:
            Z = cache.pop("y")  # scaled in place: the whitened rows are not needed again
            work = cache.get("work")
            Z *= np.sqrt(RT, out=work_array(work, "sqrt-resp", RT.shape, dt))[:, None, :]
            W = np.empty((K, D, D))
            for k in range(K):
                W[k] = dot(Z[k], Z[k].T)  # BLAS syrk: half the flops of a GEMM
            Pinv = _derived(cache, "pinv", lambda: _inverse_upper(params["precisions_cholesky"]))
            s2 = np.swapaxes(Pinv, 1, 2) @ W @ Pinv
        else:
            s2 = np.empty((K, D, D))
            for k in range(K):
                Xc = X - centers[k].astype(dt)
                s2[k] = dot(Xc.T * RT[k], Xc)
    elif covariance_type == "tied":
        Xr = rows["xr"]
        w = RT.sum(axis=0)
        gram = dot(Xr.T * w, Xr).astype(np.float64)
        cross = cr.T @ T
        s2 = gram - cross - cross.T + (cr.T * nk) @ cr
    else:
        s2 = _squares_about(G[:, :D], T, nk, cr, covariance_type)
    return {"s1": s1, "s2": s2, "nk": nk}


def _squares_about(sq, T, nk, cr, covariance_type):
    """diag and spherical ``s2``, moved from the shift ``ref`` to each ``c_k``:
    ``sum_i r_ik (x_i - c_k)**2`` from ``sq = sum_i r_ik (x_i - ref)**2``,
    ``T = sum_i r_ik (x_i - ref)`` and ``cr = c_k - ref``."""
    Q = sq - 2.0 * cr * T + nk[:, None] * cr**2
    return Q if covariance_type == "diag" else Q.sum(axis=1)


def fused_stats(
    X: np.ndarray,
    weights: np.ndarray | None,
    params: Params,
    log_weights: np.ndarray,
    groups: int,
    floor: float,
    covariance_type: str,
    cache: dict | None = None,
    entropy: bool = False,
) -> Stats | None:
    """diag, spherical and full: what :func:`log_prob`, the responsibilities and
    :func:`suff_stats` give together, in one compiled loop over the rows
    (:mod:`dask_em.families._gaussian_numba`, :mod:`dask_em.families._gaussian_full_numba`),
    or None where it does not run (tied; full
    beyond :data:`FUSED_FULL_FEATURES` features under ``"auto"``; or as
    ``dask_em.kernels`` says, see :mod:`dask_em.compiled`). diag and spherical compute in
    float64 whatever the data's dtype; full whitens float32 rows in float32.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64
        Finite rows.
    weights : ndarray of shape (n,) or None
        Sample weights, multiplying each row's responsibilities and log-likelihood.
    params : dict
        ``means`` and ``precisions_cholesky`` of ``groups`` mixtures side by side.
    log_weights : ndarray of shape (K,)
        Log mixing weights, added to the log-densities.
    groups : int
        Mixtures in ``params``, each normalised on its own.
    floor : float
        Responsibilities at or below ``exp(floor)`` times the row's largest are
        exactly 0; below :data:`dask_em.compiled.LOWEST_FLOOR` (full with float32
        rows: :data:`~dask_em.compiled.LOWEST_FLOOR_32`), None is returned.
    covariance_type : str
    cache : dict, optional
        As for :func:`log_prob`; keeps the rows' shift for the block.
    entropy : bool
        Also return ``resp_log_resp`` (groups,): ``sum_i w_i sum_k r_ik log r_ik``.

    Returns
    -------
    dict or None
        :func:`suff_stats`'s statistics (float64) with ``nk`` (K,) and ``loglik``
        (groups,), the weighted sums of the rows' log-likelihoods.
    """
    means = params["means"]
    prec_chol = params["precisions_cholesky"]
    single = covariance_type == "full" and X.dtype == np.float32  # float32 responsibilities
    if not _fused_runs(covariance_type, means.shape[1], X.dtype, floor):
        return None
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    rlr = np.zeros(groups if entropy else 0)
    ref = _reference(X, cache)  # in the data's dtype; the means are taken about it in float64
    mr = means - ref.astype(np.float64)
    if covariance_type == "full":  # float32 rows stay float32: the loop computes in the data's dtype
        X = np.ascontiguousarray(X, dtype=np.float32 if single else np.float64)
        stats = _fused_full(X, w, prec_chol, mr, ref.astype(X.dtype), log_weights, groups, floor, rlr, cache)
    else:  # float32 rows converted here: 2x faster than in the loop
        X = np.ascontiguousarray(X, dtype=np.float64)
        stats = _fused_diag(X, w, prec_chol, mr, ref.astype(np.float64), log_weights, groups, floor, rlr,
                            covariance_type, cache)
    if entropy:
        stats["resp_log_resp"] = rlr
    return stats


def _fused_runs(covariance_type, n_features, dtype, floor):
    """Whether :func:`fused_stats` runs its compiled loop for these arguments."""
    from dask_em.compiled import LOWEST_FLOOR, LOWEST_FLOOR_32

    lowest = LOWEST_FLOOR_32 if covariance_type == "full" and dtype == np.float32 else LOWEST_FLOOR
    return floor >= lowest and fused_kernel(covariance_type, n_features) is not None


def fused_slab_rows(n_components: int, n_features: int, dtype, floor: float, covariance_type: str) -> int | None:
    """Rows of an E-step slab where :func:`fused_stats` runs its compiled loop for
    ``n_features`` of ``dtype`` at ``floor``, else None (see
    :attr:`dask_em.families.Family.fused_slab_rows`): :data:`FUSED_SLAB_BYTES` of the
    rows as the loop reads them (diag and spherical convert float32 rows to float64)
    and of their float64 weights, at least 1,024."""
    if not _fused_runs(covariance_type, n_features, np.dtype(dtype), floor):
        return None
    itemsize = np.dtype(dtype).itemsize if covariance_type == "full" else 8
    return max(1024, FUSED_SLAB_BYTES // (max(n_features, 1) * itemsize + 8))


def fused_kernel(covariance_type: str, n_features: int) -> str | None:
    """The module whose compiled E-step :func:`fused_stats` runs here for
    ``covariance_type`` and ``n_features`` (as ``dask_em.kernels`` and
    :data:`FUSED_FULL_FEATURES` say, :mod:`dask_em.compiled`), or None: numpy's kernel."""
    from dask_em.compiled import use_compiled

    if covariance_type == "full":
        module, faster = "dask_em.families._gaussian_full_numba", n_features <= FUSED_FULL_FEATURES
    elif covariance_type in ("diag", "spherical"):
        module, faster = "dask_em.families._gaussian_numba", True
    else:
        return None
    return module if use_compiled(module, faster) else None


def _fused_diag(X, w, prec_chol, mr, ref, log_weights, groups, floor, rlr, covariance_type, cache):
    """:func:`fused_stats` for diag and spherical (:func:`~dask_em.families._gaussian_numba.diag_stats`)."""
    from dask_em._exp_numba import tile_rows
    from dask_em.families._gaussian_numba import diag_stats

    K, D = mr.shape

    def terms():  # the log-densities' coefficients, contiguous for the loop: once per block
        const = _pick(_LOG_DET_CHOLESKY, covariance_type)(prec_chol, D) - 0.5 * D * LOG_2PI + log_weights
        F = _quadratic_terms(prec_chol, mr, const, covariance_type)
        return np.ascontiguousarray(F[:, :D]), np.ascontiguousarray(F[:, D : 2 * D]), F[:, 2 * D].copy()

    A, B, c = _derived(cache, "fused-terms", terms)
    sq, s1, nk, loglik = np.zeros((K, D)), np.zeros((K, D)), np.zeros(K), np.zeros(groups)
    diag_stats(X, w, ref, A, B, c, int(groups), float(floor), tile_rows(D), sq, s1, nk, loglik, rlr)
    s2 = _squares_about(sq, s1, nk, mr, covariance_type)
    return {"s1": s1 - nk[:, None] * mr, "s2": s2, "nk": nk, "loglik": loglik}


def _fused_full(X, w, prec_chol, mr, ref, log_weights, groups, floor, rlr, cache):
    """:func:`fused_stats` for full (:func:`~dask_em.families._gaussian_full_numba.full_stats`):
    the loop takes its sums about each component's mean, which are the statistics
    :func:`suff_stats` returns: no transform back from whitened coordinates. float32
    rows are whitened and summed per tile in float32, as numpy's kernel does (1.5x
    faster than in float64), their responsibilities computed in float32 from float64
    log-densities (:func:`~dask_em.families._gaussian_full_numba.full_stats32`), ``nk``
    and the sums over tiles in float64; their sums are taken about the means
    rounded to float32, and the loop moves them exactly to the float64 ones."""
    from dask_em.families._gaussian_full_numba import full_stats, full_stats32, full_tile_rows

    K, D = mr.shape

    def terms():  # the whitening's coefficients, contiguous for the loop, in the rows' dtype: once per block
        const = _log_det_full(prec_chol, D) - 0.5 * D * LOG_2PI + log_weights
        PT = np.tril(np.swapaxes(prec_chol, 1, 2))  # exact zeros above the diagonal: the loop's sweeps run over them
        f = -np.einsum("kd,kde->ke", mr, prec_chol)
        dt = X.dtype
        m = np.ascontiguousarray(mr, dtype=dt)
        d = m - mr  # float32's rounding of the means (float64: none)
        return np.ascontiguousarray(PT, dtype=dt), np.ascontiguousarray(f, dtype=dt), m, d, np.ascontiguousarray(const)

    PT, f, m, d, c = _derived(cache, "fused-terms", terms)
    s2, s1, nk, loglik = np.zeros((K, D, D)), np.zeros((K, D)), np.zeros(K), np.zeros(groups)
    tile = full_tile_rows(D, X.itemsize)
    if X.dtype == np.float32:
        full_stats32(X, w, ref, PT, f, m, d, c, int(groups), float(floor), tile, s2, s1, nk, loglik, rlr)
    else:
        full_stats(X, w, ref, PT, f, m, c, int(groups), float(floor), tile, s2, s1, nk, loglik, rlr)
    return {"s1": s1, "s2": s2, "nk": nk, "loglik": loglik}


# --------------------------------------------------------------------------- M-step
# Covariances from summed shifted statistics, one function per type: ``nk`` (K,)
# summed responsibilities (plus _NK_EPS), ``d`` (K, D) = s1 / nk, the shift of the
# means, and ``s2`` as returned by suff_stats; ``reg_covar`` goes on the diagonal.
def _covariances_full(nk, d, s2, reg_covar):
    D = d.shape[1]
    cov = s2 / nk[:, None, None] - d[:, :, None] * d[:, None, :]
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    cov[:, np.arange(D), np.arange(D)] += reg_covar
    return cov


def _covariances_tied(nk, d, s2, reg_covar):
    D = d.shape[1]
    cov = (s2 - np.einsum("k,ki,kj->ij", nk, d, d)) / nk.sum()
    cov = 0.5 * (cov + cov.T)
    cov.flat[:: D + 1] += reg_covar
    return cov


def _covariances_diag(nk, d, s2, reg_covar):
    return s2 / nk[:, None] - d**2 + reg_covar


def _covariances_spherical(nk, d, s2, reg_covar):
    return s2 / (nk * d.shape[1]) - np.mean(d**2, axis=1) + reg_covar


_COVARIANCES = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def m_step(stats: Stats, params: Params, covariance_type: str, reg_covar: float = 1e-6) -> Params:
    """New means, covariances and precision factors from summed shifted statistics.

    Parameters
    ----------
    stats : dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (see :func:`suff_stats`), summed over all rows.
    params : dict
        The parameters the statistics were shifted by (``means`` (K, D)).
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance.

    Returns
    -------
    params : dict
        ``means`` (K, D), ``covariances`` and ``precisions_cholesky`` (shapes in the
        module docstring).
    """
    nk = stats["nk"] + _NK_EPS
    d = stats["s1"] / nk[:, None]
    means = params["means"] + d
    with np.errstate(over="ignore", invalid="ignore"):
        cov = _pick(_COVARIANCES, covariance_type)(nk, d, stats["s2"], reg_covar)
    if not np.all(np.isfinite(cov)):
        raise _too_large(cov, means, covariance_type)
    prec_chol = precisions_cholesky_from_covariances(cov, covariance_type, reg_covar)
    return {"means": means, "covariances": cov, "precisions_cholesky": prec_chol}


# --------------------------------------------------------------------------- re-centring
def recentre(stats, old_params, new_params, covariance_type):
    """Statistics shifted by the old means, re-expressed exactly about the new means.

    With ``d_k = c_k - c'_k`` (old minus new mean of component ``k``), for every
    component::

        s1'[k] = s1[k] + n_k d_k
        s2'[k] = s2[k] + d_k s1[k]^T + s1[k] d_k^T + n_k d_k d_k^T

    keeping the diagonal (diag), its trace (spherical) or the sum over components
    (tied) of ``s2'``, as :func:`suff_stats` does. No approximation: this is the
    algebra of ``x - c' = (x - c) + d``.

    Parameters
    ----------
    stats : dict
        ``nk`` (K,), ``s1`` (K, D) and ``s2`` ((K, D, D) full, (D, D) tied, (K, D)
        diag, (K,) spherical), about ``old_params["means"]``; other keys pass through.
    old_params, new_params : dict
        ``means`` (K, D): the old and the new reference points.
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    stats : dict
        A new dict; ``s1`` and ``s2`` about ``new_params["means"]``.
    """
    nk = np.asarray(stats["nk"], dtype=np.float64)
    s1 = np.asarray(stats["s1"], dtype=np.float64)
    s2 = np.asarray(stats["s2"], dtype=np.float64)
    d = np.asarray(old_params["means"], dtype=np.float64) - np.asarray(new_params["means"], dtype=np.float64)
    if covariance_type == "full":
        cross = d[:, :, None] * s1[:, None, :]
        s2 = s2 + cross + np.swapaxes(cross, 1, 2) + nk[:, None, None] * d[:, :, None] * d[:, None, :]
    elif covariance_type == "tied":
        cross = d.T @ s1  # sum_k d_k s1_k^T
        s2 = s2 + cross + cross.T + (d.T * nk) @ d
    else:
        per_feature = 2.0 * d * s1 + nk[:, None] * d**2
        s2 = s2 + (per_feature if covariance_type == "diag" else per_feature.sum(axis=1))
    return {**stats, "s1": s1 + nk[:, None] * d, "s2": s2}


def _make(covariance_type):
    from dask_em.families.gaussian_missing import missing_ops

    # partial keeps the functions pure and picklable for dask workers
    bind = partial
    return Family(
        name=f"gaussian-{covariance_type}",
        log_prob=bind(log_prob, covariance_type=covariance_type),
        caches=True,
        keeps_float32=True,
        stacks=covariance_type != "tied",  # the tied covariance is shared by all components
        takes_offset=True,
        suff_stats=bind(suff_stats, covariance_type=covariance_type),
        m_step=bind(m_step, covariance_type=covariance_type),
        n_parameters=bind(n_parameters, covariance_type=covariance_type),
        sample=bind(sample, covariance_type=covariance_type),
        check_params=bind(check_params, covariance_type=covariance_type),
        recentre=bind(recentre, covariance_type=covariance_type),
        fused_stats=bind(fused_stats, covariance_type=covariance_type),
        fused_slab_rows=bind(fused_slab_rows, covariance_type=covariance_type),
        missing=missing_ops(covariance_type),
    )


FAMILIES = {cov_type: _make(cov_type) for cov_type in COVARIANCE_TYPES}
