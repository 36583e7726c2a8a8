"""BayesianGaussianMixture: scikit-learn's variational Gaussian mixture on chunked data.

The math is :mod:`dask_em.families.bayesian_gaussian`; the fit is the one pipeline
(:func:`dask_em.fitting.fit_models`) with three things of its own, all here:

- the starts are completed by one pass over the data (:meth:`BayesianGaussianMixture._complete_starts`):
  the one-hot assignment of every row to its nearest starting mean gives the
  initial responsibilities, whose statistics give the first variational M-step
  (scikit-learn's ``_initialize(X, resp)``) and, summed over components, the
  data's mean and covariance, the default ``mean_prior`` and ``covariance_prior``
  (a stepwise fit and ``partial_fit`` complete them on the initialisation sample
  instead, without a pass);
- the stopping rule is the change of the lower bound (:class:`LowerBoundChange`),
  computed from each pass's statistics and the new parameters;
- the fitted attributes are scikit-learn's (``weight_concentration_`` and the rest).
"""

import logging
import math
import warnings

import numpy as np

from dask_em._validation import Interval, Options
from dask_em.engine import EMResult, MixtureState, estep_block, m_step, run_pass
from dask_em.estimators._base import MIXTURE_CONSTRAINTS, BaseMixture
from dask_em.estimators._facade import _EDGE_DOC
from dask_em.estimators._init_checks import check_array_init
from dask_em.families import bayesian_gaussian as vb
from dask_em.families.gaussian import COVARIANCE_TYPES, precisions_from_cholesky
from dask_em.settings import accelerate_setting
from dask_em.initialization import INIT_METHODS
from dask_em.sample_init import initialize_on_sample

logger = logging.getLogger("dask_em")


class LowerBoundChange:
    """Stopping rule of variational EM: the lower bound changed by less than ``tol``.

    Called after every M-step (see :class:`~dask_em.engine.loop.LikelihoodChange`):
    computes the bound from the pass's ``resp_log_resp`` and the new parameters
    (scikit-learn's ``_compute_lower_bound``), stores it as ``result.lower_bound``
    and in the last history entry (``lower_bound``, and ``change`` replaced by its
    change), and compares it with the previous one (``initial`` before the first:
    ``-inf``, or the fitted ``lower_bound_`` of a warm start).
    """

    def __init__(self, tol, covariance_type, prior_type, initial=-math.inf):
        self.tol, self.covariance_type, self.prior_type, self.initial = tol, covariance_type, prior_type, initial

    def __call__(self, result, stats, old_state, change):
        bound = vb.lower_bound(stats["resp_log_resp"], result.state.params, self.covariance_type, self.prior_type)
        previous = next((h["lower_bound"] for h in reversed(result.history[:-1]) if "lower_bound" in h), self.initial)
        change = bound - previous
        result.history[-1].update(lower_bound=bound, change=change)
        result.lower_bound = bound
        logger.info("iteration %d: lower bound %.10g, change %.3g", result.n_iter, bound, change)
        return abs(change) < self.tol

    def exact_last_pass(self, result):
        return False


class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture fitted on chunked (larger-than-memory) data.

    A drop-in for :class:`sklearn.mixture.BayesianGaussianMixture`: same
    parameters, defaults and attributes, and from the same initial responsibilities
    the same results. Each iteration is one pass over the data and one
    ``dask.compute``; the lower bound comes from that pass's statistics (plus
    ``sum r log r`` of the responsibilities), never from a second pass. With a
    Dirichlet-process prior and a generous ``n_components``, the weights of the
    components the data do not need fall towards zero: K is chosen by the fit,
    without a BIC sweep.

    Passes (``algorithm="em"``): the initialisation sample (one pass; none with
    ``means_init``), one pass that assigns every row to its nearest starting mean
    and takes the data's mean and covariance (the default priors), then one pass
    per iteration. ``algorithm="stepwise"`` (stochastic variational inference)
    takes the initial posterior and the priors from the sample instead, then its
    stepwise passes and the batch finish. ``partial_fit`` is one SVI step per
    batch, with the rows seen so far as the data size: the posterior is what a
    batch fit of all of them would weigh against the priors (see
    :func:`dask_em.partial_fit.partial_fit_step`); the priors taken from the data are
    those of the first batch, and ``lower_bound_`` is then, as for the other
    models, the batch's mean E-step log-normaliser (not the lower bound).

    Parameters
    ----------
    n_components : int, default=1
        Most components K; the fit may use fewer.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Stops when the lower bound (summed over rows, as scikit-learn's) changes by
        less than ``tol``. It grows with the number of rows: scale ``tol`` with it.
    reg_covar : float, default=1e-6
        Added to the diagonal of the empirical covariances.
    max_iter : int, default=100
        Most iterations (passes).
    n_init : int, default=1
        Number of starts; the one of highest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the starting means are chosen, on the initialisation sample (as for
        :class:`~dask_em.GaussianMixture`). For every method, the initial
        responsibilities are the one-hot assignment of every row to its nearest
        starting mean (scikit-learn's ``"kmeans"`` rule; scikit-learn's other
        methods start from random or seed-row responsibilities instead).
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}, \
default="dirichlet_process"
        Stick-breaking (Dirichlet process) or Dirichlet prior on the weights.
    weight_concentration_prior : float, default=None
        Concentration of the weights' prior (gamma); None: ``1 / n_components``.
        Smaller values put the mass on fewer components.
    mean_precision_prior : float, default=None
        Precision prior of the means (beta_0); None: 1.
    mean_prior : array-like of shape (n_features,), default=None
        Prior of the means (m_0); None: the data's mean.
    degrees_of_freedom_prior : float, default=None
        Degrees of freedom of the precisions' Wishart prior (nu_0), > n_features - 1;
        None: ``n_features``.
    covariance_prior : float or array-like, default=None
        Covariance prior (W_0^-1): (D, D) full / tied, (D,) diag, float spherical;
        None: the data's covariance (``np.cov(X.T)``, its diagonal, or its mean
        variance).
    means_init : array-like of shape (n_components, n_features), default=None
        Starting means: the initial responsibilities are the one-hot nearest-mean
        assignment of every row (no sampling pass). Gives a warm start from a
        :class:`~dask_em.GaussianMixture`, and an exact common start with
        scikit-learn (which starts from one-hot k-means labels).
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation and of :meth:`sample`.
    warm_start : bool, default=False
        If True and fitted, ``fit`` continues from the current parameters; the
        priors taken from the data are taken again (as scikit-learn does).
    verbose : int, default=0
        0: silent unless logging is configured; 1: one log line per iteration on
        stderr, or in a Jupyter notebook one progress line updated in place; 2: also
        initialisation details (log lines).
    {edge}
        For this model ``"stepwise"`` is stochastic variational inference
        (Hoffman et al. 2013): after each mini-batch the posterior's parameters
        are the priors plus the running statistics at full-data scale, which is
        the natural-gradient step of SVI; the initial posterior and the priors
        taken from the data come from the initialisation sample; batch
        variational passes finish, so ``lower_bound_`` is the exact lower bound.
        ``dask_em.accelerate`` (SQUAREM) does not apply to it (a warning says so).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Mean posterior weights.
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes as :class:`~dask_em.GaussianMixture`'s (scikit-learn's normalised
        posterior covariances).
    weight_concentration_prior_ : float
    weight_concentration_ : tuple of two ndarray (n_components,) or ndarray (n_components,)
        Beta parameters of the stick breaking (Dirichlet process) or Dirichlet
        parameters.
    mean_precision_prior_ : float
    mean_precision_ : ndarray of shape (n_components,)
    mean_prior_ : ndarray of shape (n_features,)
    degrees_of_freedom_prior_ : float
    degrees_of_freedom_ : ndarray of shape (n_components,), a float for tied
    covariance_prior_ : float or ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Lower bound of the best start after its last iteration.
    lower_bounds_ : list of float
        Lower bound after every iteration of the best start.
    history_ : list of dict
    n_features_in_ : int
    """

    _parameter_constraints = {
        **{k: v for k, v in MIXTURE_CONSTRAINTS.items() if k != "weights_init"},
        "covariance_type": [Options(COVARIANCE_TYPES)],
        "reg_covar": [Interval("float", 0, None, "left")],
        "init_params": [Options(INIT_METHODS)],
        "weight_concentration_prior_type": [Options(vb.PRIOR_TYPES)],
        "weight_concentration_prior": [None, Interval("float", 0.0, None, "neither")],
        "mean_precision_prior": [None, Interval("float", 0.0, None, "neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval("float", 0.0, None, "neither")],
        "covariance_prior": [None, "array-like", Interval("float", 0.0, None, "neither")],
        "means_init": ["array-like", None],
    }
    _saved_attributes = BaseMixture._saved_attributes

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        means_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        nan_policy=None,
        persist="auto",
        algorithm="auto",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.means_init = means_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.nan_policy = nan_policy
        self.persist = persist
        self.algorithm = algorithm

    # -- validation -------------------------------------------------------------
    def _check_init_params(self, n_features):
        K, D = self.n_components, n_features
        if self.means_init is not None:
            check_array_init("means_init", self.means_init, (K, D))
        if self.mean_prior is not None:
            check_array_init("mean_prior", self.mean_prior, (D,))
        if self.degrees_of_freedom_prior is not None and not self.degrees_of_freedom_prior > D - 1.0:
            raise ValueError(
                f"The parameter 'degrees_of_freedom_prior' should be greater than {D - 1}, "
                f"but got {self.degrees_of_freedom_prior:.3f}."
            )
        if self.covariance_prior is not None:
            self._covariance_prior(D)

    def _covariance_prior(self, D):
        """The given ``covariance_prior``, checked as scikit-learn does, as float64."""
        cov_type = self.covariance_type
        if cov_type == "spherical":
            value = np.asarray(self.covariance_prior, dtype=np.float64)
            if value.shape != () or not value > 0:
                raise ValueError(
                    f"The parameter 'spherical covariance_prior' should be a positive float, "
                    f"but got {self.covariance_prior!r}."
                )
            return value
        shape = (D, D) if cov_type in ("full", "tied") else (D,)
        value = check_array_init(f"{cov_type} covariance_prior", self.covariance_prior, shape)
        if cov_type == "diag":
            if np.any(value <= 0):
                raise ValueError(f"'{cov_type} covariance_prior' should be positive")
        elif not np.allclose(value, value.T) or np.any(np.linalg.eigvalsh(value) <= 0.0):
            raise ValueError(f"'{cov_type} covariance_prior' should be symmetric, positive-definite")
        return value

    # -- engine plumbing ----------------------------------------------------------
    def _family(self):
        return vb.FAMILIES[(self.covariance_type, self.weight_concentration_prior_type)]

    def _m_step_options(self):
        return {"reg_covar": self.reg_covar}

    def _given_inits(self):
        return [self.means_init]

    def _initial_states(self, rows, weights, family, seeds, options, em_on_sample):
        """Starting means per seed (completed by :meth:`_complete_starts`)."""
        K = self.n_components
        if self.means_init is not None:
            means = [np.array(self.means_init, dtype=np.float64) for _ in seeds]
        else:
            plain = vb.ASSIGN_FAMILIES[self.covariance_type]
            # a stepwise fit keeps the best start only: hard EM on the sample (Lloyd)
            # ranks them by their summed squared distances
            starts = initialize_on_sample(
                rows, plain, K, self.init_params, seeds, weights=weights,
                options={"reg_covar": self.reg_covar}, em_on_sample=em_on_sample, rank=len(seeds) > 1,
            )
            means = [s.state.params["means"] for s in starts]
        return [MixtureState(np.full(K, 1.0 / K), {"means": m}) for m in means]

    def _given_priors(self, n_features):
        """The priors that do not depend on the data, as 0-d / 1-d / 2-d float64 arrays."""
        priors = {
            "weight_concentration_prior": np.asarray(
                1.0 / self.n_components if self.weight_concentration_prior is None
                else self.weight_concentration_prior, dtype=np.float64),
            "mean_precision_prior": np.asarray(
                1.0 if self.mean_precision_prior is None else self.mean_precision_prior, dtype=np.float64),
            "degrees_of_freedom_prior": np.asarray(
                n_features if self.degrees_of_freedom_prior is None else self.degrees_of_freedom_prior,
                dtype=np.float64),
        }
        if self.mean_prior is not None:
            priors["mean_prior"] = np.array(self.mean_prior, dtype=np.float64)
        if self.covariance_prior is not None:
            priors["covariance_prior"] = self._covariance_prior(n_features)
        return priors

    def _complete_starts(self, prepared, results, check, sample=None):
        """One pass: the nearest-mean assignment of every row to each start's means.

        Its statistics give each cold start's first variational M-step (from one-hot
        responsibilities, scikit-learn's ``_initialize``) and, summed over
        components, the data's mean and covariance (the default priors). A warm
        start keeps its parameters and takes the priors again; when every prior is
        given, it makes no pass. Under ``nan_policy="marginalize"`` the pass
        reads the rows without NaN only. With the initialisation ``sample`` (a stepwise fit,
        ``partial_fit``'s first batch) cold starts are completed on it instead, in
        memory: its statistics scaled to the rows it stands for give the same
        M-step and priors, estimated (exact when it holds every row).
        """
        family = self._family()
        D = prepared.n_features
        priors = self._given_priors(D)
        warm = "weight_concentration" in results[0].state.params
        if warm and "mean_prior" in priors and "covariance_prior" in priors:
            for r in results:
                r.state.params.update(priors)
            return results
        assign = vb.ASSIGN_FAMILIES[self.covariance_type]
        centers = [np.asarray(r.state.params["means"], dtype=np.float64) for r in results]
        states = [MixtureState(np.full(len(c), 1.0 / len(c)), {"means": c}) for c in centers]
        if sample is not None and not warm:
            stats_list = sample.stats(assign, states)
        else:
            stats_list = run_pass(
                prepared.X, estep_block, (assign, states), name=f"init-{family.name}",
                extra=prepared.weights, row_wise=True,
            )
            if prepared.nan_policy == "marginalize":  # the EM passes check and count the rows with gaps
                logger.info("initial posterior and data priors from the %d rows without NaN",
                            stats_list[0]["n_rows"])
            else:
                check(stats_list[0])
        n_rows = float(np.sum(stats_list[0]["nk"]))
        if "covariance_prior" not in priors and n_rows < 2:
            rows = "rows without NaN" if prepared.nan_policy == "marginalize" else "rows"
            raise ValueError(
                f"BayesianGaussianMixture takes covariance_prior from the data, which needs at least 2 {rows}, "
                f"but got n_samples = {n_rows:g}; give more {rows} or a covariance_prior."
            )
        mean, cov = vb.data_priors(stats_list[0], centers[0], self.covariance_type)
        priors.setdefault("mean_prior", mean)
        priors.setdefault("covariance_prior", cov)
        logger.debug("priors: mean_prior %s, covariance_prior %s", priors["mean_prior"], priors["covariance_prior"])
        out = []
        for r, c, stats in zip(results, centers, stats_list):
            if warm:
                r.state.params.update(priors)
                out.append(r)
            else:
                start = MixtureState(np.full(len(c), 1.0 / len(c)), {"means": c, **priors})
                out.append(EMResult(state=m_step(family, stats, start, self._m_step_options())))
        return out

    def _model_spec(self, prepared):
        if accelerate_setting():
            warnings.warn(
                "dask_em.accelerate=True does not apply to BayesianGaussianMixture: SQUAREM judges an "
                "extrapolated point by its E-step's log-likelihood, which is not the variational objective "
                "(the ELBO of an arbitrary posterior needs its full KL to the prior), and extrapolated "
                "posterior parameters can leave their domain; the fit runs plain variational passes.",
                UserWarning,
                stacklevel=3,
            )
        spec = super()._model_spec(prepared)
        initial = spec.warm.lower_bound if spec.warm is not None else -math.inf
        spec.stopping = LowerBoundChange(self.tol, self.covariance_type, self.weight_concentration_prior_type,
                                         initial)
        spec.complete_starts = self._complete_starts
        return spec

    def _set_fitted(self, result, prepared):
        super()._set_fitted(result, prepared)
        self.lower_bounds_ = [h["lower_bound"] for h in result.best.history if "lower_bound" in h]

    def _get_state(self):
        wc = self.weight_concentration_
        if isinstance(wc, tuple):
            wc = np.stack(wc, axis=1)
        return MixtureState(
            weights=self.weights_,
            params={
                "means": self.means_,
                "covariances": self.covariances_,
                "precisions_cholesky": self.precisions_cholesky_,
                "weight_concentration": wc,
                "mean_precision": self.mean_precision_,
                "degrees_of_freedom": np.asarray(self.degrees_of_freedom_),
                "mean_prior": self.mean_prior_,
                "covariance_prior": np.asarray(self.covariance_prior_),
                "mean_precision_prior": np.asarray(self.mean_precision_prior_),
                "degrees_of_freedom_prior": np.asarray(self.degrees_of_freedom_prior_),
                "weight_concentration_prior": np.asarray(self.weight_concentration_prior_),
            },
        )

    def _set_state(self, state):
        p = state.params
        self.weights_ = state.weights
        self.means_ = p["means"]
        self.covariances_ = p["covariances"]
        self.precisions_cholesky_ = p["precisions_cholesky"]
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)
        wc = p["weight_concentration"]
        self.weight_concentration_ = (wc[:, 0], wc[:, 1]) if wc.ndim == 2 else wc
        self.mean_precision_ = p["mean_precision"]
        dof = p["degrees_of_freedom"]
        self.degrees_of_freedom_ = dof.item() if dof.ndim == 0 else dof
        self.mean_prior_ = p["mean_prior"]
        cov_prior = p["covariance_prior"]
        self.covariance_prior_ = cov_prior.item() if cov_prior.ndim == 0 else cov_prior
        self.mean_precision_prior_ = p["mean_precision_prior"].item()
        self.degrees_of_freedom_prior_ = p["degrees_of_freedom_prior"].item()
        self.weight_concentration_prior_ = p["weight_concentration_prior"].item()


BayesianGaussianMixture.__doc__ = BayesianGaussianMixture.__doc__.replace("{edge}", _EDGE_DOC)

__all__ = ["BayesianGaussianMixture", "LowerBoundChange"]
