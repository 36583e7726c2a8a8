"""Outputs at URLs, against a real S3 API: moto's server on 127.0.0.1, read and written
with s3fs (test-only dependencies; nothing leaves the machine).

Fits read an ``s3://`` store; labels, models and checkpoints are written back and
read again; a write that fails leaves nothing readable at its target (and an old
store there untouched); ``dask-em fit`` / ``predict`` with ``s3://`` outputs, as
subprocesses on a LocalCluster's worker process, write to the bucket and not to a local
folder called ``s3:``. ``file://`` and ``memory://`` outputs go where they say.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal

import dask_em
from dask_em import GaussianMixture
from dask_em.io import write_zarr

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "dask-em-test"


@pytest.fixture(scope="module")
def s3_env():
    """Environment of a moto S3 server started here on 127.0.0.1 (fake credentials)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def data(s3_env):
    """Two separated Gaussian blobs (seeded), as an ``s3://`` Zarr store of 4 row chunks."""
    rng = np.random.default_rng(13)
    X = np.concatenate([rng.normal(0, 1, (400, 3)), rng.normal(5, 1, (400, 3))])
    X = X[rng.permutation(len(X))]
    url = f"s3://{BUCKET}/data.zarr"
    arr = zarr.create_array(url, shape=X.shape, chunks=(200, 3), dtype="f8", zarr_format=3)
    arr[:] = X
    return X, url


def keys(prefix=""):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return sorted(fs.find(f"{BUCKET}/{prefix}"))


def test_fit_from_s3_then_labels_model_and_checkpoint_back(data, tmp_path, monkeypatch):
    X, url = data
    monkeypatch.chdir(tmp_path)  # a wrong local write would land here, as ./s3:/...
    gm = GaussianMixture(2, random_state=0).fit(url, checkpoint=f"s3://{BUCKET}/fit.ckpt")
    local = GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=(200, 3)))
    assert_array_equal(gm.means_, local.means_)  # the same rows, in the same chunks
    assert f"{BUCKET}/fit.ckpt" in keys()

    write_zarr(gm.predict(url), f"s3://{BUCKET}/labels.zarr", name="labels", fill_value=-1)
    labels = zarr.open_group(f"s3://{BUCKET}/labels.zarr", mode="r")["labels"]
    assert_array_equal(labels[:], local.predict(X))
    import xarray as xr  # an xarray result (consolidated metadata) goes the same way

    cube = xr.DataArray(gm.predict(X).reshape(20, 40), dims=("y", "x"), coords={"y": np.arange(20) * 10.0})
    write_zarr(cube.chunk({"y": 5}), f"s3://{BUCKET}/map.zarr", name="labels")
    back_map = xr.open_zarr(f"s3://{BUCKET}/map.zarr")["labels"]
    assert_array_equal(back_map.values, cube.values)
    assert_array_equal(back_map["y"].values, cube["y"].values)
    gm.save(f"s3://{BUCKET}/model.npz")
    back = dask_em.load(f"s3://{BUCKET}/model.npz")
    assert_array_equal(back.means_, gm.means_)
    assert_array_equal(back.predict(X), local.predict(X))

    # the same fit with the checkpoint resumes at its end: no EM pass, same result
    again = GaussianMixture(2, random_state=0).fit(url, checkpoint=f"s3://{BUCKET}/fit.ckpt")
    assert_array_equal(again.means_, gm.means_)
    assert again.n_iter_ == gm.n_iter_
    assert not any(k.startswith(f"{BUCKET}/.") for k in keys())  # no temporary prefix left
    assert os.listdir(tmp_path) == []


def failing(block, block_info=None, *, target, seen):
    """Record whether ``target`` can be opened while the write runs; fail on the last block."""
    try:
        seen.append(zarr.open_group(target, mode="r")["labels"][:].tolist())
    except Exception:
        seen.append(None)
    if block_info[None]["chunk-location"][0] == 3:
        raise RuntimeError("simulated failure in the last block")
    return block


def test_failed_write_leaves_no_readable_half_result(data):
    X, url = data
    target = f"s3://{BUCKET}/half.zarr"
    labels = da.from_array(np.arange(800) % 2, chunks=200)
    seen = []
    bad = labels.map_blocks(failing, target=target, seen=seen, dtype=labels.dtype)
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="simulated"):
        write_zarr(bad, target, name="labels")
    assert seen and seen == [None] * len(seen)  # nothing readable during the write
    with pytest.raises(Exception):
        zarr.open_group(target, mode="r")
    assert keys("half.zarr") == [] and not any(".half.zarr.tmp" in k for k in keys())

    # over an existing store: the old one stays readable during the write and after a failure
    write_zarr(labels, target, name="labels")
    old = (np.arange(800) % 2).tolist()
    seen.clear()
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="simulated"):
        write_zarr(bad, target, name="labels")
    assert seen and seen == [old] * len(seen)
    assert zarr.open_group(target, mode="r")["labels"][:].tolist() == old
    assert not any(".half.zarr.tmp" in k for k in keys())

    # a finished write replaces it, and leaves no key of the old store behind
    write_zarr(labels[:400] + 7, target, name="labels")
    assert zarr.open_group(target, mode="r")["labels"][:].tolist() == [7, 8] * 200
    assert len([k for k in keys("half.zarr") if "/c/" in k]) == 2


def test_missing_bucket_is_refused_before_any_work(data):
    X, url = data
    gm = GaussianMixture(2, random_state=0, max_iter=2).fit(X)
    with pytest.raises(ValueError, match=r"'s3://no-such-bucket/m.npz'.*bucket 'no-such-bucket' does not exist"):
        gm.save("s3://no-such-bucket/m.npz")
    with pytest.raises(ValueError, match="existing folder"):
        gm.save(f"s3://{BUCKET}/data.zarr")
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{BUCKET}/notes.txt", b"keep me")
    with pytest.raises(ValueError, match="existing file, not a Zarr store"):
        write_zarr(gm.predict(X), f"s3://{BUCKET}/notes.txt", name="labels")
    with pytest.raises(ValueError, match="existing folder .prefix. that is not a Zarr store"):
        write_zarr(gm.predict(X), f"s3://{BUCKET}", name="labels")
    assert s3fs.S3FileSystem(skip_instance_cache=True).cat_file(f"{BUCKET}/notes.txt") == b"keep me"


def test_file_and_memory_urls_are_written_where_they_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    gm = GaussianMixture(2, random_state=0, max_iter=20).fit(X)
    out = tmp_path / "out"
    out.mkdir()
    write_zarr(gm.predict(X), f"file://{out}/labels.zarr", name="labels")
    gm.save(f"file://{out}/m.npz")
    assert sorted(os.listdir(out)) == ["labels.zarr", "m.npz"]
    assert_array_equal(zarr.open_group(str(out / "labels.zarr"), mode="r")["labels"][:], gm.predict(X))
    assert_array_equal(dask_em.load(str(out / "m.npz")).means_, gm.means_)

    write_zarr(da.from_array(gm.predict(X), chunks=100), "memory://h13/labels.zarr", name="labels")
    gm.save("memory://h13/m.npz")
    assert_array_equal(zarr.open_group("memory://h13/labels.zarr", mode="r")["labels"][:], gm.predict(X))
    assert_array_equal(dask_em.load("memory://h13/m.npz").means_, gm.means_)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no ./file: or ./memory: folder


def test_cli_fit_and_predict_write_to_s3(data, tmp_path):
    """The issue's command lines, on a LocalCluster of one worker process (started after
    the S3 environment is set, so the worker reaches moto too)."""
    from distributed import LocalCluster

    X, url = data
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dask_em", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)

    model = f"s3://{BUCKET}/cli/model.npz"
    out = f"s3://{BUCKET}/cli/labels.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="1GiB") as cluster:
        where = ["--scheduler", cluster.scheduler_address, "-q"]
        fit = cli("fit", url, "-k", "2", "--random-state", "0", *where, "-o", model)
        assert fit.returncode == 0, fit.stderr
        pred = cli("predict", model, url, *where, "-o", out)
        assert pred.returncode == 0, pred.stderr
    assert f"labels written to {out}" in pred.stdout
    gm = dask_em.load(model)
    assert_array_equal(zarr.open_group(out, mode="r")["labels"][:], gm.predict(X))
    assert os.listdir(tmp_path) == []  # nothing written to a local ./s3: folder

    memory = cli("predict", model, url, "-q", "-o", "memory://labels.zarr")
    assert memory.returncode == 2
    assert "dask-em: error: Cannot write the output store to 'memory://labels.zarr': memory:// is lost" in memory.stderr
