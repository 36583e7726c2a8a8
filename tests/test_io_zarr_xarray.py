"""Data edges: real Zarr stores (format 2 and 3) and real xarray objects in, labelled results out."""

import logging

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.mixture import GaussianMixture as SkGM

from dask_em import GaussianMixture
from dask_em.data import as_source
from dask_em.io import write_zarr

K, D = 2, 3
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(size=(600, D)) + c for c in ([0, 0, 0], [5, 6, 7])])


def _ref(X):
    """scikit-learn started from fixed parameters: the reference for every input form."""
    sk0 = SkGM(K, random_state=0, max_iter=1).fit(X)
    init = dict(weights_init=sk0.weights_, means_init=sk0.means_, precisions_init=sk0.precisions_)
    return init, SkGM(K, tol=0, max_iter=10, **init).fit(X)


def _store(path, X, fmt, chunks=(250, 1), name="refl"):
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    arr = group.create_array(name, shape=X.shape, chunks=chunks, dtype=X.dtype)
    arr[:] = X
    return group


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_store_forms_fit_like_sklearn(tmp_path, data, fmt, caplog):
    group = _store(tmp_path / "cube.zarr", data, fmt)
    init, sk = _ref(data)
    for X, kw in [(tmp_path / "cube.zarr", {"array": "refl"}), (str(tmp_path / "cube.zarr"), {"array": "refl"}),
                  (group, {"array": "refl"}), (group["refl"], {})]:
        with caplog.at_level(logging.INFO, logger="dask_em"):
            gm = GaussianMixture(K, tol=0, max_iter=10, **init).fit(X, **kw)
        np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-10)
        np.testing.assert_allclose(gm.covariances_, sk.covariances_, rtol=1e-10)
        labels = gm.predict(X, **kw)
        assert isinstance(labels, da.Array)
        np.testing.assert_array_equal(labels.compute(), sk.predict(data))
    assert "rechunking to one chunk of 3 features" in caplog.text  # chunks (250, 1) fixed, explained


def test_zarr_is_read_lazily_with_row_chunks_kept(tmp_path, data):
    _store(tmp_path / "s.zarr", data, 3, chunks=(100, D))
    src = as_source(tmp_path / "s.zarr", array="refl")
    assert isinstance(src.X, da.Array) and src.X.chunks[0] == (100,) * 12
    assert not src.is_numpy


def test_zarr_errors_name_the_fix(tmp_path, data):
    _store(tmp_path / "g.zarr", data, 2)
    with pytest.raises(ValueError, match="Could not open a Zarr store"):
        GaussianMixture(K).fit(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match=r"is a Zarr group.*refl.*--array"):
        GaussianMixture(K).fit(tmp_path / "g.zarr")
    with pytest.raises(ValueError, match="has no array 'nope'; its arrays are: refl"):
        GaussianMixture(K).fit(tmp_path / "g.zarr", array="nope")
    cube = zarr.open_array(str(tmp_path / "c.zarr"), mode="w", shape=(4, 5, 3), dtype="f8")
    with pytest.raises(ValueError, match="feature_dim"):
        GaussianMixture(K).fit(cube)
    # a dask array chunked along features keeps its error (decision: no silent rechunk)
    with pytest.raises(ValueError, match=r"rechunk\(\{1: -1\}\)"):
        GaussianMixture(K).fit(da.from_array(data, chunks=(100, 1)))


def _cube(data):
    """(time, y, x, band) cube with NaN 'clouds' in 7 pixels, chunked along bands too."""
    cube = data.reshape(6, 10, 20, D).copy()
    cube[0, 0, :5, 1] = np.nan
    cube[3, 2, 2:4, :] = np.nan
    coords = {"time": np.arange(6) * 10, "y": np.linspace(0, 1, 10), "x": np.arange(20), "band": ["r", "g", "b"]}
    return xr.DataArray(cube, dims=("time", "y", "x", "band"), coords=coords).chunk({"time": 2, "band": 1})


def test_xarray_nan_rows_left_out_counted_and_labels_lazy(data, caplog):
    cube = _cube(data)
    flat = cube.transpose("time", "y", "x", "band").values.reshape(-1, D)
    ok = np.isfinite(flat).all(axis=1)
    init, sk = _ref(flat[ok])
    with caplog.at_level(logging.INFO, logger="dask_em"):
        gm = GaussianMixture(K, tol=0, max_iter=10, **init).fit(cube, feature_dim="band")
    assert "left out 7 rows with NaN or infinite values (of 1200 rows)" in caplog.text
    np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-10)
    np.testing.assert_allclose(gm.lower_bound_, sk.lower_bound_, rtol=1e-12)

    labels = gm.predict(cube)  # the fitted feature dimension is remembered
    assert isinstance(labels, xr.DataArray) and isinstance(labels.data, da.Array)
    assert labels.dims == ("time", "y", "x") and labels.chunks[0] == (2, 2, 2)
    xr.testing.assert_equal(labels.coords.to_dataset(), cube.isel(band=0, drop=True).coords.to_dataset())
    got = labels.values.reshape(-1)
    assert np.isnan(got[~ok]).all()
    np.testing.assert_array_equal(got[ok], sk.predict(flat[ok]))
    proba = gm.predict_proba(cube)
    assert proba.dims == ("time", "y", "x", "component")
    np.testing.assert_allclose(proba.values.reshape(-1, K)[ok], sk.predict_proba(flat[ok]), atol=1e-12)
    np.testing.assert_allclose(gm.score(cube), sk.score(flat[ok]), rtol=1e-12)


def test_xarray_nan_raise_and_array_omit(data):
    cube = _cube(data)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(K, max_iter=2, nan_policy="raise").fit(cube, feature_dim="band")
    X = data.copy()
    X[::100, 0] = np.nan
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        GaussianMixture(K, max_iter=2).fit(X)
    gm = GaussianMixture(K, max_iter=5, random_state=0, nan_policy="omit").fit(X)
    labels = gm.predict(da.from_array(X, chunks=(300, D))).compute()
    assert (labels[::100] == -1).all() and (labels[1::100] >= 0).all()


def test_xarray_sample_weight_follows_the_rows_with_nan_rows_omitted(data):
    """Weights over (time, y, x) meet their own pixels, whatever the chunking of the cube."""
    cube = _cube(data).chunk({"time": 2, "y": 5, "x": 7})  # blocks are not C-ordered rows
    weights = np.random.default_rng(4).integers(0, 4, size=cube.shape[:3])
    w = xr.DataArray(weights, dims=("time", "y", "x")).transpose("x", "time", "y")  # any order
    flat = cube.values.reshape(-1, D)
    ok = np.isfinite(flat).all(axis=1)
    rows = np.repeat(flat[ok], weights.reshape(-1)[ok], axis=0)  # integer weight = copies
    init, sk = _ref(rows)
    gm = GaussianMixture(K, tol=0, max_iter=10, nan_policy="omit", **init)
    gm.fit(cube, sample_weight=w, feature_dim="band")
    np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, sk.covariances_, rtol=1e-9)
    # the same weights as an array of the sample shape
    gm2 = GaussianMixture(K, tol=0, max_iter=10, nan_policy="omit", **init)
    gm2.fit(cube, sample_weight=weights, feature_dim="band")
    np.testing.assert_allclose(gm2.means_, sk.means_, rtol=1e-10)
    # a flat array would meet the wrong pixels here: refused, with the fix
    with pytest.raises(ValueError, match="DataArray over the sample dimensions"):
        GaussianMixture(K, max_iter=2, nan_policy="omit").fit(cube, sample_weight=weights.reshape(-1), feature_dim="band")
    # chunked along the first sample dimension only, C order is the row order: accepted
    gm3 = GaussianMixture(K, tol=0, max_iter=10, nan_policy="omit", **init)
    gm3.fit(_cube(data), sample_weight=weights.reshape(-1), feature_dim="band")
    np.testing.assert_allclose(gm3.means_, sk.means_, rtol=1e-10)
    with pytest.raises(ValueError, match="sample dimensions"):
        GaussianMixture(K, max_iter=2).fit(cube, sample_weight=w.rename(x="lon"), feature_dim="band")


def test_dataset_variables_are_features(data):
    cube = _cube(data)
    ds = cube.to_dataset(dim="band")[["b", "r", "g"]]  # order of variables is remembered
    flat = cube.transpose("time", "y", "x", "band").values.reshape(-1, D)[:, [2, 0, 1]]
    ok = np.isfinite(flat).all(axis=1)
    init, sk = _ref(flat[ok])
    gm = GaussianMixture(K, tol=0, max_iter=10, **init).fit(ds)
    assert list(gm.feature_names_in_) == ["b", "r", "g"]
    np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-10)
    got = gm.predict(ds[["g", "b", "r"]]).values.reshape(-1)  # reordered by name
    np.testing.assert_array_equal(got[ok], sk.predict(flat[ok]))
    with pytest.raises(ValueError, match=r"lacks the variables \['b'\]"):
        gm.predict(ds[["r", "g"]])


def test_write_zarr_chunkwise_and_atomic(tmp_path, data):
    gm = GaussianMixture(K, random_state=0, max_iter=5).fit(data)
    cube = _cube(data)
    labels = gm.predict(cube, feature_dim="band")
    write_zarr(labels, tmp_path / "labels.zarr", name="labels")
    back = xr.open_zarr(tmp_path / "labels.zarr")["labels"]
    xr.testing.assert_equal(back.load(), labels.compute())
    X = da.from_array(data, chunks=(300, D))
    write_zarr(gm.predict(X), tmp_path / "l.zarr", name="labels", fill_value=-1)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "l.zarr"))["labels"][:], gm.predict(data))
    bad = da.from_array(np.full((10, D), np.nan), chunks=(5, D))
    with pytest.raises(ValueError, match="NaN"):
        write_zarr(gm.predict(bad), tmp_path / "l.zarr", name="labels")
    # the good output is still there, and no temporary folder is left behind
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "l.zarr"))["labels"][:], gm.predict(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.zarr", "labels.zarr"]
