"""select_n_components: shared passes, BIC/AIC against scikit-learn, best K."""

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGM

from dask_em import GaussianMixture, PoissonMixture, select_n_components


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(m, 1.0, (300, 2)) for m in (-6.0, 0.0, 6.0)])


class _Count(dask.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


def test_gaussian_table_matches_sklearn_bic_and_separate_fits(X):
    Xd = da.from_array(X, chunks=(250, -1))
    template = GaussianMixture(init_params="random_from_data", n_init=2, random_state=0, persist=False, algorithm="em")
    count = _Count()
    with count:
        sel = select_n_components(template, Xd, [1, 2, 3, 4], covariance_types=["full", "diag"])
    assert len(sel.table) == 8
    n_iters = {cov: max(r["n_iter"] for r in sel.table if r["covariance_type"] == cov) for cov in ("full", "diag")}
    # one sampling pass initialises every candidate; per covariance type: shared EM passes, one score pass
    assert count.n == 1 + sum(n + 1 for n in n_iters.values())
    for row, est in zip(sel.table, sel.estimators):
        sk = SkGM(row["n_components"], covariance_type=row["covariance_type"])
        sk.weights_, sk.means_, sk.covariances_ = est.weights_, est.means_, est.covariances_
        sk.precisions_cholesky_ = est.precisions_cholesky_
        assert row["bic"] == pytest.approx(sk.bic(X), rel=1e-10)
        assert row["aic"] == pytest.approx(sk.aic(X), rel=1e-10)
        alone = template.set_params(n_components=row["n_components"], covariance_type=row["covariance_type"])
        alone = GaussianMixture(**alone.get_params()).fit(Xd)
        assert alone.bic(Xd) == pytest.approx(row["bic"], rel=1e-10)
    best = sel.best_estimator
    assert best.n_components == 3 and best is sel.estimators[int(np.argmin([r["bic"] for r in sel.table]))]


def test_poisson_picks_true_k():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.poisson(lam, (400, 4)) for lam in (1.0, 6.0, 15.0)])
    sel = select_n_components(PoissonMixture(random_state=0, n_init=2), da.from_array(X, chunks=(300, -1)),
                              range(1, 6), criterion="aic")
    assert sel.best_estimator.n_components == 3
    assert sel.criterion == "aic"


def test_errors(X):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    with pytest.raises(TypeError, match="needs a dask-em estimator"):
        select_n_components(SkGaussianMixture(), X, [2, 3])
    with pytest.raises(ValueError, match="GaussianMixture only"):
        select_n_components(PoissonMixture(), X, [2], covariance_types=["full"])
    with pytest.raises(ValueError, match="criterion"):
        select_n_components(GaussianMixture(), X, [2], criterion="icl")
