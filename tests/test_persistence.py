"""Saved models (NPZ + JSON, never pickle) and checkpoints resumed after a kill."""

import ast
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import dask_em
from dask_em import BernoulliMixture, CategoricalMixture, GaussianMixture, ModelFileError, PoissonMixture
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


def _rewrite(path, out, edit=None, arrays=None):
    """Copy the ZIP ``path`` to ``out`` by hand, editing its metadata and replacing arrays."""
    arrays = arrays or {}
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "metadata.json" and edit is not None:
                meta = json.loads(raw)
                edit(meta)
                raw = json.dumps(meta)
            elif item.endswith(".npy") and item[:-4] in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[item[:-4]])
                raw = buf.getvalue()
            zout.writestr(item, raw)
    return out


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


def _discrete_data(kind):
    rng = np.random.default_rng(7)
    if kind == "bernoulli":
        return np.concatenate([rng.random((200, 6)) < p for p in (0.2, 0.8)]).astype(float)
    if kind == "poisson":
        return np.concatenate([rng.poisson(lam, (200, 4)) for lam in (1.0, 6.0)]).astype(float)
    return np.concatenate(  # categorical: 3 codes in the first features, 2 in the last
        [np.column_stack([rng.choice(3, (200, 3), p=p), rng.choice(2, 200)]) for p in ([0.8, 0.1, 0.1], [0.1, 0.1, 0.8])]
    ).astype(float)


def _reference_log_joint(model, X):
    """``log w_k + log p(x | k)`` (n, K) from the fitted attributes, by scipy.stats."""
    if isinstance(model, GaussianMixture):
        K, D = model.means_.shape
        cov = {
            "full": lambda k: model.covariances_[k],
            "tied": lambda k: model.covariances_,
            "diag": lambda k: np.diag(model.covariances_[k]),
            "spherical": lambda k: model.covariances_[k] * np.eye(D),
        }[model.covariance_type]
        dens = np.column_stack([stats.multivariate_normal(model.means_[k], cov(k)).logpdf(X) for k in range(K)])
    elif isinstance(model, CategoricalMixture):
        codes = X.astype(int)
        dens = np.column_stack(
            [sum(np.log(model.probs_[k, d, codes[:, d]]) for d in range(X.shape[1])) for k in range(len(model.weights_))]
        )
    else:
        dist = stats.bernoulli if isinstance(model, BernoulliMixture) else stats.poisson
        dens = dist.logpmf(X[:, None, :], model.means_[None]).sum(axis=2)
    return dens + np.log(model.weights_)


MODELS = {
    **{f"gaussian-{cov}": (lambda cov=cov: GaussianMixture(3, covariance_type=cov, random_state=0)) for cov in
       ("full", "tied", "diag", "spherical")},
    "bernoulli": lambda: BernoulliMixture(2, random_state=0),
    "poisson": lambda: PoissonMixture(2, random_state=0),
    "categorical": lambda: CategoricalMixture(2, random_state=0),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_predicts_alike(tmp_path, data, name):
    X = data if name.startswith("gaussian") else _discrete_data(name)
    model = MODELS[name]().fit(X)
    back = dask_em.load(model.save(tmp_path / "m.npz"))
    assert type(back) is type(model)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    np.testing.assert_array_equal(back.score_samples(X), model.score_samples(X))
    # and both agree with scipy.stats on the saved parameters
    ref = _reference_log_joint(model, X)
    np.testing.assert_array_equal(back.predict(X), ref.argmax(axis=1))
    np.testing.assert_allclose(back.predict_proba(X), np.exp(ref - ref.max(axis=1, keepdims=True))
                               / np.exp(ref - ref.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-12)


def _edited(tmp_path, model, X, edit=None, **arrays):
    """A valid saved model of ``model`` fitted to ``X``, rewritten by hand as ``bad.npz``."""
    good = model.fit(X).save(tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as npz:
        saved = {k: npz[k] for k in npz.files}
    new = {k.replace("__", "/"): f(saved[k.replace("__", "/")].copy()) for k, f in arrays.items()}
    return _rewrite(good, tmp_path / "bad.npz", edit, new)


def _nan_first(a):
    a.flat[0] = np.nan
    return a


def _negate_diagonal(chol):
    chol[1, 0, 0] = -chol[1, 0, 0]
    return chol


def _pad_code(probs):
    probs[0, 3, 2] = 0.5  # feature 3 has 2 codes: entry 2 is padding
    return probs


def _unnormalise_first(probs):
    probs[0, 0] *= 0.5
    return probs


BAD_FILES = {
    "nan weights": (
        lambda: GaussianMixture(2, random_state=0), {"state__weights": _nan_first}, None, r"weights_ holds NaN"),
    "weights not summing to 1": (
        lambda: GaussianMixture(2, random_state=0), {"state__weights": lambda w: w * 0.9}, None,
        r"weights_ sums to 0\.9, not 1"),
    "negative weight": (
        lambda: GaussianMixture(2, random_state=0), {"state__weights": lambda w: w[::-1] - [1.0, -1.0]}, None,
        r"weights_\[0\] is -0\.[0-9]+ \(1 bad values\); weights_ must be finite and >= 0"),
    "wrong n_components": (
        lambda: GaussianMixture(2, random_state=0), {}, lambda m: m["params"].update(n_components=3),
        r"n_components is 3 but weights_ has 2 entries"),
    "wrong n_features_in_": (
        lambda: GaussianMixture(2, random_state=0), {}, lambda m: m["attributes"].update(n_features_in_=3),
        r"means has the shape \(2, 2\), not \(2, 3\)"),
    "precision not positive definite": (
        lambda: GaussianMixture(2, random_state=0), {"state__params__precisions_cholesky": _negate_diagonal}, None,
        r"precisions_cholesky diagonal\[1, 0\] is -[0-9.]+ \(1 bad values\); precisions_cholesky diagonal must be > 0"),
    "precision not triangular": (
        lambda: GaussianMixture(2, random_state=0), {"state__params__precisions_cholesky": lambda c: c + 0.1}, None,
        r"precisions_cholesky\[0, 1, 0\] is .*must be upper triangular"),
    "zero spherical precision": (
        lambda: GaussianMixture(2, covariance_type="spherical", random_state=0),
        {"state__params__precisions_cholesky": lambda c: c * [1.0, 0.0]}, None,
        r"precisions_cholesky\[1\] is 0 .*must be > 0"),
    "covariances disagree with precisions": (
        lambda: GaussianMixture(2, covariance_type="diag", random_state=0),
        {"state__params__covariances": lambda c: c * 2}, None,
        r"covariances\[0, 0\] is .*must equal the inverse of the precisions"),
    "nan means": (
        lambda: GaussianMixture(2, covariance_type="tied", random_state=0), {"state__params__means": _nan_first},
        None, r"means\[0, 0\] is nan .*must be finite"),
}
DISCRETE_BAD_FILES = {
    "bernoulli means of 1.5": (
        "bernoulli", {"state__params__means": lambda m: np.where(np.arange(m.size).reshape(m.shape) == 2, 1.5, m)},
        r"means\[0, 2\] is 1\.5 \(1 bad values\); means must lie in the open interval \(0, 1\)"),
    "poisson means of 0": (
        "poisson", {"state__params__means": lambda m: m * 0}, r"means\[0, 0\] is 0 .*must be finite and > 0"),
    "categorical probs not summing to 1": (
        "categorical", {"state__params__probs": _unnormalise_first},
        r"probs\[0, 0, :\] sums to 0\.5 \(1 such rows\); the probabilities of the codes of a feature must sum to 1"),
    "categorical probs past the codes": (
        "categorical", {"state__params__probs": _pad_code},
        r"probs\[0, 3, 2\] is 0\.5 \(1 bad values\); probs must be 0 past the n_categories\[d\] codes"),
    "categorical probs of 2": (
        "categorical", {"state__params__probs": lambda p: p * 2}, r"probs\[\d, \d, \d\] is .*must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_gaussian_values_are_refused(tmp_path, data, case):
    make, arrays, edit, message = BAD_FILES[case]
    bad = _edited(tmp_path, make(), data, edit, **arrays)
    with pytest.raises(ModelFileError, match=rf"bad\.npz' is invalid: {message}.*re-fit and save the model again"):
        dask_em.load(bad)


@pytest.mark.parametrize("case", sorted(DISCRETE_BAD_FILES))
def test_invalid_discrete_values_are_refused(tmp_path, case):
    kind, arrays, message = DISCRETE_BAD_FILES[case]
    bad = _edited(tmp_path, MODELS[kind](), _discrete_data(kind), None, **arrays)
    with pytest.raises(ModelFileError, match=rf"bad\.npz' is invalid: {message}"):
        dask_em.load(bad)


def test_persistence_knows_only_the_format():
    """persistence.py imports no estimator and calls no private method of one."""
    tree = ast.parse((ROOT / "dask_em" / "persistence.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("dask_em.estimators")]
    private = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")}
    assert not private - {"__name__"}


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


def test_kmeans_family_checks_its_means():
    from dask_em.families import get_family

    check = get_family("kmeans").check_params
    check({"means": np.zeros((3, 2))}, 3, 2)
    with pytest.raises(ValueError, match=r"means has the shape \(3, 2\), not \(2, 2\)"):
        check({"means": np.zeros((3, 2))}, 2, 2)
    with pytest.raises(ValueError, match=r"means\[1, 0\] is inf \(1 bad values\); means must be finite"):
        check({"means": np.array([[0.0, 1.0], [np.inf, 2.0]])}, 2, 2)
    with pytest.raises(ValueError, match=r"the parameters are \['centers'\], not \['means'\]"):
        check({"centers": np.zeros((2, 2))}, 2, 2)
