"""Gaussian parameters outside the E-step: conversions, shapes, checks, counts, sampling.

The covariance-type-dependent knowledge of :mod:`dask_em.families.gaussian` that does
not touch rows: precision factors from covariances (and the errors when a covariance
is not positive definite or overflowed), conversions between covariances, precisions
and their Cholesky factors, the shapes of each type, the checks of user-given
parameters, the number of free parameters and sampling from the mixture. One small
function per covariance type, picked from a dict keyed by ``covariance_type`` (as in
scikit-learn's ``_gaussian_mixture.py``). Shapes and conventions are in
:mod:`dask_em.families.gaussian`'s docstring.
"""

from typing import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from dask_em.families._family import Params

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

def _pick(table: Mapping[str, Callable], covariance_type: str) -> Callable:
    """``table[covariance_type]``, or a ``ValueError`` that lists the known types."""
    try:
        return table[covariance_type]
    except (KeyError, TypeError):
        known = ", ".join(repr(t) for t in COVARIANCE_TYPES)
        raise ValueError(f"Unknown covariance_type {covariance_type!r}; expected one of {known}.") from None



def _not_positive_definite(component, reg_covar):
    where = "the tied covariance" if component is None else f"component {component}"
    return ValueError(
        f"Fitting the mixture model failed because {where} has an ill-defined "
        f"covariance: it is not positive definite even after adding "
        f"reg_covar={reg_covar:g} to its diagonal. This happens with collapsed "
        f"components (too few distinct rows), duplicated rows or constant features. "
        f"Increase reg_covar (for example to 1e-4), decrease n_components, or "
        f"standardise the features."
    )


def _too_large(cov, means, covariance_type):
    """The error for covariances that overflowed (not finite): values too large to square.

    Names the first such component and its feature of largest variance, or of
    largest mean when that is not known (spherical, or an off-diagonal overflow).
    """
    rows = {
        "full": lambda: np.diagonal(cov, axis1=1, axis2=2),
        "tied": lambda: np.diag(cov)[None],
        "diag": lambda: cov,
        "spherical": lambda: np.repeat(cov[:, None], means.shape[1], axis=1),
    }[covariance_type]()
    bad = ~np.isfinite(rows)
    k = int(np.argwhere(bad)[0][0]) if bad.any() else 0
    j = int(np.argwhere(bad[k])[0][0]) if bad.any() and covariance_type != "spherical" else int(np.argmax(
        np.abs(means[k])))
    where = "the tied covariance" if covariance_type == "tied" else f"the covariance of component {k}"
    if np.isfinite(means[k, j]):
        cause = f"the values of feature {j} (mean {means[k, j]:.3g}) are too large to square in float64"
    else:  # the pass's statistics are NaN: log-densities overflowed in the E-step
        cause = (
            "the statistics of the pass are not finite because the log-densities of some rows overflowed, "
            "which happens with values too large to square in float64 (features near 1e200) or with "
            "initial precisions far too large for the data"
        )
    return ValueError(
        f"Fitting the mixture model failed because {where} is not finite: {cause}. This is not a "
        f"collapsed component: scale the features first, e.g. X / X.std(axis=0) or "
        f"sklearn.preprocessing.StandardScaler."
    )


def _inverse_lower(L):
    """Inverse of lower-triangular matrices (..., D, D), kept exactly triangular."""
    eye = np.broadcast_to(np.eye(L.shape[-1]), L.shape)
    return np.tril(np.linalg.solve(L, eye))


def _precisions_cholesky_matrices(covs, reg_covar, tied):
    """Upper factors (K', D, D) of the inverses of covariance matrices (K', D, D)."""
    if not np.all(np.isfinite(covs)):
        bad = int(np.flatnonzero(~np.isfinite(covs).all(axis=(1, 2)))[0])
        raise _not_positive_definite(None if tied else bad, reg_covar)
    try:
        chol = np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        for k, cov in enumerate(covs):
            try:
                np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise _not_positive_definite(None if tied else k, reg_covar) from None
        raise
    # contiguous, so that a state read back from a file computes bit for bit alike
    return np.ascontiguousarray(np.swapaxes(_inverse_lower(chol), -1, -2))


def _precisions_cholesky_full(covariances, reg_covar):
    return _precisions_cholesky_matrices(covariances, reg_covar, tied=False)


def _precisions_cholesky_tied(covariance, reg_covar):
    return _precisions_cholesky_matrices(covariance[None], reg_covar, tied=True)[0]


def _precisions_cholesky_variances(variances, reg_covar):
    """``1 / sqrt(variances)`` for diag (K, D) and spherical (K,)."""
    bad = ~(variances > 0) | ~np.isfinite(variances)
    if np.any(bad):
        k = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise _not_positive_definite(k, reg_covar)
    return 1.0 / np.sqrt(variances)


_PRECISIONS_CHOLESKY = {
    "full": _precisions_cholesky_full,
    "tied": _precisions_cholesky_tied,
    "diag": _precisions_cholesky_variances,
    "spherical": _precisions_cholesky_variances,
}


def precisions_cholesky_from_covariances(
    covariances: np.ndarray, covariance_type: str, reg_covar: float = 0.0
) -> np.ndarray:
    """Cholesky factors of the precisions (inverse covariances).

    Parameters
    ----------
    covariances : ndarray
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float, default=0.0
        The regularisation already added to ``covariances``; only named in the error.

    Returns
    -------
    precisions_cholesky : ndarray of the shape of ``covariances``
        Upper-triangular ``P`` with ``P @ P.T == inv(covariance)`` (full, tied);
        ``1 / sqrt(covariances)`` (diag, spherical).

    Raises
    ------
    ValueError
        When a covariance is not positive definite (or not finite); the message
        names the component and ``reg_covar``.
    """
    return _pick(_PRECISIONS_CHOLESKY, covariance_type)(covariances, reg_covar)


# --------------------------------------------------------------------------- conversions
def _precisions_from_upper(prec_chol):
    return prec_chol @ np.swapaxes(prec_chol, -1, -2)


def _square(a):
    return a**2


def _flip(a):
    return a[..., ::-1, ::-1]


def _upper_cholesky(precisions):
    """Upper ``P`` with ``P @ P.T == precisions`` (the Cholesky factor of the flipped matrix)."""
    return _flip(np.linalg.cholesky(_flip(precisions)))


def _covariances_from_upper(prec_chol):
    inv = np.linalg.inv(prec_chol)  # P^-1; covariance = P^-T P^-1
    return np.swapaxes(inv, -1, -2) @ inv


def _inverse_square(a):
    return 1.0 / a**2


_PRECISIONS_FROM_CHOLESKY = {
    "full": _precisions_from_upper,
    "tied": _precisions_from_upper,
    "diag": _square,
    "spherical": _square,
}
_CHOLESKY_FROM_PRECISIONS: dict[str, Callable] = {
    "full": _upper_cholesky,
    "tied": _upper_cholesky,
    "diag": np.sqrt,
    "spherical": np.sqrt,
}
_COVARIANCES_FROM_CHOLESKY = {
    "full": _covariances_from_upper,
    "tied": _covariances_from_upper,
    "diag": _inverse_square,
    "spherical": _inverse_square,
}


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precisions (scikit-learn's ``precisions_``) from their factors: ``P @ P.T``
    (full, tied) or ``P ** 2`` (diag, spherical); the shape of ``prec_chol``."""
    return _pick(_PRECISIONS_FROM_CHOLESKY, covariance_type)(prec_chol)


def cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper factor ``P`` with ``P @ P.T == precision`` (full, tied) or ``sqrt`` (diag,
    spherical); the inverse of :func:`precisions_from_cholesky`, same shape."""
    return _pick(_CHOLESKY_FROM_PRECISIONS, covariance_type)(precisions)


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision factors: ``inv(P @ P.T)`` or ``1 / P**2``; same shape."""
    return _pick(_COVARIANCES_FROM_CHOLESKY, covariance_type)(prec_chol)


# --------------------------------------------------------------------------- shapes, checks
_SHAPES = {
    "full": lambda K, D: (K, D, D),
    "tied": lambda K, D: (D, D),
    "diag": lambda K, D: (K, D),
    "spherical": lambda K, D: (K,),
}


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple[int, ...]:
    """Shape of the covariances, precisions and their factors (see the module docstring).

    >>> covariance_shape("diag", 3, 2)
    (3, 2)
    """
    return _pick(_SHAPES, covariance_type)(n_components, n_features)


def _check_positive(p, covariance_type, n_features):
    if np.any(p <= 0):
        raise ValueError(
            f"The parameter 'precisions_init' should be positive for "
            f"covariance_type={covariance_type!r}; got a minimum of {p.min():g}."
        )


def _check_positive_definite(p, covariance_type, n_features):
    D = n_features
    for k, mat in enumerate(p.reshape(-1, D, D)):
        where = "" if covariance_type == "tied" else f" (component {k})"
        if not np.allclose(mat, mat.T):
            raise ValueError(f"The parameter 'precisions_init' should be symmetric{where}.")
        if np.any(np.linalg.eigvalsh(mat) <= 0.0):
            raise ValueError(f"The parameter 'precisions_init' should be positive-definite{where}.")


_CHECK_PRECISIONS = {
    "full": _check_positive_definite,
    "tied": _check_positive_definite,
    "diag": _check_positive,
    "spherical": _check_positive,
}


def check_precisions(
    precisions: ArrayLike, covariance_type: str, n_components: int, n_features: int
) -> np.ndarray:
    """Validate user-given precisions (``precisions_init``), scikit-learn's rules.

    Parameters
    ----------
    precisions : array-like
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    covariance_type : {"full", "tied", "diag", "spherical"}
    n_components, n_features : int
        K and D.

    Returns
    -------
    precisions : ndarray of float64, of the shape above

    Raises
    ------
    ValueError
        When the shape is wrong, a value is NaN or infinite, a diag / spherical
        precision is not positive, or a full / tied one is not symmetric
        positive-definite (the message names the component).
    """
    shape = covariance_shape(covariance_type, n_components, n_features)
    p = np.asarray(precisions, dtype=np.float64)
    if p.shape != shape:
        raise ValueError(
            f"The parameter 'precisions_init' should have the shape {shape} for "
            f"covariance_type={covariance_type!r}, but got {p.shape}."
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("The parameter 'precisions_init' contains NaN or infinite values.")
    _CHECK_PRECISIONS[covariance_type](p, covariance_type, n_features)
    return p


_FULL_COVARIANCES = {
    "full": lambda cov, K, D: cov,
    "tied": lambda cov, K, D: np.broadcast_to(cov, (K, D, D)),
    "diag": lambda cov, K, D: cov[:, :, None] * np.eye(D),
    "spherical": lambda cov, K, D: cov[:, None, None] * np.eye(D),
}


def full_covariances(
    covariances: ArrayLike, covariance_type: str, n_components: int, n_features: int
) -> np.ndarray:
    """Covariances of any type written out as one (D, D) matrix per component.

    Parameters
    ----------
    covariances : array-like
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    covariance_type : {"full", "tied", "diag", "spherical"}
    n_components, n_features : int
        K and D.

    Returns
    -------
    covariances : ndarray of shape (K, D, D), float64
        A read-only broadcast view for tied (the one matrix K times).

    Raises
    ------
    ValueError
        When ``covariances`` does not have the shape of ``covariance_type``.
    """
    shape = covariance_shape(covariance_type, n_components, n_features)
    cov = np.asarray(covariances, dtype=np.float64)
    if cov.shape != shape:
        raise ValueError(
            f"covariances should have the shape {shape} for covariance_type="
            f"{covariance_type!r} with {n_components} components and {n_features} "
            f"features, but got {cov.shape}."
        )
    return _FULL_COVARIANCES[covariance_type](cov, n_components, n_features)


# --------------------------------------------------------------------------- the rest
_N_COVARIANCE_PARAMETERS = {
    "full": lambda K, D: K * D * (D + 1) / 2.0,
    "tied": lambda K, D: D * (D + 1) / 2.0,
    "diag": lambda K, D: K * D,
    "spherical": lambda K, D: K,
}


def n_parameters(params: Params, covariance_type: str) -> int:
    """Free parameters of the means and covariances (not the mixing weights)."""
    K, D = params["means"].shape
    return int(_pick(_N_COVARIANCE_PARAMETERS, covariance_type)(K, D) + K * D)


# standard normal draws z (n, D) given the covariance of component k
def _scale_full(z, covariances, k):
    return z @ np.linalg.cholesky(covariances[k]).T


def _scale_tied(z, covariance, k):
    return z @ np.linalg.cholesky(covariance).T


def _scale_variances(z, variances, k):
    return z * np.sqrt(variances[k])


_SCALE_DRAWS = {
    "full": _scale_full,
    "tied": _scale_tied,
    "diag": _scale_variances,
    "spherical": _scale_variances,
}


def sample(
    params: Params, counts: Sequence[int] | np.ndarray, rng: np.random.Generator, covariance_type: str
) -> np.ndarray:
    """``counts[k]`` draws from each component, stacked in component order.

    Parameters
    ----------
    params : dict
        ``means`` (K, D) and ``covariances`` (shape of ``covariance_type``).
    counts : sequence of int of length K
    rng : numpy.random.Generator
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    X : ndarray of shape (sum(counts), D)
    """
    means, cov = params["means"], params["covariances"]
    D = means.shape[1]
    scale = _pick(_SCALE_DRAWS, covariance_type)
    out = []
    for k, count in enumerate(counts):
        z = rng.standard_normal((int(count), D))
        out.append(means[k] + scale(z, cov, k))
    return np.concatenate(out, axis=0) if out else np.empty((0, D))


def check_params(params, n_components, n_features, covariance_type):
    """Raise a ``ValueError`` saying what is wrong unless ``params`` are valid.

    Parameters
    ----------
    params : dict
        ``means`` (K, D) finite; ``precisions_cholesky`` of the shape in the module
        table, finite, upper triangular with a positive diagonal (full, tied) or
        positive (diag, spherical), so every precision is positive definite;
        ``covariances`` equal to the inverse precisions (relative tolerance 1e-6).
    n_components, n_features : int
        K and D.
    covariance_type : {"full", "tied", "diag", "spherical"}
    """
    from dask_em.families._checks import check_keys, check_shape, check_values

    K, D = n_components, n_features
    shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]
    check_keys(params, ["means", "covariances", "precisions_cholesky"])
    means, cov, chol = params["means"], params["covariances"], params["precisions_cholesky"]
    check_shape("means", means, (K, D))
    check_values("means", means, ~np.isfinite(means), "must be finite")
    check_shape("precisions_cholesky", chol, shape)
    check_shape("covariances", cov, shape)
    check_values("precisions_cholesky", chol, ~np.isfinite(chol), "must be finite")
    if covariance_type in ("full", "tied"):
        lower = np.tril(np.ones((D, D), dtype=bool), -1)
        check_values("precisions_cholesky", chol, (chol != 0) & lower, "must be upper triangular")
        diagonal = np.diagonal(chol, axis1=-2, axis2=-1)
        check_values("precisions_cholesky diagonal", diagonal, ~(diagonal > 0), "must be > 0")
        expected = covariances_from_cholesky(chol, covariance_type)
        scale = np.sqrt(np.abs(np.diagonal(expected, axis1=-2, axis2=-1)))
        scale = scale[..., :, None] * scale[..., None, :]
    else:
        check_values("precisions_cholesky", chol, ~(chol > 0), "must be > 0")
        expected = covariances_from_cholesky(chol, covariance_type)
        scale = expected
    check_values(
        "covariances",
        cov,
        ~(np.abs(cov - expected) <= 1e-6 * scale),
        "must equal the inverse of the precisions given by precisions_cholesky",
    )
