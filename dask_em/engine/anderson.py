"""Anderson acceleration of hard-assignment EM (Lloyd's algorithm), one pass per point.

On overlapping clusters Lloyd's iteration ``x -> G(x)`` (assign every row to its
nearest centre, move each centre to its rows' mean) converges linearly and slowly:
its squared centre shift shrank by only 10-20% per pass, so from a stepwise estimate Lloyd
needed 12 passes to meet its tolerance on a 3,000,000-row store (benchmarks/README.md).
Anderson acceleration (type II, depth ``m``; Walker & Ni 2011, "Anderson acceleration
for fixed-point iterations", SIAM J. Numer. Anal. 49, 1715-1735; applied to Lloyd by
Zhang, Yao, Peng, Yu & Deng 2018, "Fast K-Means Clustering with Anderson
Acceleration", arXiv:1805.10638) keeps the last ``m + 1`` evaluated points ``x_i`` and
their steps ``g_i = G(x_i)`` and moves to::

    f_i = g_i - x_i,   gamma = argmin || f_last - dF gamma ||,   x' = g_last - dG gamma

where ``dF`` and ``dG`` hold the differences of successive ``f_i`` and ``g_i``. Each pass
evaluates one point (it gives that point's objective and its step ``G``), so the
acceleration costs no pass of its own, unlike SQUAREM's three-pass cycle
(:mod:`dask_em.engine.accelerate`), which is longer than a stepwise fit's finish.

Safeguard. A hard-assignment E-step's mean log-likelihood (minus the mean squared
distance, for k-means) never decreases along plain Lloyd steps. An evaluated point
whose objective is below that of the last accepted point is rejected: the history is
cleared and the next pass evaluates the plain step of that accepted point (its
``G``, kept from its pass), so a rejection costs one pass. An extrapolation that is
not finite is not evaluated (the plain step is). Only the family's ``params`` are
extrapolated; the mixing weights are those of the plain step.

Stopping is the caller's rule, applied to every evaluated point and its step (for
k-means, the centre shift ``|G(x) - x|^2``): a point that passes it is a point whose
own Lloyd step moves less than the tolerance, whatever produced it.
"""

import numpy as np

from dask_em.engine.estep import MixtureState

#: The kinds of point a pass evaluates (``Anderson.update``'s return value).
PLAIN, EXTRAPOLATED, REJECTED = "plain", "extrapolated", "rejected"


def _flatten(params):
    return np.concatenate([np.ravel(np.asarray(params[k], dtype=np.float64)) for k in sorted(params)])


def _unflatten(vector, like):
    out, i = {}, 0
    for k in sorted(like):
        a = np.asarray(like[k])
        out[k] = vector[i:i + a.size].reshape(a.shape).astype(a.dtype, copy=False)
        i += a.size
    return out


class Anderson:
    """Anderson acceleration of one start's passes.

    Parameters
    ----------
    state : MixtureState
        The first point to evaluate.
    lower_bound : float, optional
        Mean log-likelihood of the last accepted point (a resumed fit's), or -inf.
    depth : int, optional
        ``m``: the number of differences the least-squares step uses.

    Attributes
    ----------
    state : MixtureState
        The point the next pass evaluates.
    extrapolated : bool
        Whether ``state`` is an extrapolation (else a plain step).
    best : float
        Mean log-likelihood of the last accepted point.
    plain : MixtureState or None
        The plain step of the last accepted point (where a rejection goes).
    xs, gs : list of ndarray
        The last ``depth + 1`` accepted points and their plain steps, flattened.

    A checkpoint saves all of them (:func:`dask_em.persistence.write_checkpoint`),
    so a resumed fit continues the same sequence bit for bit.
    """

    def __init__(self, state, lower_bound=-np.inf, depth=2):
        self.state = state
        self.depth = depth
        self.best = lower_bound
        self.plain = None  # the plain step of the last accepted point
        self.xs, self.gs = [], []
        self.extrapolated = False  # whether ``state`` is an extrapolation

    def update(self, mean_ll, plain):
        """Take the pass that evaluated ``self.state``: its mean log-likelihood and its
        plain step ``plain = M(E(state))``; choose the next point.

        Returns
        -------
        kind : str
            What the evaluated point was judged: ``"plain"`` or ``"extrapolated"``
            (accepted), or ``"rejected"``.
        """
        kind = EXTRAPOLATED if self.extrapolated else PLAIN
        if mean_ll < self.best and self.plain is not None:
            self.xs, self.gs = [], []
            self.state, self.extrapolated = self.plain, False
            return REJECTED
        self.best, self.plain = mean_ll, plain
        self.xs.append(_flatten(self.state.params))
        self.gs.append(_flatten(plain.params))
        self.xs, self.gs = self.xs[-(self.depth + 1):], self.gs[-(self.depth + 1):]
        self.state, self.extrapolated = plain, False
        if len(self.xs) >= 2:
            f = [g - x for x, g in zip(self.xs, self.gs)]
            dF = np.stack([b - a for a, b in zip(f, f[1:])], axis=1)
            dG = np.stack([b - a for a, b in zip(self.gs, self.gs[1:])], axis=1)
            gamma = np.linalg.lstsq(dF, f[-1], rcond=None)[0]
            x = self.gs[-1] - dG @ gamma
            if np.all(np.isfinite(x)):
                self.state = MixtureState(plain.weights, _unflatten(x, plain.params))
                self.extrapolated = True
        return kind
