"""K-means on rows with missing features (``nan_policy="marginalize"``): k-POD.

The hard-assignment limit of a mixture of spherical Gaussians whose rows miss some
coordinates (k-POD: Chi, Chi & Baraniuk 2016). For rows sharing one pattern of
observed features ``o`` (missing ``m``) and centres ``c_k``:

- **assignment**: each row goes to the centre nearest over its observed coordinates,
  ``d_ik = |x_i,o - c_k,o|^2`` (the first of equally near ones);
- **update**: the *completed* row ``x^ = (x_o, c_j,m)``, its missing coordinates
  filled with those of its centre ``j``, enters the centroid: the new centre is the
  mean of the completed rows assigned to it. Shifted by ``c_k`` as in
  :mod:`dask_em.families.kmeans`, a missing coordinate adds 0 to ``s1``::

      s1[k]  = sum_i r_ik (x^_ik - c_k)       (observed coordinates only)
      s2[k]  = sum_i r_ik d_ik                (the completed row is at d_ik of c_k)
      sig[k] = sum_i r_ik x^_ik . v           (changes while the centres' filled
                                               coordinates move, so strict
                                               convergence waits for them)
      far    = the completed rows farthest from their centre

The inertia is the sum of the observed-coordinate squared distances; an iteration
never increases it (the assignment minimises it for the centres; the centroid of
the completed rows minimises their squared distances, which bound the observed
ones from above). At a fixed point each coordinate of a centre is the mean of that
coordinate over the rows of its cluster that observe it. The distances are taken
directly (``x_o - c_o``), in float64: no cancellation, whatever the offset.
"""

from functools import partial

import numpy as np

from dask_em.families._family import MissingOps, Params, Stats


def factors(params: Params, observed: np.ndarray) -> dict:
    """The observed (``o``) and missing (``m``) feature indices, and the centres (K, D) in float64."""
    observed = np.asarray(observed, dtype=bool)
    return {"o": np.flatnonzero(observed), "m": np.flatnonzero(~observed),
            "centers": np.asarray(params["means"], dtype=np.float64)}


def _residuals(X, factors):
    """``x_o - c_k,o`` (K, n, |o|) and the observed squared distances (K, n)."""
    o = factors["o"]
    R = np.asarray(X[:, o], dtype=np.float64)[None, :, :] - factors["centers"][:, None, o]
    return R, np.einsum("kno,kno->kn", R, R)


def log_prob(X: np.ndarray, params: Params, factors: dict) -> np.ndarray:
    """Minus the squared distance of each row to each centre over the observed coordinates.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows sharing the pattern of ``factors``; missing entries are not read.
    params : dict
        ``means`` (K, D).
    factors : dict
        From :func:`factors`.

    Returns
    -------
    ndarray of shape (n, K), float64
    """
    return -_residuals(X, factors)[1].T


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict, far_rows, signature) -> Stats:
    """The K-means statistics of the completed rows (see the module docstring).

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows sharing the pattern of ``factors``.
    resp : ndarray of shape (n, K)
        One-hot assignments (times sample weights).
    params : dict
        ``means`` (K, D).
    factors : dict
    far_rows : type
        :class:`~dask_em.families.kmeans.FarRows`.
    signature : callable
        ``signature(D) -> (D,)``, the fixed vector ``v`` of ``sig``.

    Returns
    -------
    dict
        ``nk`` (K,), ``s1`` (K, D), ``s2`` (K,), ``sig`` (K,), ``far``.
    """
    o, m, centers = factors["o"], factors["m"], factors["centers"]
    K, D = centers.shape
    n = X.shape[0]
    resp = np.asarray(resp, dtype=np.float64)
    R, d2 = _residuals(X, factors)
    nk = resp.sum(axis=0)
    s1 = np.zeros((K, D))
    s1[:, o] = np.einsum("nk,kno->ko", resp, R)
    v = signature(D)
    Xo = np.asarray(X[:, o], dtype=np.float64)
    sig = resp.T @ (Xo @ v[o]) + nk * (centers[:, m] @ v[m])
    labels = np.argmax(resp, axis=1) if n else np.zeros(0, dtype=np.intp)
    rows = np.arange(n)
    completed = np.empty((n, D))
    completed[:, o] = Xo
    completed[:, m] = centers[labels][:, m]
    far = far_rows(completed, d2[labels, rows], labels, resp[rows, labels], K)
    return {"nk": nk, "s1": s1, "s2": np.einsum("nk,kn->k", resp, d2), "sig": sig, "far": far}


def expect(X: np.ndarray, resp: np.ndarray, params: Params, factors: dict) -> np.ndarray:
    """The missing coordinates of each row's centre, ``resp @ c[:, m]`` (n, |m|), float64."""
    return np.asarray(resp, dtype=np.float64) @ factors["centers"][:, factors["m"]]


def missing_ops(far_rows, signature) -> MissingOps:
    """The :class:`~dask_em.families.MissingOps` of K-means (k-POD).

    ``far_rows`` and ``signature`` are :class:`~dask_em.families.kmeans.FarRows`
    and the signature vector of :mod:`dask_em.families.kmeans` (passed in, so that
    this module does not import it).
    """
    return MissingOps(
        factors=factors,
        log_prob=log_prob,
        suff_stats=partial(suff_stats, far_rows=far_rows, signature=signature),
        expect=expect,
    )
