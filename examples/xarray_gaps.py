"""Land cover from an optical + radar cube whose bands have separate gaps.

A synthetic scene stands in for a stack of two sensors on one grid: five optical
bands and two radar backscatter bands (VV, VH) over four surface types. The gaps are
per band, as in real stacks: a cloud hides the optical bands while the radar beside
them sees through it; the radar swath ends before the scene does; the SWIR band
saturates on bright soil; and a corner holds no data at all.

``nan_policy="omit"`` (the default for xarray input) drops every pixel with one NaN
band, so the cloud, the swath edge and the bright soil get no label.
``nan_policy="marginalize"`` fits and labels each pixel on the bands it has (the
missing ones are latent variables of EM), and ``impute`` fills the gaps with their
conditional expectation under the mixture: the optical bands under the cloud come
back from the radar.

1. ``GaussianMixture(..., nan_policy="marginalize").fit(cube, feature_dim="band")``;
2. ``gm.predict(cube)``: a label for every pixel that has any band;
3. ``gm.impute(cube)``: the cube, gaps filled, lazy, same dimensions and coordinates.

Run: ``python examples/xarray_gaps.py [--small] [--out DIR]``
"""

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from dask_em import GaussianMixture  # noqa: E402
from dask_em.plot import plot_label_map  # noqa: E402

OPTICAL = ["blue", "green", "red", "nir", "swir"]
RADAR = ["vv", "vh"]
BANDS = OPTICAL + RADAR
# Mean of each surface type per band: reflectance, and backscatter in dB / 100.
SPECTRA = np.array(
    [
        [0.06, 0.05, 0.03, 0.02, 0.01, -0.20, -0.26],  # water
        [0.03, 0.06, 0.03, 0.35, 0.16, -0.07, -0.12],  # forest
        [0.05, 0.09, 0.07, 0.28, 0.25, -0.10, -0.17],  # grassland
        [0.12, 0.16, 0.20, 0.26, 0.34, -0.09, -0.20],  # bare soil
    ]
)
NOISE = np.array([0.012] * 5 + [0.012, 0.012])
CLASSES = ["water", "forest", "grassland", "bare soil"]


def make_cube(ny, nx, seed=0, chunk_rows=64):
    """Synthetic optical + radar cube with per-band gaps.

    Returns
    -------
    cube : xarray.DataArray of shape (y, x, band), float32, dask-backed, NaN in the gaps
    complete : ndarray of shape (y, x, band)
        The same values without gaps (what ``impute`` should approach).
    truth : ndarray of shape (y, x), int
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, ny), np.linspace(0, 1, nx), indexing="ij")
    field = np.sin(6 * xx + 2 * np.sin(4 * yy)) + np.cos(5 * yy - 3 * xx)  # smooth "terrain"
    truth = np.digitize(field, np.quantile(field, [0.2, 0.5, 0.8]))
    complete = (SPECTRA[truth] + rng.normal(size=(ny, nx, len(BANDS))) * NOISE).astype(np.float32)
    values = complete.copy()
    optical, radar = slice(0, len(OPTICAL)), slice(len(OPTICAL), None)
    cloud = (yy - 0.35) ** 2 + (xx - 0.6) ** 2 < 0.2**2
    values[cloud, optical] = np.nan  # clouds hide the optical bands; the radar sees through
    values[:, int(0.85 * nx) :, radar] = np.nan  # the radar swath ends before the scene
    bright = values[..., OPTICAL.index("swir")] > 0.35
    values[bright, OPTICAL.index("swir")] = np.nan  # the SWIR band saturates on bright soil
    values[: ny // 10, : nx // 10] = np.nan  # no data at all
    cube = xr.DataArray(
        values,
        dims=("y", "x", "band"),
        coords={"y": 4000.0 - 30.0 * np.arange(ny), "x": 500.0 + 30.0 * np.arange(nx), "band": BANDS},
        name="backscatter_and_reflectance",
    ).chunk({"y": chunk_rows, "x": -1, "band": -1})
    return cube, complete, truth


def label_agreement(labels, truth, k):
    """Fraction of labelled pixels whose cluster maps to the true class (best one-to-one map)."""
    from scipy.optimize import linear_sum_assignment

    ok = np.isfinite(labels)
    table = np.zeros((k, k))
    np.add.at(table, (labels[ok].astype(int), truth[ok]), 1)
    r, c = linear_sum_assignment(-table)
    mapping = np.full(k, -1)
    mapping[r] = c
    return table[r, c].sum() / ok.sum(), mapping


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a 120 x 160 scene instead of 1200 x 1600")
    p.add_argument("--out", default="gaps-output", help="folder for the figure and the imputed cube")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ny, nx = (120, 160) if args.small else (1200, 1600)
    K = len(CLASSES)

    cube, complete, truth = make_cube(ny, nx, chunk_rows=30 if args.small else 200)
    gaps = np.isnan(cube.values)
    some, every = gaps.any(axis=-1), gaps.all(axis=-1)
    print(f"pixels: {some.size}; with a gap in some band: {int(some.sum())}; with no data: {int(every.sum())}")

    maps = {}
    for policy in ("omit", "marginalize"):
        gm = GaussianMixture(K, covariance_type="full", nan_policy=policy, random_state=0)
        gm.fit(cube, feature_dim="band")
        labels = gm.predict(cube).rename("landcover").compute()
        score, mapping = label_agreement(labels.values, truth, K)
        maps[policy] = (labels, mapping)
        unlabelled = int(np.isnan(labels.values).sum())
        print(f"{policy}: unlabelled pixels: {unlabelled}; agreement with the true classes: {score:.4f}")
    labels = maps["marginalize"][0].values
    cloudy = gaps[..., 0] & ~every
    under_cloud, _ = label_agreement(np.where(cloudy, labels, np.nan), truth, K)
    print(f"marginalize: agreement under the cloud (radar only): {under_cloud:.4f}")

    filled = gm.impute(cube)  # lazy, the cube's dimensions and coordinates
    filled_values = filled.values
    hidden = gaps & ~every[..., None]
    rmse = float(np.sqrt(np.mean((filled_values[hidden] - complete[hidden]) ** 2)))
    band_means = np.nanmean(cube.values.reshape(-1, len(BANDS)), axis=0)
    naive = float(np.sqrt(np.mean((np.broadcast_to(band_means, gaps.shape)[hidden] - complete[hidden]) ** 2)))
    print(f"impute: RMSE of the filled values {rmse:.4f} (filling each band with its mean: {naive:.4f})")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, policy in zip(axes, ("omit", "marginalize")):
        lab, mapping = maps[policy]
        classes = lab.copy(data=np.where(np.isnan(lab.values), np.nan, mapping[np.nan_to_num(lab.values).astype(int)]))
        plot_label_map(classes, class_names=CLASSES, ax=ax, title=f'nan_policy="{policy}" (blank: no label)')
    fig.savefig(out / "gaps-maps.png", dpi=80, bbox_inches="tight")
    filled.to_dataset(name="filled").to_zarr(out / "gaps-filled.zarr", mode="w", consolidated=False, zarr_format=2)
    print(f"wrote {out / 'gaps-maps.png'} and {out / 'gaps-filled.zarr'}")


if __name__ == "__main__":
    main()
