"""Saved models (NPZ + JSON, never pickle) and checkpoints resumed after a kill."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dask_em
from dask_em import GaussianMixture, ModelFileError
from dask_em.persistence import FORMAT_VERSION

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return np.concatenate([rng.normal(size=(400, 2)) * s + c for s, c in [(1, 0), (0.5, 4), (2, -5)]])


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_save_load_round_trip(tmp_path, data, cov):
    gm = GaussianMixture(3, covariance_type=cov, random_state=0, means_init=[[0, 0], [4, 4], [-5, -5]]).fit(data)
    path = gm.save(tmp_path / "model.npz")
    back = dask_em.load(path)
    assert type(back) is GaussianMixture and back.get_params()["covariance_type"] == cov
    np.testing.assert_array_equal(back.get_params()["means_init"], gm.means_init)
    for attr in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(gm, attr))
    assert (back.n_iter_, back.converged_, back.lower_bound_, back.history_) == (
        gm.n_iter_, gm.converged_, gm.lower_bound_, gm.history_,
    )
    np.testing.assert_array_equal(back.predict(data), gm.predict(data))
    # plain format: numpy opens it without pickle, metadata is JSON
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["state/params/means"], gm.means_)
    meta = json.loads(zipfile.ZipFile(path).read("metadata.json"))
    assert meta["format"] == "dask-em-model" and meta["format_version"] == FORMAT_VERSION


def test_load_keeps_xarray_feature_dim(tmp_path, data):
    cube = xr.DataArray(data.reshape(12, 100, 2), dims=("t", "x", "band"))
    gm = GaussianMixture(3, random_state=0).fit(cube, feature_dim="band")
    back = dask_em.load(gm.save(tmp_path / "m.npz"))
    xr.testing.assert_equal(back.predict(cube).compute(), gm.predict(cube).compute())


def _rewrite(path, out, edit):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "metadata.json":
                meta = json.loads(raw)
                edit(meta)
                raw = json.dumps(meta)
            zout.writestr(item, raw)


def test_bad_files_give_clear_errors(tmp_path, data):
    good = GaussianMixture(2, random_state=0).fit(data).save(tmp_path / "m.npz")
    _rewrite(good, tmp_path / "v.npz", lambda m: m.update(format_version=99, dask_em_version="9.0"))
    with pytest.raises(ModelFileError, match=r"dask-em 9.0 in file format version 99; this dask-em .* reads format version 1"):
        dask_em.load(tmp_path / "v.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="not a readable dask-em file"):
        dask_em.load(tmp_path / "junk.npz")
    (tmp_path / "cut.npz").write_bytes(Path(good).read_bytes()[:300])
    with pytest.raises(ModelFileError, match="not a readable dask-em file"):
        dask_em.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a readable dask-em file"):
        dask_em.load(tmp_path / "other.npz")
    _rewrite(good, tmp_path / "est.npz", lambda m: m.update(estimator="os.system"))
    with pytest.raises(ModelFileError, match="unknown estimator 'os.system'"):
        dask_em.load(tmp_path / "est.npz")
    with pytest.raises(ModelFileError, match="No dask-em file"):
        dask_em.load(tmp_path / "absent.npz")
    with pytest.raises(dask_em.NotFittedError):
        GaussianMixture(2).save(tmp_path / "unfitted.npz")


FIT_SCRIPT = """
import os, signal, sys
import numpy as np
from dask_em import GaussianMixture
rng = np.random.default_rng(5)
X = np.concatenate([rng.normal(size=(3000, 3)) * s + c for s, c in [(1, 0), (1.5, 2), (0.7, -2)]])
kill_at = int(sys.argv[2])
def cb(iteration, results):
    if iteration == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
gm = GaussianMixture(3, n_init=2, tol=1e-6, max_iter=60, random_state=3, verbose=1)
gm.fit(X, checkpoint=sys.argv[1], callback=cb)
np.save(sys.argv[3], np.concatenate([gm.means_.ravel(), gm.covariances_.ravel(), gm.weights_, [gm.n_iter_, gm.lower_bound_, gm.converged_]]))
"""


def test_checkpoint_resume_after_kill_equals_uninterrupted(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ckpt = tmp_path / "fit.ckpt"

    def run(checkpoint, kill_at, out):
        return subprocess.run(
            [sys.executable, str(script), str(checkpoint), str(kill_at), str(out)],
            env=env, capture_output=True, text=True, timeout=120,
        )

    killed = run(ckpt, 4, tmp_path / "never.npy")
    assert killed.returncode == -9 and ckpt.exists() and not (tmp_path / "never.npy").exists()
    resumed = run(ckpt, 0, tmp_path / "resumed.npy")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stderr and "after iteration 4" in resumed.stderr
    assert "iteration 5:" in resumed.stderr and "iteration 4:" not in resumed.stderr
    assert "initialising" not in resumed.stderr
    whole = run(tmp_path / "other.ckpt", 0, tmp_path / "whole.npy")
    assert whole.returncode == 0, whole.stderr
    a, b = np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "whole.npy")
    assert b[-3] > 6  # the kill really was mid-way
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_fit_is_refused(tmp_path, data):
    ckpt = tmp_path / "c.ckpt"
    gm = GaussianMixture(2, random_state=0, max_iter=3).fit(data, checkpoint=ckpt)
    again = GaussianMixture(2, random_state=0, max_iter=50).fit(data, checkpoint=ckpt)  # max_iter may grow
    assert again.n_iter_ >= gm.n_iter_
    with pytest.raises(ModelFileError, match=r"different fit \(differs in: n_components\)"):
        GaussianMixture(3, random_state=0, max_iter=3).fit(data, checkpoint=ckpt)
    with pytest.raises(ModelFileError, match=r"differs in: data"):
        GaussianMixture(2, random_state=0, max_iter=3).fit(data[:-1], checkpoint=ckpt)
