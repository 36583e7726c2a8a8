"""KMeans and the discrete mixtures through the one fit pipeline on an xarray cube.

A cube ``(time, y, x, band)`` with NaN pixels (left out: the xarray default), chunked
along two sample dimensions, fitted with ``feature_dim="band"``:

- a fit interrupted by a small ``max_iter`` and resumed from its checkpoint ends as an
  uninterrupted fit does, and really resumes (its first iteration is the next one);
- its parameters equal scikit-learn's KMeans / a plain NumPy EM (``tests/_references``)
  on the finite pixels from the same start, and its labels are NaN on the left-out
  pixels and the reference's nearest centre / most probable component elsewhere;
- bands given in another order are matched by name; an unknown band is refused.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.cluster import KMeans as SKKMeans

from dask_em import GaussianMixture, KMeans, PoissonMixture
from dask_em.exceptions import ConvergenceWarning
from tests._pipeline_data import ALPHA, BANDS, K, MODELS, SHAPE, TOL, estimator, params_of, pixels, start, truth_of
from tests._references import nearest_centre, reference_em, reference_labels


def make_cube(model, seed=0):
    """(cube DataArray chunked along time and y, values (T, Y, X, B), NaN pixel mask, truth)."""
    rng = np.random.default_rng(seed)
    truth = truth_of(model, rng)
    comp = rng.integers(0, K, size=int(np.prod(SHAPE)))
    values = pixels(model, truth, comp, rng).reshape(SHAPE + (len(BANDS),))
    nan_pixels = rng.random(SHAPE) < 0.12
    bands = rng.integers(0, len(BANDS), size=SHAPE)
    values[nan_pixels, bands[nan_pixels]] = np.nan  # one band missing is enough
    values[0, 0, 0, :] = np.nan  # a pixel with every band missing
    nan_pixels[0, 0, 0] = True
    cube = xr.DataArray(
        values,
        dims=("time", "y", "x", "band"),
        coords={"time": np.arange(SHAPE[0]), "y": np.arange(SHAPE[1]) * 10.0, "band": BANDS},
    ).chunk({"time": 1, "y": 4})
    return cube, values, nan_pixels, truth


def finite_rows(values):
    flat = values.reshape(-1, values.shape[-1])
    return flat[np.isfinite(flat).all(axis=1)]


@pytest.mark.parametrize("model", MODELS)
def test_resumed_checkpoint_fit_equals_uninterrupted_fit(model, tmp_path):
    cube, _, _, truth = make_cube(model)
    ckpt = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = estimator(model, truth, max_iter=2).fit(cube, feature_dim="band", checkpoint=ckpt)
    assert first.n_iter_ == 2 and not first.converged_
    assert ckpt.exists()

    iterations = []
    resumed = estimator(model, truth, max_iter=200).fit(
        cube, feature_dim="band", checkpoint=ckpt, callback=lambda it, results: iterations.append(it)
    )
    whole = estimator(model, truth, max_iter=200).fit(cube, feature_dim="band")

    assert whole.converged_ and whole.n_iter_ > 3, "the fit must outlast the interruption"
    assert iterations[0] == 3, f"the resumed fit restarted instead of resuming: {iterations}"
    assert resumed.n_iter_ == whole.n_iter_
    assert resumed.converged_ == whole.converged_
    for name, value in params_of(whole).items():
        assert_allclose(getattr(resumed, name), value, rtol=0, atol=1e-12, err_msg=name)
    if model == "kmeans":
        assert resumed.inertia_ == pytest.approx(whole.inertia_, rel=1e-12)
    else:
        assert resumed.lower_bound_ == pytest.approx(whole.lower_bound_, rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_cube_fit_equals_reference_on_finite_pixels(model):
    cube, values, nan_pixels, truth = make_cube(model)
    est = estimator(model, truth, max_iter=200).fit(cube, feature_dim="band")
    rows = finite_rows(values)
    assert rows.shape[0] == (~nan_pixels).sum()
    init = start(model, truth)

    if model == "kmeans":
        ref = SKKMeans(K, init=init["init"], n_init=1, max_iter=200, tol=1e-4, algorithm="lloyd").fit(rows)
        assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-12)
        assert est.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
        assert est.n_iter_ == ref.n_iter_
        ref_centres = ref.cluster_centers_
    else:
        param = "probs" if model == "categorical" else "means"
        ref = reference_em(
            model, rows, init["weights_init"], {param: np.asarray(init[f"{param}_init"], dtype=np.float64)},
            tol=TOL, max_iter=200, alpha=ALPHA, n_categories=[3] * len(BANDS),
        )
        assert ref["converged"] and est.converged_
        assert est.n_iter_ == ref["n_iter"]
        assert_allclose(est.weights_, ref["weights"], rtol=1e-9, atol=1e-12)
        assert_allclose(getattr(est, f"{param}_"), ref["params"][param], rtol=1e-9, atol=1e-12)
        assert est.lower_bound_ == pytest.approx(ref["lower_bound"], rel=1e-10)

    # the same model on the flat finite rows (NumPy) from the same start
    flat = estimator(model, truth, max_iter=200).fit(rows)
    assert flat.n_iter_ == est.n_iter_
    for name, value in params_of(flat).items():
        assert_allclose(getattr(est, name), value, rtol=1e-10, atol=1e-13, err_msg=name)

    labels = est.predict(cube)
    assert isinstance(labels, xr.DataArray)
    assert labels.dims == ("time", "y", "x")
    assert_array_equal(labels["y"].values, cube["y"].values)
    got = labels.values
    assert_array_equal(np.isnan(got), nan_pixels)
    pixels = values[~nan_pixels]
    if model == "kmeans":
        expected = nearest_centre(pixels, ref_centres)
    else:
        expected = reference_labels(model, pixels, ref["weights"], ref["params"])
    assert_array_equal(got[~nan_pixels].astype(np.int64), expected)


@pytest.mark.parametrize("cls", [KMeans, GaussianMixture])
def test_bands_in_another_order_are_matched_by_name(cls):
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 6.0, -3.0]])
    comp = rng.integers(0, 3, size=(4, 6, 5))
    values = centres[comp] + rng.normal(scale=0.7, size=comp.shape + (3,))
    values[1, 2, 3, 0] = np.nan
    rgb = xr.DataArray(values, dims=("time", "y", "x", "band"), coords={"band": ["r", "g", "b"]}).chunk({"time": 2})
    kwargs = {"n_clusters": 3} if cls is KMeans else {"n_components": 3, "covariance_type": "diag"}
    est = cls(random_state=0, **kwargs).fit(rgb, feature_dim="band")
    assert list(est.feature_names_in_) == ["r", "g", "b"]

    labels = est.predict(rgb).values
    brg = rgb.sel(band=["b", "r", "g"])
    assert list(brg["band"].values) == ["b", "r", "g"]
    assert_array_equal(est.predict(brg).values, labels)
    # and the labels are the true clusters (up to naming), so the bands were not scrambled
    finite = np.isfinite(labels)
    pairs = set(zip(comp[finite].tolist(), labels[finite].astype(int).tolist()))
    assert len(pairs) == 3

    rgn = rgb.assign_coords(band=["r", "g", "nir"])
    with pytest.raises(ValueError, match="nir") as info:
        est.predict(rgn)
    assert "'b'" in str(info.value) or "missing: ['b']" in str(info.value)


@pytest.mark.parametrize("cls", [KMeans, GaussianMixture, PoissonMixture])
def test_dataframe_columns_are_feature_names_and_reordering_is_refused(cls):
    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.poisson([2.0, 5.0, 9.0], size=(300, 3)).astype(float), columns=["a", "b", "c"])
    param = "n_clusters" if cls is KMeans else "n_components"
    est = cls(**{param: 2}, random_state=0).fit(X)
    assert isinstance(est.feature_names_in_, np.ndarray)
    assert est.feature_names_in_.tolist() == ["a", "b", "c"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        assert_array_equal(est.predict(X.to_numpy()), est.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(X[["c", "a", "b"]])


def test_numeric_band_coordinate_reordered_and_unknown_band_named():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(240, 3)) + rng.integers(0, 3, size=240)[:, None] * 5.0
    cube = xr.DataArray(X.reshape(2, 120, 3), dims=("t", "x", "band"), coords={"band": [490, 560, 665]})
    km = KMeans(3, random_state=0).fit(cube, feature_dim="band")
    assert km.feature_coords_ == [490, 560, 665]
    labels = km.predict(cube).values
    assert_array_equal(labels.ravel(), nearest_centre(X, km.cluster_centers_))
    assert_array_equal(km.predict(cube.sel(band=[665, 490, 560])).values, labels)
    with pytest.raises(ValueError) as info:
        km.predict(cube.assign_coords(band=[490, 560, 700]))
    message = str(info.value)
    assert "not fitted on: [700]" in message and "missing: [665]" in message
    assert "np.int64" not in message  # the labels as the user wrote them
