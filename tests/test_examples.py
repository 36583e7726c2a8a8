"""examples/: the quickstart notebook executed with nbclient at small size, and the
example scripts run as subprocesses; their figures and outputs are checked."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nbformat
import numpy as np
import pytest
import xarray as xr
import zarr
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 10  # something was drawn


@pytest.mark.small_workers  # the notebook's workers: 384 MiB (the full-covariance fits load numba when forced)
def test_quickstart_notebook_runs_at_small_size(tmp_path, monkeypatch):
    for key, value in _env(DASK_EM_EXAMPLE_SIZE="small", DASK_EM_EXAMPLE_DIR=str(tmp_path / "qs")).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream" and o.name == "stdout")
    assert re.search(r"Dashboard: http://127\.0\.0\.1:\d+/status", text)
    assert "BIC picks K = 4" in text
    fitted = re.search(r"converged: True after (\d+) iterations; mean log-likelihood (\S+)", text)
    assert fitted
    # verbose=1 in a notebook: one display updated in place, ending on how the fit ended,
    # instead of a log line per iteration on stderr
    fit_cell = next(c for c in nb.cells if c.cell_type == "code" and "verbose=1" in c.source)
    shown = [o.data["text/plain"] for o in fit_cell.outputs if o.output_type == "display_data"]
    assert len(shown) == 1, fit_cell.outputs
    final = re.fullmatch(
        r"GaussianMixture: converged after (\d+) iterations \| mean log-likelihood (\S+) \| (\d+) passes \| [0-9.]+ s",
        shown[0],
    )
    assert final, shown[0]
    n_iter = int(fitted.group(1))
    assert int(final.group(1)) == n_iter
    assert abs(float(final.group(2)) - float(fitted.group(2))) < 1e-4
    # at this size persist="auto" keeps the store in the workers' memory, so batch EM runs
    # from the start: the sampling pass, then one pass per iteration
    assert int(final.group(3)) == 1 + n_iter
    errors = "".join(o.get("text", "") for o in fit_cell.outputs if o.output_type == "stream" and o.name == "stderr")
    assert "iteration" not in errors, errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
    for name in ("convergence.png", "components.png", "bic.png"):
        _check_png(tmp_path / "qs" / name)
    labels = zarr.open_array(str(tmp_path / "qs" / "labels.zarr"), mode="r")[:]
    assert labels.shape == (40_000,) and set(np.unique(labels)) == {0, 1, 2, 3}
    assert f"total {labels.size}" in text


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xarray_landcover_example(tmp_path):
    out = tmp_path / "lc"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "xarray_landcover.py"), "--small", "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    agreement = float(re.search(r"agreement with the true classes: ([0-9.]+)", run.stdout).group(1))
    assert agreement > 0.97
    _check_png(out / "landcover-map.png")

    # the missing labels are exactly the pixels with a NaN band in the input cube
    example = _load_example("xarray_landcover")
    cube, truth = example.make_cube(120, 160, chunk_rows=30)
    nan_pixels = np.isnan(cube.values).any(axis=-1)
    assert int(re.search(r"missing labels: (\d+)", run.stdout).group(1)) == nan_pixels.sum() > 0
    labels = xr.open_zarr(out / "landcover-labels.zarr", consolidated=False)["landcover"].load()
    assert labels.dims == ("y", "x") and labels.shape == (120, 160)
    np.testing.assert_array_equal(labels["x"].values, cube["x"].values)
    np.testing.assert_array_equal(np.isnan(labels.values), nan_pixels)
    score, _ = example.match_classes(labels.values, truth, 4)
    assert score == agreement or abs(score - agreement) < 1e-4


def test_xarray_gaps_example(tmp_path):
    """Per-band gaps: "omit" loses every pixel with one NaN band, "marginalize" labels all
    but the pixels with no data, and impute recovers the hidden values."""
    out = tmp_path / "gaps"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "xarray_gaps.py"), "--small", "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    example = _load_example("xarray_gaps")
    cube, complete, truth = example.make_cube(120, 160, chunk_rows=30)
    gaps = np.isnan(cube.values)
    some, every = gaps.any(axis=-1), gaps.all(axis=-1)
    assert some.sum() > 0.2 * some.size and 0 < every.sum() < 0.02 * every.size

    def number(pattern):
        return float(re.search(pattern, run.stdout).group(1))

    assert number(r"omit: unlabelled pixels: (\d+)") == some.sum()
    assert number(r"marginalize: unlabelled pixels: (\d+)") == every.sum()
    assert number(r"marginalize: unlabelled pixels: \d+; agreement with the true classes: ([0-9.]+)") > 0.98
    assert number(r"under the cloud \(radar only\): ([0-9.]+)") > 0.9
    rmse = number(r"RMSE of the filled values ([0-9.]+)")
    assert rmse < 0.5 * number(r"each band with its mean: ([0-9.]+)")
    _check_png(out / "gaps-maps.png")

    filled = xr.open_zarr(out / "gaps-filled.zarr", consolidated=False)["filled"].load()
    assert filled.dims == ("y", "x", "band") and list(filled["band"].values) == example.BANDS
    np.testing.assert_array_equal(filled.values[~gaps], cube.values[~gaps])  # observed values kept
    hidden = gaps & ~every[..., None]
    assert np.isfinite(filled.values[hidden]).all()
    assert np.sqrt(np.mean((filled.values[hidden] - complete[hidden]) ** 2)) == pytest.approx(rmse, abs=1e-4)


@pytest.mark.small_workers  # --memory-limit 400MiB
def test_batch_job_example(tmp_path):
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 1.0], [0.0, 5.0, -1.0]])
    X = np.concatenate([c + rng.standard_normal((2000, 3)) for c in centres])
    g = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    g.create_array("features", shape=X.shape, chunks=(1000, 3), dtype="float64")[:] = X
    cmd = [sys.executable, str(EXAMPLES / "batch_job.py"), str(tmp_path / "data.zarr")]
    run = subprocess.run(
        cmd + ["--array", "features", "-k", "3", "--memory-limit", "400MiB",
               "--labels", str(tmp_path / "labels.zarr"), "--figures", str(tmp_path / "figs")],
        env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"converged=True n_iter=\d+ mean_loglik=-[0-9.]+", run.stdout)
    assert "dashboard: http://" in run.stderr and "iteration 1:" in run.stderr
    for name in ("convergence.png", "components.png"):
        _check_png(tmp_path / "figs" / name)
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:]
    truth = np.repeat([0, 1, 2], 2000)
    agree = max(np.mean(labels[truth == t] == np.bincount(labels[truth == t]).argmax()) for t in range(3))
    assert labels.shape == (6000,) and len(set(labels)) == 3 and agree > 0.95

    group_only = subprocess.run(cmd + ["-k", "3"], env=_env(), capture_output=True, text=True, timeout=60)
    assert group_only.returncode == 1 and "--array (features)" in group_only.stderr
    missing = subprocess.run(cmd[:2] + [str(tmp_path / "nope.zarr"), "-k", "2"], env=_env(), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no Zarr store at" in missing.stderr


def test_colour_quantisation_example(tmp_path):
    """A real photograph shipped with scikit-learn (needs pillow), quantised by dask-em's
    KMeans and GaussianMixture over its pixels as a chunked array, against scikit-learn's
    on the same pixels."""
    out = tmp_path / "q"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "colour_quantisation.py"), "--small", "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr
    assert "china.jpg: 107 x 160 pixels in 8 row chunks; K = 16 colours" in run.stdout
    errors = {m.group(1): float(m.group(2)) for m in re.finditer(r"(.+): quantisation error ([0-9.]+)", run.stdout)}
    assert set(errors) == {"dask-em KMeans", "dask-em GaussianMixture", "scikit-learn KMeans",
                           "scikit-learn GaussianMixture"}
    # each library with its own initialisation: errors of the same size
    assert all(e > 0 for e in errors.values())
    assert errors["dask-em KMeans"] < 1.1 * errors["scikit-learn KMeans"]
    assert errors["dask-em GaussianMixture"] < 1.1 * errors["scikit-learn GaussianMixture"]
    # from the same starting colours, the same colours (0-255 units)
    km = float(re.search(r"KMeans from the same start: largest centre difference (\S+)", run.stdout).group(1))
    gm = float(re.search(r"GaussianMixture from the same start: largest mean difference (\S+)", run.stdout).group(1))
    assert km < 1e-6 and gm < 1e-6
    _check_png(out / "quantised.png")
