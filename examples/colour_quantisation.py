"""Colour quantisation of a real photograph: GaussianMixture and KMeans over its pixels.

The photograph is ``china.jpg``, which ships with scikit-learn
(``sklearn.datasets.load_sample_image``; reading it needs pillow). Its pixels become a
row-chunked dask array of RGB values (n_pixels, 3); each model finds ``K`` colours,
and every pixel is replaced by the colour of its cluster (KMeans: the centre;
GaussianMixture: the mean of its most probable component). The same pixels are then
quantised with scikit-learn's ``KMeans`` and ``GaussianMixture``:

- from the same starting colours, dask-em and scikit-learn reach the same colours
  (the printed largest difference, in 0-255 units);
- each with its own default initialisation, the printed quantisation errors (mean
  squared error per pixel) can be compared.

The figure shows the original beside the four quantised images.

Run: ``python examples/colour_quantisation.py [--small] [-k 16] [--out DIR]``
"""

import argparse
import logging
import warnings
from pathlib import Path

import dask.array as da
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import cluster, mixture  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from dask_em import GaussianMixture, KMeans  # noqa: E402


def load_pixels(step=1, n_chunks=8):
    """The photograph (every ``step``-th pixel along each axis) and its pixels.

    Returns
    -------
    image : ndarray of shape (height, width, 3), float64 in [0, 1]
    X : dask.array.Array of shape (height * width, 3)
        The pixels as rows, in ``n_chunks`` row chunks.
    """
    image = load_sample_image("china.jpg")[::step, ::step].astype(np.float64) / 255.0
    rows = image.reshape(-1, 3)
    X = da.from_array(rows, chunks=(-(-len(rows) // n_chunks), 3))
    return image, X


def quantise(colours, labels, shape):
    """The image with every pixel replaced by the colour of its label."""
    return np.asarray(colours)[np.asarray(labels)].reshape(shape)


def mse(image, quantised):
    """Mean squared error per pixel, in (0-255 units)^2, summed over R, G, B."""
    return float(((image - quantised) ** 2).sum(axis=-1).mean() * 255.0**2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="every 4th pixel along each axis (107 x 160)")
    p.add_argument("-k", "--n-colours", type=int, default=16, help="number of colours")
    p.add_argument("--out", default="quantisation-output", help="folder for the figure")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    K = args.n_colours

    image, X = load_pixels(step=4 if args.small else 1)
    pixels = X.compute()  # scikit-learn's copy of the same pixels (in memory)
    print(f"china.jpg: {image.shape[0]} x {image.shape[1]} pixels in {X.numblocks[0]} row chunks; K = {K} colours")

    # each library with its own default initialisation
    km = KMeans(n_clusters=K, random_state=0).fit(X)
    gm = GaussianMixture(K, covariance_type="full", random_state=0).fit(X)
    sk_km = cluster.KMeans(n_clusters=K, random_state=0, n_init=1).fit(pixels)
    sk_gm = mixture.GaussianMixture(K, covariance_type="full", random_state=0).fit(pixels)
    results = {
        "dask-em KMeans": quantise(km.cluster_centers_, km.predict(X).compute(), image.shape),
        "dask-em GaussianMixture": quantise(gm.means_, gm.predict(X).compute(), image.shape),
        "scikit-learn KMeans": quantise(sk_km.cluster_centers_, sk_km.predict(pixels), image.shape),
        "scikit-learn GaussianMixture": quantise(sk_gm.means_, sk_gm.predict(pixels), image.shape),
    }
    for name, quantised in results.items():
        print(f"{name}: quantisation error {mse(image, quantised):.2f}")

    # the same starting colours in both libraries: the same result
    start = pixels[np.random.default_rng(1).choice(len(pixels), K, replace=False)]
    a = KMeans(n_clusters=K, init=start, n_init=1).fit(X).cluster_centers_
    b = cluster.KMeans(n_clusters=K, init=start, n_init=1).fit(pixels).cluster_centers_
    print(f"KMeans from the same start: largest centre difference {np.abs(a - b).max() * 255:.2e} (0-255 units)")
    # five EM iterations from scikit-learn's fitted parameters (tol=0: they warn that
    # they stopped at max_iter, which is the point here)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    init = {"weights_init": sk_gm.weights_, "means_init": sk_gm.means_, "precisions_init": sk_gm.precisions_}
    a = GaussianMixture(K, covariance_type="full", max_iter=5, tol=0, **init).fit(X).means_
    b = mixture.GaussianMixture(K, covariance_type="full", max_iter=5, tol=0, **init).fit(pixels).means_
    print(f"GaussianMixture from the same start: largest mean difference {np.abs(a - b).max() * 255:.2e} (0-255 units)")

    # columns: the original, then KMeans and GaussianMixture; rows: dask-em, scikit-learn
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4))
    axes[1, 0].axis("off")
    slots = [axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 1], axes[1, 2]]
    for ax, (title, shown) in zip(slots, [("original", image), *results.items()]):
        ax.imshow(shown, interpolation="nearest")
        ax.set_title(title if title == "original" else f"{title}\n{K} colours, error {mse(image, shown):.1f}",
                     fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "quantised.png", dpi=80)
    print(f"wrote {out / 'quantised.png'}")


if __name__ == "__main__":
    main()
