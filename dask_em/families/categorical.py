"""Categorical components: feature ``d`` takes one of ``C_d`` integer codes 0..C_d-1.

``params = {"probs": (K, D, C_max)}`` with ``C_max = max(C_d)``; ``probs[k, d, c]``
is the probability of code ``c`` for feature ``d`` in component ``k``, and entries
with ``c >= C_d`` are 0 (padding). A value's code is its integer part, as
scikit-learn's ``CategoricalNB`` reads its input. The number of categories per
feature is bound into the family with :func:`make_family` (``FAMILY`` infers it
from ``probs``: the codes with non-zero probability).

Statistics: ``counts[k, d, c] = sum_i r_ik [x_id == c]`` (K, D, C_max). The M-step is
the mode under a symmetric Dirichlet(1 + alpha) prior, so no probability is 0::

    p_kdc = (counts_kdc + alpha) / (n_k + C_d alpha)
"""

from functools import partial
from typing import Sequence

import numpy as np

from dask_em._math import dot
from dask_em.families._checks import check_keys, check_shape, check_values, raise_if_invalid
from dask_em.families._family import Family, Params, Stats
from dask_em.families.independent_missing import missing_ops

_NK_EPS = 10 * np.finfo(np.float64).eps


def _categories(params, n_categories):
    if n_categories is not None:
        return np.asarray(n_categories, dtype=np.intp)
    if "probs" not in params:
        raise ValueError(
            "The categorical family needs the number of categories per feature; build "
            "it with dask_em.families.categorical.make_family(n_categories)."
        )
    return np.count_nonzero(params["probs"][0] > 0, axis=1)


def check_data(X: np.ndarray, n_categories: Sequence[int] | None = None) -> None:
    """Raise a ``ValueError`` naming column and value unless ``0 <= x_d < C_d``.

    A value's code is its integer part (as ``CategoricalNB`` reads it), so
    ``x_d < C_d`` is the range of the codes.
    """
    rule = (
        "each feature must hold integer codes 0 .. n_categories[d] - 1; encode them "
        "first (e.g. sklearn.preprocessing.OrdinalEncoder)"
    )
    raise_if_invalid(X, X < 0, "Categorical", rule + ".", negative=True)
    if n_categories is not None:
        bad = X >= np.asarray(n_categories)[None, :]
        raise_if_invalid(X, bad, "Categorical", rule + " or give a larger n_categories.")


def _codes(X, C):
    """The codes of ``X`` (checked): the integer part of each value, as
    scikit-learn's ``CategoricalNB`` reads its input (``check_array(X, dtype=int)``)."""
    check_data(X, C)
    return X.astype(np.intp)


def log_prob(
    X: np.ndarray,
    params: Params,
    n_categories: Sequence[int] | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """``sum_d log p[k, d, x_d]``.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64 codes (the integer part of each value)
    params : dict with ``probs`` (K, D, C_max)
    n_categories : sequence of int of length D, optional
    offset : ndarray of shape (K,), optional
        Added to every row (see :class:`~dask_em.families.Family`).

    Returns
    -------
    ndarray of shape (n, K)
    """
    C = _categories(params, n_categories)
    codes = _codes(X, C)
    with np.errstate(divide="ignore"):
        logp = np.log(params["probs"])
    out = np.empty((X.shape[0], logp.shape[0]))
    out[:] = 0.0 if offset is None else offset
    for d in range(X.shape[1]):
        out += logp[:, d, codes[:, d]].T
    return out


def suff_stats(X: np.ndarray, resp: np.ndarray, params: Params, n_categories: Sequence[int] | None = None) -> Stats:
    """``counts`` (K, D, C_max): responsibility-weighted code counts.

    ``params`` is read only for the number of categories when ``n_categories`` is
    not bound (it may hold only ``means``, as during initialisation).
    """
    C = _categories(params, n_categories)
    codes = _codes(X, C)
    n, D = codes.shape
    cmax = int(C.max())
    counts = np.empty((resp.shape[1], D, cmax))
    onehot = np.zeros((n, cmax))
    rows = np.arange(n)
    for d in range(D):
        onehot[rows, codes[:, d]] = 1.0
        counts[:, d, :] = dot(resp.T, onehot)
        onehot[rows, codes[:, d]] = 0.0
    return {"counts": counts}


def m_step(stats: Stats, params: Params, alpha: float = 1e-3, n_categories: Sequence[int] | None = None) -> Params:
    """Smoothed probabilities ``(counts + alpha) / (n_k + C_d alpha)``, 0 past ``C_d``."""
    counts = stats["counts"]
    K, D, cmax = counts.shape
    C = np.asarray(n_categories if n_categories is not None else [cmax] * D, dtype=np.intp)
    valid = np.arange(cmax)[None, :] < C[:, None]  # (D, C_max)
    nk = stats["nk"] + _NK_EPS
    probs = (counts + alpha) / (nk[:, None, None] + C[None, :, None] * alpha)
    return {"probs": np.where(valid[None], probs, 0.0)}


def n_parameters(params: Params, n_categories: Sequence[int] | None = None) -> int:
    """``K * sum_d (C_d - 1)`` free probabilities."""
    C = _categories(params, n_categories)
    return int(params["probs"].shape[0] * np.sum(C - 1))


def sample(
    params: Params,
    counts: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    n_categories: Sequence[int] | None = None,
) -> np.ndarray:
    """``counts[k]`` rows of codes (float64) from component ``k``, in component order."""
    probs = params["probs"]
    C = _categories(params, n_categories)
    K, D, _ = probs.shape
    cdf = np.cumsum(probs, axis=2)
    out = []
    for k, count in enumerate(counts):
        u = rng.random((int(count), D, 1))
        codes = np.sum(cdf[k][None] <= u, axis=2)
        out.append(np.minimum(codes, C - 1).astype(np.float64))
    return np.concatenate(out, axis=0) if out else np.empty((0, D))


def check_params(params, n_components, n_features, n_categories=None):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        Must be ``{"probs": ndarray (n_components, n_features, max(C_d))}`` with
        entries in [0, 1], 0 past ``C_d`` codes, and each ``probs[k, d, :C_d]``
        summing to 1 (within 1e-6).
    n_components, n_features : int
    n_categories : sequence of int of length n_features, optional
        ``C_d``; inferred from ``probs`` when not given.
    """
    check_keys(params, ["probs"])
    p = params["probs"]
    if np.ndim(p) != 3:
        raise ValueError(f"probs has {np.ndim(p)} dimensions, not 3 (components, features, codes)")
    C = _categories(params, n_categories)
    check_shape("probs", p, (n_components, n_features, int(C.max(initial=1))))
    check_values("probs", p, ~((p >= 0) & (p <= 1)), "must lie in [0, 1]")
    valid = np.arange(p.shape[2])[None, :] < C[:, None]  # (D, C_max)
    check_values("probs", p, (p != 0) & ~valid[None], "must be 0 past the n_categories[d] codes of feature d")
    total = p.sum(axis=2)
    bad = ~(np.abs(total - 1.0) <= 1e-6)
    if np.any(bad):
        k, d = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"probs[{k}, {d}, :] sums to {total[k, d]:.9g} ({int(np.count_nonzero(bad))} such "
            f"rows); the probabilities of the codes of a feature must sum to 1"
        )


def expected_codes(params: Params) -> np.ndarray:
    """``E[code | k] = sum_c c p[k, d, c]`` (K, D): what ``impute`` gives a missing code
    (a real number; the most probable category is ``probs`` read from ``predict_proba``)."""
    probs = np.asarray(params["probs"], dtype=np.float64)
    return probs @ np.arange(probs.shape[2], dtype=np.float64)


def make_family(n_categories: Sequence[int]) -> Family:
    """The categorical :class:`Family` for ``n_categories[d]`` codes of feature ``d``."""
    C = tuple(int(c) for c in n_categories)
    bind = partial
    return Family(
        name="categorical",
        stacks=True,  # parameters and statistics are K-first arrays
        takes_offset=True,
        log_prob=bind(log_prob, n_categories=C),
        suff_stats=bind(suff_stats, n_categories=C),
        m_step=bind(m_step, n_categories=C),
        n_parameters=bind(n_parameters, n_categories=C),
        sample=bind(sample, n_categories=C),
        check_data=bind(check_data, n_categories=C),
        check_params=bind(check_params, n_categories=C),
        missing=missing_ops(log_prob, suff_stats, {"counts": "probs"}, mean=expected_codes,
                            per_feature={"n_categories": C}),
    )


FAMILY = Family(
    name="categorical",
    stacks=True,  # parameters and statistics are K-first arrays
    takes_offset=True,
    log_prob=log_prob,
    suff_stats=suff_stats,
    m_step=m_step,
    n_parameters=n_parameters,
    sample=sample,
    check_data=check_data,
    check_params=check_params,
)
