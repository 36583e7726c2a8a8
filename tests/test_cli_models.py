"""``dask-em fit --model ...`` and ``dask-em predict`` for every model, as subprocesses
(``python -m dask_em``) on real Zarr stores, against a real LocalCluster started here.

The labels written by ``predict`` are checked against a reference computed from the
saved model's parameters with scipy.stats / NumPy (nearest centre for kmeans), never
against dask-em's own predict. Options a model does not take are one error line and
exit status 2.

Every subprocess imports dask-em (~2 s of CPU), so the fast set runs two models
(bernoulli on a 2-D store, kmeans on an xarray cube with NaN pixels); the other four
models are the ``slow`` test.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from numpy.testing import assert_array_equal

import dask_em
from tests._pipeline_data import K, pixels, truth_of
from tests._references import gaussian_labels, nearest_centre, reference_labels

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
MODELS = {  # --model: (estimator class name, extra options)
    "gaussian": ("GaussianMixture", ["--covariance-type", "full"]),
    "kmeans": ("KMeans", []),
    "bernoulli": ("BernoulliMixture", ["--alpha", "0.01"]),
    "poisson": ("PoissonMixture", []),
    "categorical": ("CategoricalMixture", ["--n-categories", "3"]),
}


def dask_em_cli(*commands, timeout=180):
    """Run each command (a list of arguments of ``python -m dask_em``) as its own
    subprocess, all at once; returns their CompletedProcess, in order."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "dask_em", *map(str, args)], env=ENV, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in commands
    ]
    done = []
    for args, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def scheduler():
    """Address of a real LocalCluster: two worker processes, one thread each."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="1GiB") as cluster:
        yield cluster.scheduler_address


def write_store(path, model, n=1200, seed=0):
    """A 2-D Zarr array (format 3) of data in the model's support, 4 row chunks."""
    rng = np.random.default_rng(seed)
    family = "kmeans" if model == "gaussian" else model
    truth = truth_of(family, rng)
    if family == "kmeans":
        truth = truth * 4.0  # separated enough for a Gaussian fit to find them
    X = pixels(family, truth, rng.integers(0, K, size=n), rng)
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(n // 4, X.shape[1]), dtype="f8", zarr_format=3)
    arr[:] = X
    return X


def reference(model, fitted, X):
    if model == "kmeans":
        return nearest_centre(X, fitted.cluster_centers_)
    if model == "gaussian":
        return gaussian_labels(X, fitted.weights_, fitted.means_, fitted.covariances_)
    params = {"probs": fitted.probs_} if model == "categorical" else {"means": fitted.means_}
    return reference_labels(model, X, fitted.weights_, params)


def write_cube(path):
    """A (time, y, x, band) cube with NaN pixels, as the variable ``refl`` of an xarray Zarr store."""
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 4.0], [0.0, 8.0, -4.0]])
    comp = rng.integers(0, 3, size=(2, 12, 10))
    values = centres[comp] + rng.normal(size=comp.shape + (3,))
    nan_pixels = rng.random(comp.shape) < 0.1
    values[nan_pixels, 1] = np.nan
    cube = xr.DataArray(values, dims=("time", "y", "x", "band"), coords={"band": ["r", "g", "b"]}, name="refl")
    # Zarr format 2 here (the 2-D stores are format 3)
    cube.chunk({"time": 1}).to_dataset().to_zarr(path, zarr_format=2, consolidated=False)
    return values, nan_pixels


def fit_and_predict(models, scheduler, tmp_path, *, cube=False):
    """``dask-em fit`` then ``dask-em predict`` for each model on its own store (the
    models at once, one subprocess each); labels checked against the reference. With
    ``cube``, also kmeans on a cube with NaN pixels read with --feature-dim."""
    data, fits, predicts = {}, [], []
    for model in models:
        store = tmp_path / f"{model}.zarr"
        data[model] = write_store(store, model)
        fits.append(["fit", store, "--model", model, "-k", K, *MODELS[model][1], "--random-state", 0,
                     "--scheduler", scheduler, "--output", tmp_path / f"{model}.npz", "-q"])
        predicts.append(["predict", tmp_path / f"{model}.npz", store, "--scheduler", scheduler,
                         "--output", tmp_path / f"{model}-labels.zarr", "-q"])
    if cube:
        values, nan_pixels = write_cube(tmp_path / "cube.zarr")
        cube_args = [tmp_path / "cube.zarr", "--array", "refl"]
        fits.append(["fit", *cube_args, "--feature-dim", "band", "--model", "kmeans", "-k", 3,
                     "--scheduler", scheduler, "--output", tmp_path / "cube.npz", "-q"])
        predicts.append(["predict", tmp_path / "cube.npz", *cube_args, "--scheduler", scheduler,
                         "--output", tmp_path / "cube-labels.zarr", "-q"])

    for run in dask_em_cli(*fits):
        assert run.returncode == 0, (run.args, run.stderr)
        assert "model written to" in run.stdout
    for run in dask_em_cli(*predicts):
        assert run.returncode == 0, (run.args, run.stderr)

    for model in models:
        X = data[model]
        fitted = dask_em.load(tmp_path / f"{model}.npz")
        assert type(fitted).__name__ == MODELS[model][0]
        assert getattr(fitted, "n_clusters" if model == "kmeans" else "n_components") == K
        if model == "bernoulli":
            assert fitted.alpha == 0.01
        if model == "categorical":
            assert fitted.n_categories_.tolist() == [3] * X.shape[1]
        labels = zarr.open_group(str(tmp_path / f"{model}-labels.zarr"), mode="r")["labels"][:]
        assert labels.shape == (X.shape[0],)
        assert_array_equal(labels, reference(model, fitted, X), err_msg=model)
        assert len(np.unique(labels)) == K, model
    if cube:
        fitted = dask_em.load(tmp_path / "cube.npz")
        assert fitted.feature_names_in_.tolist() == ["r", "g", "b"] and fitted.feature_dim_ == "band"
        labels = xr.open_zarr(tmp_path / "cube-labels.zarr")["labels"].values
        assert labels.shape == nan_pixels.shape
        assert_array_equal(np.isnan(labels), nan_pixels)
        assert_array_equal(labels[~nan_pixels], nearest_centre(values[~nan_pixels], fitted.cluster_centers_))


def test_fit_and_predict_bernoulli_and_kmeans_cube(scheduler, tmp_path):
    fit_and_predict(["bernoulli"], scheduler, tmp_path, cube=True)


@pytest.mark.slow
def test_fit_and_predict_other_models(scheduler, tmp_path):
    fit_and_predict(["gaussian", "kmeans", "poisson", "categorical"], scheduler, tmp_path)


def test_fit_help_and_options_a_model_does_not_take(tmp_path):
    """--help lists the models; a model's foreign option is one error line; a bad --persist
    value is a usage error (it was an uncaught KeyError and a traceback)."""
    wrong = {  # --model, an option it does not take, the models that take it
        "kmeans": (["--covariance-type", "full"], "--model gaussian"),
        "poisson": (["--n-categories", "3"], "--model categorical"),
    }
    runs = dask_em_cli(
        ["fit", "--help"],
        *[["fit", tmp_path / "absent.zarr", "--model", model, "-k", 2, *option, "--output", tmp_path / f"{model}.npz"]
          for model, (option, _) in wrong.items()],
        ["fit", tmp_path / "absent.zarr", "-k", 2, "--persist", "maybe", "--output", tmp_path / "p.npz"],
    )
    help_run, errors = runs[0], runs[1:]
    assert help_run.returncode == 0
    assert "--model {gaussian,bayesian-gaussian,kmeans,bernoulli,poisson,categorical}" in " ".join(help_run.stdout.split())
    bad_persist = errors.pop()  # a usage error from argparse: usage lines, then the error, status 2
    assert bad_persist.returncode == 2, bad_persist.stderr
    assert "Traceback" not in bad_persist.stderr
    assert "argument --persist: must be auto, yes or no, got 'maybe'" in bad_persist.stderr.strip().splitlines()[-1]
    for (model, (option, takers)), run in zip(wrong.items(), errors):
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith("dask-em: error: ")
        assert option[0] in lines[0] and takers in lines[0] and f"not to --model {model}" in lines[0]
        assert not (tmp_path / f"{model}.npz").exists()


# --------------------------------------------------------------------------- --nan-policy marginalize
def _gappy_store(path):
    """Three correlated clusters in 3-D, a 2-D Zarr store (format 3) with NaN in every
    feature (15% of the entries) and two rows with nothing observed."""
    rng = np.random.default_rng(7)
    means = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 5.0, 5.0]])
    X = means[rng.integers(0, 3, 600)] + rng.standard_normal((600, 3)) @ np.array(
        [[1.0, 0.4, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
    X[rng.random(X.shape) < 0.15] = np.nan
    X[[10, 400]] = np.nan
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(150, 3), dtype="f8", zarr_format=3)
    arr[:] = X
    return X


def test_marginalize_fit_score_predict_impute(scheduler, tmp_path):
    """``--nan-policy marginalize`` end to end: the saved models' score, probabilities and
    imputed stores against row-by-row references on the saved parameters."""
    from tests._missing_reference import loglik_and_resp

    store = tmp_path / "gaps.zarr"
    X = _gappy_store(store)
    common = ["--scheduler", scheduler, "-q"]
    fits = dask_em_cli(
        ["fit", store, "-k", 3, "--nan-policy", "marginalize", "--output", tmp_path / "gm.npz", *common],
        ["fit", store, "--model", "kmeans", "-k", 3, "--nan-policy", "marginalize", "--output", tmp_path / "km.npz",
         *common],
    )
    for run in fits:
        assert run.returncode == 0, (run.args, run.stderr)
    runs = dask_em_cli(
        ["score", tmp_path / "gm.npz", store, *common],
        ["predict", tmp_path / "gm.npz", store, "--what", "proba", "--output", tmp_path / "proba.zarr", *common],
        ["impute", tmp_path / "gm.npz", store, "--output", tmp_path / "gm-filled.zarr", *common],
        ["impute", tmp_path / "km.npz", store, "--output", tmp_path / "km-filled.zarr", *common],
    )
    for run in runs:
        assert run.returncode == 0, (run.args, run.stderr)
    gm, km = dask_em.load(tmp_path / "gm.npz"), dask_em.load(tmp_path / "km.npz")
    assert gm.nan_policy == km.nan_policy == "marginalize"
    keep = ~np.isnan(X).all(axis=1)
    ll, resp = loglik_and_resp(X[keep], gm.weights_, gm.means_, gm.covariances_)
    assert float(runs[0].stdout.split()[-1]) == pytest.approx(ll.mean(), rel=1e-9)
    proba = xr.open_zarr(tmp_path / "proba.zarr")["probabilities"].values
    np.testing.assert_allclose(proba[keep], resp, atol=1e-12)
    assert np.isnan(proba[~keep]).all()

    filled = xr.open_zarr(tmp_path / "gm-filled.zarr")["imputed"].values
    expected = X.copy()
    for i, r in zip(np.flatnonzero(keep), resp):  # sum_k p(k | x_o) E[x_m | x_o, k]
        o, m = ~np.isnan(X[i]), np.isnan(X[i])
        S, mu = gm.covariances_, gm.means_
        expected[i, m] = sum(r[k] * (mu[k][m] + S[k][np.ix_(m, o)] @ np.linalg.solve(S[k][np.ix_(o, o)],
                                                                                       X[i, o] - mu[k][o]))
                             for k in range(3))
    expected[~keep] = gm.weights_ @ gm.means_
    np.testing.assert_allclose(filled, expected, rtol=1e-10, atol=1e-12)

    filled = xr.open_zarr(tmp_path / "km-filled.zarr")["imputed"].values
    expected = X.copy()
    for i in np.flatnonzero(keep):  # the centre nearest over the observed coordinates
        o = ~np.isnan(X[i])
        k = np.argmin(((km.cluster_centers_[:, o] - X[i, o]) ** 2).sum(axis=1))
        expected[i, ~o] = km.cluster_centers_[k, ~o]
    np.testing.assert_array_equal(filled, expected)
