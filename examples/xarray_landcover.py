"""Land-cover classes from a multispectral image cube (y, x, band) with NaN fill values.

A synthetic cube stands in for a satellite scene: four surface types (water, forest,
grassland, bare soil) with typical reflectance spectra in six bands, sensor noise, a
cloud and a no-data stripe filled with NaN. The steps are the ones for a real cube
opened with ``xr.open_zarr``, and dask-em does each of the first three for you:

1. ``gm.fit(cube, feature_dim="band")``: ``band`` holds the features, every other
   dimension (here y, x) is a sample dimension; each chunk is flattened to rows on its
   own, and pixels with a NaN band are left out (``nan_policy="omit"``, the default for
   xarray input);
2. ``gm.predict(cube)``: a lazy DataArray (y, x) with the cube's coordinates and
   attributes, NaN where no data;
3. ``gm.predict_proba(cube)``: (y, x, component), for the confidence of each pixel;
4. plot the map and write the labels to Zarr.

Run: ``python examples/xarray_landcover.py [--small] [--out DIR]``
"""

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from dask_em import GaussianMixture  # noqa: E402
from dask_em.plot import plot_label_map  # noqa: E402

logger = logging.getLogger("landcover")

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
# Mean reflectance of each surface type per band (rough, textbook shapes).
SPECTRA = np.array(
    [
        [0.06, 0.05, 0.03, 0.02, 0.01, 0.01],  # water
        [0.03, 0.06, 0.03, 0.35, 0.16, 0.07],  # forest
        [0.05, 0.09, 0.07, 0.28, 0.25, 0.14],  # grassland
        [0.12, 0.16, 0.20, 0.26, 0.34, 0.30],  # bare soil
    ]
)
CLASSES = ["water", "forest", "grassland", "bare soil"]


def make_cube(ny, nx, seed=0, chunk_rows=64):
    """Synthetic reflectance cube and its true class map.

    Returns
    -------
    cube : xarray.DataArray of shape (y, x, band), float32, dask-backed, NaN where no data
    truth : ndarray of shape (y, x), int
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, ny), np.linspace(0, 1, nx), indexing="ij")
    field = np.sin(6 * xx + 2 * np.sin(4 * yy)) + np.cos(5 * yy - 3 * xx)  # smooth "terrain"
    truth = np.digitize(field, np.quantile(field, [0.2, 0.5, 0.8]))
    noise = rng.normal(scale=0.012, size=(ny, nx, len(BANDS)))
    values = (SPECTRA[truth] + noise).astype(np.float32)
    cloud = (yy - 0.3) ** 2 + (xx - 0.7) ** 2 < 0.12**2
    values[cloud] = np.nan
    values[:, nx // 3 : nx // 3 + 2] = np.nan  # a no-data stripe
    cube = xr.DataArray(
        values,
        dims=("y", "x", "band"),
        coords={"y": 4000.0 - 30.0 * np.arange(ny), "x": 500.0 + 30.0 * np.arange(nx), "band": BANDS},
        name="reflectance",
        attrs={"units": "1"},
    ).chunk({"y": chunk_rows, "x": -1, "band": -1})
    return cube, truth


def cluster_cube(cube, n_components, random_state=0):
    """Fit on the valid pixels; return the fitted model and the label map (y, x).

    Parameters
    ----------
    cube : xarray.DataArray with dims (..., band)
        Reflectance; NaN where there is no data.
    n_components : int
        Number of land-cover clusters.
    random_state : int, default=0
        Seed of the initialisation.

    Returns
    -------
    gm : GaussianMixture
        Fitted on the pixels without NaN.
    labels : xarray.DataArray of shape (y, x)
        Lazy; float, NaN where any band is NaN; the cube's coordinates and attributes.
    """
    gm = GaussianMixture(n_components, covariance_type="full", random_state=random_state)
    gm.fit(cube, feature_dim="band")  # rows with NaN are left out, and the log says how many
    labels = gm.predict(cube).rename("landcover")  # the feature dimension is remembered
    return gm, labels


def match_classes(labels, truth, k):
    """Fraction of valid pixels whose cluster maps to the true class (best one-to-one map)."""
    from scipy.optimize import linear_sum_assignment

    ok = np.isfinite(labels)
    table = np.zeros((k, k))
    np.add.at(table, (labels[ok].astype(int), truth[ok]), 1)
    r, c = linear_sum_assignment(-table)
    return table[r, c].sum() / ok.sum(), dict(zip(r.tolist(), c.tolist()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a 120 x 160 scene instead of 1200 x 1600")
    p.add_argument("--out", default="landcover-output", help="folder for the figure and the labels store")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ny, nx = (120, 160) if args.small else (1200, 1600)

    cube, truth = make_cube(ny, nx, chunk_rows=30 if args.small else 200)
    gm, labels = cluster_cube(cube, n_components=len(CLASSES))
    labels = labels.compute()
    score, mapping = match_classes(labels.values, truth, len(CLASSES))
    labels.attrs["classes"] = [CLASSES[mapping[k]] for k in range(len(CLASSES))]
    print(f"clusters: {', '.join(f'{k} -> {CLASSES[v]}' for k, v in sorted(mapping.items()))}")
    print(f"agreement with the true classes: {score:.4f}")
    print(f"missing labels: {int(np.isnan(labels.values).sum())}")

    ax = plot_label_map(labels, class_names=labels.attrs["classes"], title="land-cover clusters (blank: cloud / no data)")
    ax.figure.savefig(out / "landcover-map.png", dpi=80, bbox_inches="tight")
    labels.to_dataset().to_zarr(out / "landcover-labels.zarr", mode="w", consolidated=False)
    print(f"wrote {out / 'landcover-map.png'} and {out / 'landcover-labels.zarr'}")


if __name__ == "__main__":
    main()
