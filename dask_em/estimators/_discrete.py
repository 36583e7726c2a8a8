"""What the discrete mixtures (Bernoulli, Poisson, categorical) share: smoothing,
starting points, and the support check of in-memory data."""

import numpy as np

from dask_em._validation import Interval, Options
from dask_em.engine import MixtureState
from dask_em.estimators._base import MIXTURE_CONSTRAINTS, BaseMixture
from dask_em.estimators._init_checks import check_weights_init
from dask_em.settings import SAMPLE_EM_MAX_STEPS, sample_em_tol
from dask_em.initialization import INIT_METHODS
from dask_em.sample_init import initialize_on_sample


#: Constraints of the parameters the discrete mixtures share.
DISCRETE_CONSTRAINTS = {
    **MIXTURE_CONSTRAINTS,
    "alpha": [Interval("float", 0, None, "neither")],
    "init_params": [Options(INIT_METHODS)],
}


class DiscreteMixture(BaseMixture):
    """Base of the mixtures of discrete features; not for direct use.

    Subclasses set ``_param`` (the family's parameter key; the attribute is
    ``<_param>_`` and the starting value ``<_param>_init``) and implement
    ``_family`` and ``_check_param_init(value, K, D)``.
    """

    _param = "means"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # counts, codes, 0/1: negative values are an error
        return tags

    # -- validation -------------------------------------------------------------
    def _support_check(self):
        return self._family().check_data

    def _check_init_params(self, n_features):
        K = self.n_components
        if self.weights_init is not None:
            check_weights_init(self.weights_init, K)
        given = getattr(self, f"{self._param}_init")
        if given is not None:
            self._check_param_init(given, K, n_features)

    # -- engine plumbing ----------------------------------------------------------
    def _m_step_options(self):
        return {"alpha": self.alpha}

    def _given_inits(self):
        given = getattr(self, f"{self._param}_init")
        if self._param == "means":
            return [self.weights_init, given]
        return [given]  # probs alone make a start (uniform weights)

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        K = self.n_components
        given = getattr(self, f"{self._param}_init")
        init_weights = None if self.weights_init is None else np.asarray(self.weights_init, dtype=np.float64)
        if all(g is not None for g in self._given_inits()):
            init_weights = np.full(K, 1.0 / K) if init_weights is None else init_weights
            params = {self._param: np.array(given, dtype=np.float64)}
            return [MixtureState(init_weights.copy(), {k: v.copy() for k, v in params.items()}) for _ in seeds]
        starts = initialize_on_sample(
            rows,
            family,
            K,
            self.init_params,
            seeds,
            weights=weights,
            centers=given,
            options=options,
            em_on_sample=em_on_sample and given is None and init_weights is None,
            tol=sample_em_tol(self.tol),
            max_iter_sample=SAMPLE_EM_MAX_STEPS,
            rank=len(seeds) > 1,
        )
        states = [start.state for start in starts]
        for state in states:
            if init_weights is not None:
                state.weights = init_weights.copy()
            if given is not None:
                state.params[self._param] = np.array(given, dtype=np.float64)
        return states

    def _get_state(self):
        return MixtureState(weights=self.weights_, params={self._param: getattr(self, f"{self._param}_")})

    def _set_state(self, state):
        self.weights_ = state.weights
        setattr(self, f"{self._param}_", state.params[self._param])


def check_means_in(owner_name, value, K, D, low, high):
    """``means_init`` must be (K, D) with entries in the open interval (low, high)."""
    m = np.asarray(value, dtype=np.float64)
    if m.shape != (K, D):
        raise ValueError(f"The parameter 'means_init' should have the shape {(K, D)}, but got {m.shape}.")
    if not np.all((m > low) & (m < high)):
        raise ValueError(
            f"The parameter 'means_init' of {owner_name} should hold values in the open "
            f"interval ({low}, {high}), but got min {m.min():g}, max {m.max():g}."
        )
