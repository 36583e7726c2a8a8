"""A checkpoint is resumed only by the fit that wrote it, and only when it is intact.

Issue 13, item 1: real checkpoint files on disk. Another fit (other initial
parameters by value, other data of the same shape, other sample weights, another
dask setting that changes the result) is refused with a message naming what
differs; the same fit resumes. A file edited by hand is refused (its checksum), and
so is one whose values are invalid even with a matching checksum (NaN, wrong
shapes, an iteration count that disagrees with its history).
"""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from dask_em import GaussianMixture, KMeans
from dask_em.exceptions import ConvergenceWarning, ModelFileError
from dask_em.persistence import (
    CHECKPOINT_FORMAT,
    _checksum,
    read_archive,
    write_archive,
)

M0 = np.array([[-3.0, 0.0], [3.0, 0.5]])


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return np.concatenate([rng.normal(size=(800, 2)) + M0[0], rng.normal(size=(800, 2)) + M0[1]])


def _fit(X, ckpt, max_iter=2, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(2, random_state=0, max_iter=max_iter, tol=1e-10, **params).fit(X, checkpoint=ckpt)


def test_initial_parameters_are_compared_by_value(tmp_path, data):
    ckpt = tmp_path / "c.ckpt"
    _fit(data, ckpt, means_init=M0)
    with pytest.raises(ModelFileError, match=r"different fit \(differs in: means_init\)"):
        _fit(data, ckpt, means_init=M0 + 3)
    with pytest.raises(ModelFileError, match=r"differs in: precisions_init, weights_init"):
        _fit(data, ckpt, means_init=M0, weights_init=[0.3, 0.7],
             precisions_init=np.stack([np.eye(2)] * 2))
    # the same values, as a list of ints and floats, resume
    resumed = _fit(data, ckpt, max_iter=5, means_init=M0.tolist())
    assert resumed.n_iter_ == 5 and resumed.history_[0]["iteration"] == 1
    whole = _fit(data, None, max_iter=5, means_init=M0)
    np.testing.assert_array_equal(resumed.means_, whole.means_)


def test_other_data_of_the_same_shape_are_refused(tmp_path, data):
    ckpt = tmp_path / "c.ckpt"
    _fit(data, ckpt)
    with pytest.raises(ModelFileError, match=r"differs in: data or settings \(source\)"):
        _fit(data + 1.0, ckpt)  # same shape, dtype and chunks; other values
    with pytest.raises(ModelFileError, match=r"differs in: data or settings \(weights\)"):
        GaussianMixture(2, random_state=0, max_iter=3, tol=1e-10).fit(
            data, sample_weight=np.full(data.shape[0], 2.0), checkpoint=ckpt)
    with dask.config.set({"dask_em.split_every": 4}), pytest.raises(
        ModelFileError, match=r"differs in: data or settings \(settings\)"
    ):
        _fit(data, ckpt)
    assert _fit(data, ckpt, max_iter=3).n_iter_ == 3  # the same fit resumes


def test_zarr_stores_are_told_apart_by_location(tmp_path, data):
    paths = []
    for name in ("a.zarr", "b.zarr"):
        z = zarr.create_array(str(tmp_path / name), shape=data.shape, chunks=(400, 2), dtype="f8")
        z[:] = data
        paths.append(str(tmp_path / name))
    ckpt = tmp_path / "c.ckpt"
    _fit(paths[0], ckpt)
    with pytest.raises(ModelFileError, match=r"differs in: data or settings \(source\)"):
        _fit(paths[1], ckpt)
    assert _fit(paths[0], ckpt, max_iter=4).n_iter_ == 4
    # a dask array of the same store, by a name the user gives, resumes across sessions too
    named = da.from_zarr(paths[0], name="my-pixels")
    _fit(named, tmp_path / "d.ckpt")
    assert _fit(da.from_zarr(paths[0], name="my-pixels"), tmp_path / "d.ckpt", max_iter=3).n_iter_ == 3


def _rewrite(path, edit, redigest):
    """Edit a checkpoint's metadata and arrays in place, as a hand (or a bug) would."""
    metadata, arrays = read_archive(path, CHECKPOINT_FORMAT)
    edit(metadata, arrays)
    if redigest:
        metadata["digest"] = _checksum(metadata, arrays)
    write_archive(path, metadata, arrays)


def _set(key, value):
    def edit(metadata, arrays):
        metadata["starts"][0][key] = value
    return edit


def _array(name, make):
    def edit(metadata, arrays):
        arrays[name] = make(arrays[name])
    return edit


EDITS = {
    "n_iter": (_set("n_iter", 1), r"start 0 says n_iter=1 but its history holds 2 EM iterations"),
    "converged": (_set("converged", "yes"), r"converged is 'yes', not true or false"),
    "negative n_iter": (_set("n_iter", -2), r"n_iter is -2, not an int >= 0"),
    "nan means": (_array("start0/params/means", lambda a: np.where(a == a[0, 0], np.nan, a)),
                  r"start 0: means\[0, 0\] is nan"),
    "wrong shape": (_array("start0/params/means", lambda a: a[:1]), r"start 0: means has the shape \(1, 2\)"),
    "weights": (_array("start0/weights", lambda a: a * 2), r"start 0: weights_ sums to 2"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_checkpoints_are_refused(tmp_path, data, case):
    ckpt = tmp_path / "c.ckpt"
    _fit(data, ckpt)
    edit, message = EDITS[case]
    _rewrite(ckpt, edit, redigest=False)
    with pytest.raises(ModelFileError, match=r"modified after dask-em wrote it \(its checksum does not match\)"):
        _fit(data, ckpt, max_iter=5)
    _rewrite(ckpt, lambda m, a: None, redigest=True)  # a matching checksum: the values are checked
    with pytest.raises(ModelFileError, match=rf"c\.ckpt' is invalid: {message}"):
        _fit(data, ckpt, max_iter=5)


def test_converged_before_any_iteration_is_refused(tmp_path, data):
    ckpt = tmp_path / "c.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        KMeans(2, random_state=0, max_iter=2, n_init=1).fit(data, checkpoint=ckpt)

    def edit(metadata, arrays):
        start = metadata["starts"][0]
        start.update(n_iter=0, converged=True, history=[])
    _rewrite(ckpt, edit, redigest=True)
    with pytest.raises(ModelFileError, match=r"start 0 says it converged before any EM iteration"):
        KMeans(2, random_state=0, max_iter=5, n_init=1).fit(data, checkpoint=ckpt)
