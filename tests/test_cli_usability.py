"""The command line as a new user meets it: --version, help with defaults and examples,
a scheduler file from a real ``dask scheduler --scheduler-file`` process, input errors
before any cluster starts, a progress bar on a real terminal (pty) that completes,
warnings in the log, the NaN hint, and output stores that ``xarray.open_zarr`` reads."""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import dask_em

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def dask_em_cli(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "dask_em", *map(str, args)], env=ENV, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )


def _error_lines(res):
    return [line for line in res.stderr.splitlines() if line.startswith("dask-em:")]


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory):
    """A real scheduler and a worker process started as an HPC job starts them, meeting
    through the scheduler file."""
    folder = tmp_path_factory.mktemp("sched")
    path = folder / "scheduler.json"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(path),
         "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
    )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert path.exists(), "the scheduler did not write its file"
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(path),
             "--nthreads", "1", "--nworkers", "1", "--memory-limit", "1GiB", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder, env=ENV,
        )
        from distributed import Client

        with Client(scheduler_file=str(path), timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        yield path
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory):
    """Two blobs in a 2-D Zarr store (format 3), one row in 50 with a NaN."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(600, 2)), rng.normal(size=(600, 2)) + 6])
    X[::50, 1] = np.nan
    path = tmp_path_factory.mktemp("data") / "nan.zarr"
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(300, 2), dtype="f8", zarr_format=3)
    arr[:] = X
    return path, X


def test_version_and_help_show_defaults_and_examples(capsys, monkeypatch):
    version = dask_em_cli("--version")  # the installed entry point, once
    assert version.returncode == 0 and version.stdout.strip() == f"dask-em {dask_em.__version__}"
    from dask_em.cli import main

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps help at the terminal's width
    helps = {}
    for command in ("fit", "predict", "score", "demo"):
        with pytest.raises(SystemExit) as exit_:  # in process: --help exits before anything runs
            main([command, "--help"])
        assert exit_.value.code == 0
        text = helps[command] = " ".join(capsys.readouterr().out.split())
        assert f"example: dask-em {command} " in text, command
        assert "scheduler file" in text
    fit_help, predict_help = helps["fit"], helps["predict"]
    assert "--random-state RANDOM_STATE seed of the initialisation (default: 0)" in fit_help
    assert "(default auto: when they fit)" in fit_help  # --persist says its own default, once
    assert "(default: None)" not in fit_help and "(default: auto)" not in fit_help
    assert "(default: labels)" in predict_help and "-1 (the Zarr fill value)" in predict_help


def test_mistyped_store_fails_before_a_cluster_starts(tmp_path):
    start = time.perf_counter()
    res = dask_em_cli("fit", tmp_path / "pixles.zarr", "-k", 2, "--output", tmp_path / "m.npz")
    seconds = time.perf_counter() - start
    assert res.returncode == 2
    assert "local cluster:" not in res.stderr and "dashboard" not in res.stderr
    assert _error_lines(res) == [_error_lines(res)[0]] and "Could not open a Zarr store" in res.stderr
    assert seconds < 30  # the import alone; a LocalCluster adds its start-up and shutdown


def test_missing_scheduler_file_is_one_error_line(tmp_path, nan_store):
    gm = dask_em.GaussianMixture(2, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 2)))
    model = gm.save(tmp_path / "m.npz")
    res = dask_em_cli("score", model, nan_store[0], "--scheduler", tmp_path / "sched.json", timeout=60)
    assert res.returncode == 2
    assert _error_lines(res) == [
        f"dask-em: error: --scheduler '{tmp_path / 'sched.json'}': no such scheduler file. Give the file that "
        "`dask scheduler --scheduler-file PATH` wrote, or an address such as tcp://host:8786."
    ]


def test_fit_predict_through_a_scheduler_file(scheduler_file, nan_store, tmp_path):
    path, X = nan_store
    model = tmp_path / "m.npz"
    fit = dask_em_cli("fit", path, "-k", 2, "--nan-policy", "omit", "--scheduler", scheduler_file, "-o", model)
    assert fit.returncode == 0, fit.stderr
    assert "local cluster:" not in fit.stderr and "dashboard: http" in fit.stderr
    assert "converged after" in fit.stdout
    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address, timeout="30s") as client:  # the fit ran on that scheduler's worker
        assert len(client.scheduler_info()["workers"]) == 1

    # labels: the smallest integer type, -1 where a row was left out, read by xarray
    labels_path, proba_path = tmp_path / "labels.zarr", tmp_path / "proba.zarr"
    runs = [
        dask_em_cli("predict", model, path, "--scheduler", scheduler_file, "-o", labels_path, "-q"),
        dask_em_cli("predict", model, path, "--what", "proba", "--scheduler", scheduler_file, "-o", proba_path, "-q"),
    ]
    for run in runs:
        assert run.returncode == 0 and run.stderr == "", run.stderr
    raw = zarr.open_group(str(labels_path), mode="r")["labels"]
    assert raw.dtype == np.int8 and raw.fill_value == -1
    bad = ~np.isfinite(X).all(axis=1)
    gm = dask_em.load(model)
    expected = np.full(len(X), -1)
    expected[~bad] = np.argmax(
        [np.log(w) - 0.5 * np.einsum("ij,jk,ik->i", X[~bad] - m, np.linalg.inv(c), X[~bad] - m)
         - 0.5 * np.linalg.slogdet(c)[1] for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_)],
        axis=0,
    )
    np.testing.assert_array_equal(raw[:], expected)
    ds = xr.open_zarr(labels_path)
    assert ds["labels"].dims == ("sample",)
    np.testing.assert_array_equal(np.isnan(ds["labels"].values), bad)
    np.testing.assert_array_equal(ds["labels"].values[~bad], expected[~bad])
    proba = xr.open_zarr(proba_path)["probabilities"]
    assert proba.dims == ("sample", "component") and proba["component"].values.tolist() == [0, 1]
    np.testing.assert_allclose(proba.values[~bad].sum(axis=1), 1.0)
    assert np.isnan(proba.values[bad]).all()

    # NaN rows under --nan-policy raise: the error, then a one-line hint, no worker traceback
    res = dask_em_cli("predict", model, path, "--nan-policy", "raise", "--scheduler", scheduler_file,
                      "-o", tmp_path / "no.zarr")
    assert res.returncode == 2
    lines = _error_lines(res)
    assert len(lines) == 2 and "NaN or infinite" in lines[0]
    assert lines[1] == ("dask-em: hint: rows with NaN or infinite values can be left out with --nan-policy omit, "
                        "or fitted on their observed features with --nan-policy marginalize")
    assert "Traceback" not in res.stderr and not (tmp_path / "no.zarr").exists()


def _run_on_terminal(args, timeout=180):
    """Run the command line with stderr on a pseudo-terminal (so the bar is drawn); returns
    (exit status, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dask_em", *map(str, args)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    out = proc.communicate(timeout=30)[0]
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_completes_and_warnings_go_through_the_log(scheduler_file, nan_store, tmp_path):
    path, _ = nan_store
    rc, out, term = _run_on_terminal(
        ["fit", path, "-k", 2, "--nan-policy", "omit", "--scheduler", scheduler_file, "-o", tmp_path / "a.npz"]
    )
    assert rc == 0, term
    assert "initialising: one pass draws a sample" in term
    # early stop: the bar is still drawn full, with the iteration it stopped at
    n_iter = int(out.split("converged after ")[1].split()[0])
    assert f"[{'#' * 30}] converged at iteration {n_iter}  mean log-likelihood" in term, term

    rc, out, term = _run_on_terminal(
        ["fit", path, "-k", 2, "--nan-policy", "omit", "--max-iter", 1, "--tol", 1e-12,
         "--scheduler", scheduler_file, "-o", tmp_path / "b.npz"]
    )
    assert rc == 0, term
    lines = term.replace("\r\x1b[K", "\n").splitlines()
    warning = [line for line in lines if "ConvergenceWarning" in line]
    assert len(warning) == 1 and warning[0].startswith("[dask-em] ConvergenceWarning: "), term
    assert f"[{'#' * 30}] iteration 1/1" in term


def test_xarray_outputs_keep_attrs_and_name_the_components():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(size=(4, 5, 2)), rng.normal(size=(4, 5, 2)) + 5])
    cube = xr.DataArray(values, dims=("y", "x", "band"), coords={"y": np.arange(8.0), "band": ["red", "nir"]},
                        attrs={"units": "reflectance", "source": "test"}).chunk({"y": 4})
    gm = dask_em.GaussianMixture(2, random_state=0).fit(cube, feature_dim="band")
    proba = gm.predict_proba(cube)
    labels = gm.predict(cube)
    assert proba.dims == ("y", "x", "component") and proba["component"].values.tolist() == [0, 1]
    for result in (proba, labels):
        assert result.attrs == {"units": "reflectance", "source": "test"}
        np.testing.assert_array_equal(result["y"].values, np.arange(8.0))


def test_progress_bar_states():
    """The bar's text through a fit that stops early, and through one that runs out."""
    import io
    from types import SimpleNamespace

    from dask_em._progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(60, stream=stream, enabled=True)
    bar.status("initialising")
    assert bar.text == f"[{'.' * 30}] initialising"
    for i, value in enumerate([-3.0, -2.5, -2.4], start=1):
        bar(i, [SimpleNamespace(lower_bound=value), SimpleNamespace(lower_bound=value - 1)])
    assert bar.text.startswith("[##") and "iteration 3/60" in bar.text and "-2.4" in bar.text
    bar.finish(3, True)
    assert bar.text == f"[{'#' * 30}] converged at iteration 3  mean log-likelihood -2.4"
    bar.close()
    assert stream.getvalue().endswith(f"[{'#' * 30}] converged at iteration 3  mean log-likelihood -2.4\n")

    bar = ProgressBar(2, stream=io.StringIO(), enabled=True)
    bar(2, [SimpleNamespace(lower_bound=-1.0)])
    bar.finish(2, False)
    assert bar.text == f"[{'#' * 30}] iteration 2/2  mean log-likelihood -1"
