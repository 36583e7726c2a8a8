"""dask_em.plot: every figure is rendered to PNG and its contents checked against
closed forms (ellipse axes from the eigenvalues of the projected covariance,
curves equal to the fitted history), not only for existence."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from dask_em import GaussianMixture  # noqa: E402
from dask_em.plot import (  # noqa: E402
    plot_components,
    plot_convergence,
    plot_criterion,
    plot_label_map,
    projection_matrix,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(ax, path):
    ax.figure.savefig(path, dpi=60)
    plt.close(ax.figure)
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    # not a blank canvas: several distinct colours were drawn
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 5


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(42)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 7.0, 4.0]])
    scales = np.array([[1.0, 0.5, 2.0], [0.3, 1.5, 1.0], [1.2, 1.2, 0.4]])
    X = np.concatenate([c + s * rng.standard_normal((400, 3)) for c, s in zip(centres, scales)])
    return X


@pytest.fixture(scope="module", params=["full", "tied", "diag", "spherical"])
def fitted(request, blobs):
    gm = GaussianMixture(3, covariance_type=request.param, random_state=0).fit(blobs)
    return gm


def _expected_full_covariances(gm):
    """(K, D, D) covariances written out from scikit-learn's shape conventions."""
    K, D = gm.means_.shape
    c = gm.covariances_
    return {
        "full": lambda: c,
        "tied": lambda: np.stack([c] * K),
        "diag": lambda: np.stack([np.diag(v) for v in c]),
        "spherical": lambda: np.stack([v * np.eye(D) for v in c]),
    }[gm.covariance_type]()


def test_convergence_line_equals_history(blobs, tmp_path):
    gm = GaussianMixture(3, random_state=1, tol=1e-6).fit(blobs)
    ax = plot_convergence(gm)
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, gm.n_iter_ + 1))
    np.testing.assert_array_equal(line.get_ydata(), [h["mean_loglik"] for h in gm.history_])
    np.testing.assert_array_equal(line.get_ydata(), gm.lower_bounds_)
    assert "converged" in ax.get_title()
    _save(ax, tmp_path / "convergence.png")
    # a plain list of lower bounds works too
    ax2 = plot_convergence(list(gm.lower_bounds_))
    np.testing.assert_array_equal(ax2.lines[0].get_ydata(), gm.lower_bounds_)
    plt.close(ax2.figure)


def test_convergence_rejects_unfitted():
    with pytest.raises(ValueError, match="Fit the model first"):
        plot_convergence(GaussianMixture(2))


def test_components_ellipses_match_covariances(fitted, blobs, tmp_path):
    n_std = 2.0
    ax = plot_components(fitted, blobs, n_std=n_std)
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    covs = _expected_full_covariances(fitted)
    for k, e in enumerate(ellipses):
        assert e.get_gid() == f"component-{k}"
        np.testing.assert_allclose(e.center, fitted.means_[k, :2], rtol=1e-12)
        sub = covs[k][:2, :2]
        ev = np.sort(np.linalg.eigvalsh(sub))[::-1]
        np.testing.assert_allclose([e.width, e.height], 2 * n_std * np.sqrt(ev), rtol=1e-10)
        if fitted.covariance_type in ("diag", "spherical"):
            # axis-aligned: the axes are the standard deviations of features 0 and 1
            np.testing.assert_allclose(sorted([e.width, e.height]), sorted(2 * n_std * np.sqrt(np.diag(sub))), rtol=1e-10)
        else:
            # the major axis points along the leading eigenvector of the 2x2 block
            vals, vecs = np.linalg.eig(sub)
            v = vecs[:, np.argmax(vals)]
            a = np.radians(e.angle)
            assert abs(abs(np.cos(a) * v[0] + np.sin(a) * v[1]) - 1) < 1e-8
    # data points were drawn (a scatter of the sample plus one of the means)
    offsets = [c.get_offsets() for c in ax.collections]
    assert sorted(len(o) for o in offsets) == [3, len(blobs)]
    # axes named after the features plotted; a legend entry per component, with its weight
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("feature 0", "feature 1")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"component {k} (weight {w:.2f})" for k, w in enumerate(fitted.weights_)] + ["means"]
    _save(ax, tmp_path / f"components-{fitted.covariance_type}.png")


def test_components_axes_carry_feature_names(blobs):
    import pandas as pd

    frame = pd.DataFrame(blobs, columns=["red", "nir", "swir"])
    gm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(frame)
    ax = plot_components(gm, frame)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("red", "nir")
    plt.close(ax.figure)
    ax = plot_components(gm, projection="pca")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC 1", "PC 2")
    plt.close(ax.figure)
    cube = xr.DataArray(blobs.reshape(40, 30, 3), dims=("y", "x", "band"), coords={"band": [490, 560, 665]})
    gm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(cube, feature_dim="band")
    ax = plot_components(gm, blobs)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("band 490", "band 560")
    plt.close(ax.figure)


def test_components_pca_projection(fitted, tmp_path):
    P = projection_matrix(fitted, "pca")
    np.testing.assert_allclose(P @ P.T, np.eye(2), atol=1e-12)
    # the leading axes of the weighted scatter of the means, computed independently
    w, m = fitted.weights_, fitted.means_
    mbar = (w[:, None] * m).sum(axis=0)
    scatter = ((m - mbar).T * w) @ (m - mbar)
    vals, vecs = np.linalg.eigh(scatter)
    for i, j in [(0, -1), (1, -2)]:
        assert abs(abs(P[i] @ vecs[:, j]) - 1) < 1e-8
    ax = plot_components(fitted, projection="pca", n_std=1.0)
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    covs = _expected_full_covariances(fitted)
    for k, e in enumerate(ellipses):
        np.testing.assert_allclose(e.center, P @ m[k], rtol=1e-10, atol=1e-12)
        ev = np.sort(np.linalg.eigvalsh(P @ covs[k] @ P.T))[::-1]
        np.testing.assert_allclose([e.width, e.height], 2 * np.sqrt(ev), rtol=1e-10)
    _save(ax, tmp_path / "components-pca.png")


def test_components_given_matrix_and_bad_projection(fitted):
    P = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    ax = plot_components(fitted, projection=P)
    e0 = [p for p in ax.patches if isinstance(p, Ellipse)][0]
    np.testing.assert_allclose(e0.center, fitted.means_[0, [2, 0]])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        plot_components(fitted, projection=np.eye(2))
    with pytest.raises(ValueError, match="'pca'"):
        plot_components(fitted, projection="tsne")


def _lines(ax):
    """Every line of the figure of ``ax`` (all its panels)."""
    return [ln for panel in ax.figure.axes for ln in panel.lines]


def test_criterion_rows_and_columns(tmp_path):
    rows = [
        {"n_components": 3, "bic": 90.0, "aic": 70.0},
        {"n_components": 1, "bic": 120.0, "aic": 110.0},
        {"n_components": 2, "bic": 80.0, "aic": 75.0},
    ]
    ax = plot_criterion(rows)
    # one panel per criterion, each on its own scale
    bic_panel, aic_panel = ax.figure.axes
    assert bic_panel is ax and bic_panel.get_ylabel().startswith("BIC") and aic_panel.get_ylabel().startswith("AIC")
    assert [ln.get_label() for ln in aic_panel.lines] == ["AIC", "best AIC: K=3"]
    lines = _lines(ax)
    curves = [ln for ln in lines if ln.get_label() in ("BIC", "AIC")]
    assert [c.get_label() for c in curves] == ["BIC", "AIC"]
    np.testing.assert_array_equal(curves[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(curves[0].get_ydata(), [120.0, 80.0, 90.0])
    np.testing.assert_array_equal(curves[1].get_ydata(), [110.0, 75.0, 70.0])
    best = {ln.get_label(): (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in lines if ln.get_label().startswith("best")}
    assert best == {"best BIC: K=2": (2, 80.0), "best AIC: K=3": (3, 70.0)}
    # given one axes, every criterion is drawn on it
    _, one = plt.subplots()
    assert plot_criterion(rows, ax=one) is one and len(one.figure.axes) == 1
    assert [ln.get_label() for ln in one.lines] == ["BIC", "best BIC: K=2", "AIC", "best AIC: K=3"]
    plt.close(one.figure)
    _save(ax, tmp_path / "bic.png")
    cols = {"n_components": [1, 2, 3], "bic": [120.0, 80.0, 90.0]}
    ax = plot_criterion(cols, criteria=("bic",))
    assert [ln.get_label() for ln in ax.lines] == ["BIC", "best BIC: K=2"]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="no column 'aic'"):
        plot_criterion(cols)


def test_criterion_one_curve_per_covariance_type():
    rows = [
        {"n_components": k, "covariance_type": t, "bic": b, "aic": b - 5}
        for t, bs in (("full", [50.0, 40.0, 45.0]), ("diag", [60.0, 55.0, 52.0]))
        for k, b in zip((1, 2, 3), bs)
    ]
    ax = plot_criterion(rows, criteria=("bic",))
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert set(lines) == {"BIC (full)", "best BIC (full): K=2", "BIC (diag)", "best BIC (diag): K=3"}
    np.testing.assert_array_equal(lines["BIC (diag)"].get_ydata(), [60.0, 55.0, 52.0])
    plt.close(ax.figure)


def test_criterion_from_fitted_models(blobs):
    """The table as the notebook builds it, from real fits: BIC picks the true K=3."""
    rows = []
    for k in (1, 2, 3, 4):
        gm = GaussianMixture(k, covariance_type="diag", random_state=0).fit(blobs)
        rows.append({"n_components": k, "bic": gm.bic(blobs), "aic": gm.aic(blobs)})
    ax = plot_criterion(rows)
    best = [ln.get_label() for ln in _lines(ax) if ln.get_label().startswith("best BIC")]
    assert best == ["best BIC: K=3"]
    plt.close(ax.figure)


def test_label_map_masks_missing(tmp_path):
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 4, size=(20, 30)).astype(np.float64)
    lab[:5, :7] = np.nan
    da_ = xr.DataArray(lab, dims=("x", "y"), coords={"x": np.arange(20) * 10.0, "y": np.arange(30) * -5.0}, name="land cover")
    ax = plot_label_map(da_)
    img = ax.images[0].get_array()
    # transposed to (y, x)
    assert img.shape == (30, 20)
    np.testing.assert_array_equal(img.mask, np.isnan(lab.T))
    np.testing.assert_array_equal(img.data[~img.mask], lab.T[~np.isnan(lab.T)])
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y"
    assert "4 classes" in ax.get_title() and "35 missing" in ax.get_title()
    _save(ax, tmp_path / "labels.png")
    ax = plot_label_map(da_, class_names=["a", "b", "c", "d"])
    bar = ax.figure.axes[-1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["a", "b", "c", "d"]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="class_names has 2 names"):
        plot_label_map(da_, class_names=["a", "b"])


def test_label_map_north_up_with_square_pixels():
    """Row 0 of an ascending y coordinate is the southernmost row: drawn at the bottom.
    A descending y coordinate (the usual raster order) is drawn as stored. Pixels of
    equal spacing in x and y are square (equal aspect)."""
    lab = np.zeros((6, 8))
    lab[0] = 1  # the row at the smallest y
    for ys in (100.0 + 10 * np.arange(6), 150.0 - 10 * np.arange(6)):
        da_ = xr.DataArray(lab if ys[0] < ys[-1] else lab[::-1], dims=("y", "x"),
                           coords={"y": ys, "x": 10.0 * np.arange(8)})
        ax = plot_label_map(da_)
        bottom, top = ax.get_ylim()
        assert bottom < top and (bottom, top) == (95.0, 155.0)
        assert ax.get_aspect() == 1.0
        image = ax.images[0]
        # the row drawn lowest holds the label of y = 100
        shown = np.asarray(image.get_array())
        lowest = shown[0] if image.origin == "lower" else shown[-1]
        assert (lowest == 1).all() and (shown.sum(axis=1) == np.where(np.arange(6) == 0, 8, 0)[::1 if image.origin == "lower" else -1]).all()
        plt.close(ax.figure)


def test_label_map_rejects_wrong_input():
    with pytest.raises(ValueError, match="xarray.DataArray"):
        plot_label_map(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="isel"):
        plot_label_map(xr.DataArray(np.zeros((2, 3, 3)), dims=("time", "y", "x")))
