"""I/O failures say what and where, on real stores and files.

- A corrupt chunk file (overwritten with garbage) ends the fit with a
  ``StoreReadError`` naming the store, the chunk index and its rows, also when the
  read fails on a worker process of a LocalCluster.
  The same for a cube read through xarray (``feature_dim``).
- A store that the cluster cannot unpickle ends the fit with an error that gives the
  scheduler's message, also when the input was to be kept in the cluster's memory.
- A deleted chunk file of a local store is read as the fill value (Zarr's rule),
  and the count of missing chunks is logged as a warning.
- Outputs that cannot be written (a missing folder, a folder where a file goes, a
  file where a store goes, a folder that is not a Zarr store) are refused before any
  pass: a dask callback counts the computes, and the command line fails before its
  cluster starts.
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

from dask_em import CategoricalMixture, GaussianMixture, StoreReadError
from dask_em.data import as_source
from dask_em.io import write_zarr
from tests._counting import CountComputes

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def blobs(n=800, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n // 2, 3)), rng.normal(5, 1, (n // 2, 3))])
    return X[rng.permutation(n)]


def store(path, X, fmt=3, chunk_rows=200):
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="f8",
                            zarr_format=fmt)
    arr[:] = X
    return path


def chunk_file(path, i, fmt):
    return Path(path) / ("c" if fmt == 3 else "") / (f"{i}/0" if fmt == 3 else f"{i}.0")


# ------------------------------------------------------------------ item 7: corrupt chunks
@pytest.mark.parametrize("fmt", [2, 3])
def test_corrupt_chunk_names_store_chunk_and_rows(tmp_path, fmt):
    path = store(tmp_path / "data.zarr", blobs(), fmt)
    target = chunk_file(path, 2, fmt)
    assert target.is_file()
    target.write_bytes(np.random.default_rng(1).bytes(target.stat().st_size))
    with pytest.raises(StoreReadError) as info:
        GaussianMixture(2, random_state=0).fit(str(path))
    message = str(info.value)
    assert f"chunk (2, 0), rows 400..599 of the Zarr store {str(path)!r}" in message
    assert "restore the store" in message
    assert info.value.__cause__ is not None  # the codec's own error, kept
    assert type(info.value.__cause__).__name__ in message


def test_corrupt_chunk_in_a_group_on_a_cluster_worker(tmp_path):
    from distributed import Client, LocalCluster

    group = zarr.open_group(str(tmp_path / "cube.zarr"), mode="w")
    arr = group.create_array("pixels", shape=(800, 3), chunks=(200, 3), dtype="f8")
    arr[:] = blobs()
    (tmp_path / "cube.zarr" / "pixels" / "c" / "3" / "0").write_bytes(b"not zstd at all")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster):
        with pytest.raises(StoreReadError, match=r"chunk \(3, 0\), rows 600..799 .*cube.zarr.* \(array 'pixels'\)"):
            GaussianMixture(2, random_state=0).fit(str(tmp_path / "cube.zarr"), array="pixels")
        # and memory:// is private to each worker process: refused before computing
        with pytest.raises(ValueError, match="memory:// is private to each process"):
            write_zarr(da.zeros(10, chunks=5), "memory://h13-cluster/labels.zarr")
        with dask.config.set(scheduler="threads"):  # computed in this process: memory:// is fine
            write_zarr(da.arange(10, chunks=5), "memory://h13-threads/labels.zarr")
        np.testing.assert_array_equal(zarr.open_array("memory://h13-threads/labels.zarr", mode="r")[:], np.arange(10))


class _StoreTheClusterCannotLoad(zarr.storage.LocalStore):
    """Pickles here, fails to unpickle on the cluster, as a store class missing there
    (or of another version) does."""

    def __setstate__(self, state):
        raise ImportError("this store class cannot be loaded on the cluster")


@pytest.mark.parametrize("persist", ["auto", False])
def test_a_store_the_cluster_cannot_unpickle_is_a_clear_error(tmp_path, persist):
    """Kept in memory (persist), the failed input used to surface as distributed's
    'FuturesCancelledError: lost dependencies' of the sampling pass; now the pass says
    it could not run and gives the scheduler's own message."""
    from distributed import Client, LocalCluster

    path = store(tmp_path / "data.zarr", blobs())
    arr = zarr.open_array(_StoreTheClusterCannotLoad(str(path)), mode="r")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster):
        expected = "could not run: the data it reads, kept in the cluster's memory" if persist else ""
        with pytest.raises(RuntimeError, match=f"{expected}.*deserialization of the task graph"):
            GaussianMixture(2, random_state=0, persist=persist).fit(arr)


def test_corrupt_and_missing_chunks_of_a_cube_read_through_xarray(tmp_path, caplog):
    import xarray as xr

    rng = np.random.default_rng(2)
    cube = xr.DataArray(rng.normal(size=(8, 10, 3)), dims=("time", "y", "band"), name="refl")
    cube.chunk({"time": 2}).to_dataset().to_zarr(str(tmp_path / "cube.zarr"), mode="w")
    chunk = tmp_path / "cube.zarr" / "refl" / "c" / "1" / "0" / "0"
    chunk.write_bytes(b"\x00garbage" * 8)
    with pytest.raises(StoreReadError, match=r"chunk \(1, 0, 0\), region \[2:4, 0:10, 0:3\] of the Zarr store"):
        GaussianMixture(2, random_state=0).fit(str(tmp_path / "cube.zarr"), array="refl", feature_dim="band")
    chunk.unlink()
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        GaussianMixture(2, random_state=0).fit(str(tmp_path / "cube.zarr"), array="refl", feature_dim="band")
    assert "cube.zarr/refl' lacks 1 of its 4 chunks" in caplog.text


def test_intact_store_reads_the_same_through_the_wrapper(tmp_path):
    X = blobs()
    path = store(tmp_path / "ok.zarr", X)
    Xd = as_source(str(path)).X
    assert_array_equal(Xd.compute(), X)
    assert Xd.name == as_source(str(path)).X.name  # same graph, same keys
    assert Xd.name.startswith("from-zarr-")


# ------------------------------------------------------------------ item 8: missing chunks
def test_missing_chunk_reads_as_fill_value_with_a_warning(tmp_path, caplog):
    X = blobs()
    path = store(tmp_path / "holes.zarr", X)
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        as_source(str(path))
    assert "lacks" not in caplog.text  # a complete store: no warning
    chunk_file(path, 1, 3).unlink()
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        Xd = as_source(str(path)).X
    assert f"the Zarr array {str(path)!r} lacks 1 of its 4 chunks" in caplog.text
    assert "fill value (0.0)" in caplog.text
    expected = X.copy()
    expected[200:400] = 0.0  # Zarr's rule: a missing chunk is the fill value
    assert_array_equal(Xd.compute(), expected)


# ------------------------------------------------------------------ item 9: outputs checked first
@pytest.fixture(scope="module")
def fitted():
    X = blobs()
    return GaussianMixture(2, random_state=0).fit(X), da.from_array(X, chunks=(200, 3))


def test_bad_checkpoint_path_fails_before_any_pass(tmp_path, fitted):
    _, Xd = fitted
    (tmp_path / "adir").mkdir()
    bad = {
        str(tmp_path / "missing" / "c.ckpt"): "does not exist; create it first",
        str(tmp_path / "adir"): "is an existing folder",
    }
    for path, why in bad.items():
        for model in (GaussianMixture(2, random_state=0), CategoricalMixture(2, random_state=0)):
            data = Xd if isinstance(model, GaussianMixture) else da.floor(abs(Xd))
            with CountComputes() as count, pytest.raises(ValueError) as info:
                model.fit(data, checkpoint=path)
            assert count.count == 0  # CategoricalMixture would otherwise infer its categories in a pass
            assert f"Cannot write the checkpoint to {path!r}" in str(info.value) and why in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path, fitted):
    gm, _ = fitted
    with pytest.raises(ValueError, match=r"model file to '.*nodir/m.npz': the folder '.*nodir' does not exist"):
        gm.save(tmp_path / "nodir" / "m.npz")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="is an existing folder; give a file path instead"):
        gm.save(tmp_path / "taken")
    assert os.listdir(tmp_path / "taken") == [] and not (tmp_path / "nodir").exists()


def test_predict_onto_a_file_or_a_foreign_folder_is_refused_before_computing(tmp_path, fitted):
    gm, Xd = fitted
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpg")
    cases = {
        notes: "is an existing file, not a Zarr store",
        folder: "existing folder that is not a Zarr store",
        tmp_path / "nodir" / "labels.zarr": "does not exist",
    }
    for target, why in cases.items():
        with CountComputes() as count, pytest.raises(ValueError, match=why):
            write_zarr(gm.predict(Xd), target, name="labels")
        assert count.count == 0
    assert notes.read_text() == "keep me" and os.listdir(folder) == ["a.jpg"]
    # an existing Zarr store is replaced, and an empty folder is fine
    (tmp_path / "empty.zarr").mkdir()
    write_zarr(gm.predict(Xd), tmp_path / "empty.zarr", name="labels")
    write_zarr(gm.predict(Xd), tmp_path / "empty.zarr", name="labels")
    assert_array_equal(zarr.open_group(str(tmp_path / "empty.zarr"), mode="r")["labels"][:], gm.predict(Xd))


def test_cli_refuses_bad_outputs_before_its_cluster_starts(tmp_path):
    path = store(tmp_path / "data.zarr", blobs())
    model = tmp_path / "m.npz"
    GaussianMixture(2, random_state=0).fit(str(path)).save(model)
    (tmp_path / "adir").mkdir()
    (tmp_path / "labels.txt").write_text("x")
    commands = {
        ("fit", path, "-k", "2", "-o", "nodir/m.npz"):
            "Cannot write the model file to 'nodir/m.npz': the folder",
        ("fit", path, "-k", "2", "-o", "m2.npz", "--checkpoint", "missing/c.ckpt"):
            "Cannot write the checkpoint to 'missing/c.ckpt': the folder",
        ("fit", path, "-k", "2", "-o", "adir"):
            "Cannot write the model file to 'adir': it is an existing folder",
        ("predict", model, path, "-o", "labels.txt"):
            "Cannot write the output store to 'labels.txt': it is an existing file, not a Zarr store",
    }
    procs = [subprocess.Popen([sys.executable, "-m", "dask_em", *map(str, args)], env=ENV, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in commands]
    for proc, expected in zip(procs, commands.values()):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, err
        assert err.strip().startswith("dask-em: error: " + expected), err
        assert "local cluster" not in err  # refused before a cluster started (so before any pass)
    assert sorted(os.listdir(tmp_path)) == ["adir", "data.zarr", "labels.txt", "m.npz"]
    assert (tmp_path / "labels.txt").read_text() == "x"
