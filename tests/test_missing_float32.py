"""float32 rows with gaps (nan_policy="marginalize"): outputs keep the data's dtype, as for
rows without gaps (scikit-learn's dtype preservation), and agree with the float64 results."""

import dask.array as da
import numpy as np
import pytest

from dask_em import GaussianMixture, KMeans, PoissonMixture


def _gappy32(seed=0, n=400):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 1.0], [1.0, 5.0, 5.0]])
    X = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, 3))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[7] = np.nan
    return X.astype(np.float32)


def _outputs(model, X):
    if isinstance(model, KMeans):
        return {"transform": model.transform(X), "impute": model.impute(X)}
    return {"predict_proba": model.predict_proba(X), "score_samples": model.score_samples(X),
            "impute": model.impute(X)}


MODELS = {
    "gaussian-full": lambda: GaussianMixture(3, random_state=0),
    "gaussian-diag": lambda: GaussianMixture(3, covariance_type="diag", random_state=0),
    "poisson": lambda: PoissonMixture(3, random_state=0),
    "kmeans": lambda: KMeans(3, random_state=0),
}


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("name", list(MODELS))
def test_float32_rows_with_gaps_give_float32_outputs(name, kind):
    X32 = _gappy32()
    if name == "poisson":
        X32 = np.where(np.isnan(X32), np.nan, np.abs(np.round(X32))).astype(np.float32)
    model = MODELS[name]().set_params(nan_policy="marginalize").fit(X32)
    model64 = MODELS[name]().set_params(nan_policy="marginalize").fit(X32.astype(np.float64))
    data = X32 if kind == "numpy" else da.from_array(X32, chunks=(100, 3))
    gaps = np.isnan(X32).any(axis=1) & ~np.isnan(X32).all(axis=1)
    assert gaps.sum() > 100
    ref = _outputs(model64, X32.astype(np.float64))
    for method, out in _outputs(model, data).items():
        assert out.dtype == np.float32, method
        if kind == "dask":
            assert isinstance(out, da.Array)
            out = out.compute()
            assert out.dtype == np.float32, method
        tol = 1e-3 * max(1.0, float(np.nanmax(np.abs(ref[method]))))
        np.testing.assert_allclose(out, ref[method], atol=tol, err_msg=method)
