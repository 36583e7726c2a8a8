"""Run by ``test_dask_ml_incremental.py`` in a child Python that has dask-ml on its path.

``partial_fit`` inside dask-ml's real ``Incremental`` wrapper: the Gaussian mixture
reaches scikit-learn's fit with the blocks in dask-ml's shuffled order, ``predict``
through the wrapper stays lazy and labels the rows as scikit-learn does, and KMeans
with the blocks in order equals feeding them to ``partial_fit`` by hand.
Prints ``ok`` when every check passed; an assertion error exits non-zero.
"""

import dask.array as da
import numpy as np
from dask_ml.wrappers import Incremental
from scipy import optimize
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import GaussianMixture, KMeans


def _align(got, want):
    cost = ((got[:, None, :] - want[None, :, :]) ** 2).sum(axis=2)
    _, cols = optimize.linear_sum_assignment(cost)
    return cols.argsort()


def main():
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=6.0, size=(3, 3))
    X = np.concatenate([rng.normal(c, 1.0, (10_000, 3)) for c in centers])[rng.permutation(30_000)]
    Xd = da.from_array(X, chunks=(1_500, -1))

    sk = SkGaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    inc = Incremental(GaussianMixture(3, random_state=0), random_state=0).fit(Xd)
    gm = inc.estimator_
    assert isinstance(gm, GaussianMixture), type(gm)
    assert gm.n_iter_ == Xd.numblocks[0], (gm.n_iter_, Xd.numblocks)  # one update per block
    assert abs(gm.score(X) - sk.score(X)) < 1e-3, (gm.score(X), sk.score(X))
    order = _align(gm.means_, sk.means_)
    np.testing.assert_allclose(gm.means_[order], sk.means_, atol=0.05)

    labels = inc.predict(Xd)  # dask-ml maps predict over the blocks, lazily
    assert isinstance(labels, da.Array), type(labels)
    to_sk = np.empty(3, dtype=int)
    to_sk[order] = np.arange(3)
    agree = np.mean(to_sk[labels.compute()] == sk.predict(X))
    assert agree > 0.999, agree

    by_hand = KMeans(3, random_state=0)
    for block in Xd.blocks:
        by_hand.partial_fit(block.compute())
    km = Incremental(KMeans(3, random_state=0), shuffle_blocks=False).fit(Xd).estimator_
    np.testing.assert_array_equal(km.cluster_centers_, by_hand.cluster_centers_)
    print("ok")


if __name__ == "__main__":
    main()
