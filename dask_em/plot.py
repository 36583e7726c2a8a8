"""Plots of fitted mixtures: convergence, components with ellipses, BIC/AIC, label maps.

matplotlib is an optional extra (``pip install "dask-em[plot]"``) and is imported
only when a plot is drawn. Every function draws into ``ax`` (a new figure when it
is None) and returns that ``matplotlib.axes.Axes``.

>>> from dask_em.plot import plot_convergence, plot_components
>>> ax = plot_convergence(gm)                      # doctest: +SKIP
>>> ax = plot_components(gm, X, projection="pca")  # doctest: +SKIP
"""

import numpy as np

from dask_em.families.gaussian import full_covariances

#: Rows of ``X`` drawn at most in :func:`plot_components` (a seeded sample).
MAX_POINTS = 5_000


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "dask_em.plot needs matplotlib, which is an optional dependency; install it "
            'with pip install "dask-em[plot]" (or pip install matplotlib).'
        ) from exc
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots()
    return ax


# --------------------------------------------------------------------------- convergence
def _history(model):
    """(iterations, mean log-likelihoods) from a fitted model or a history list."""
    history = getattr(model, "history_", None)
    if history is None and hasattr(model, "lower_bounds_"):
        history = list(model.lower_bounds_)
    if history is None:
        history = model
    if isinstance(history, np.ndarray):
        history = history.tolist()
    if not isinstance(history, (list, tuple)) or not history:
        raise ValueError(
            "plot_convergence needs a fitted mixture (with history_ or lower_bounds_) or a "
            f"non-empty list of per-iteration values; got {type(model).__name__}. Fit the "
            "model first, with max_iter >= 1."
        )
    if isinstance(history[0], dict):
        iters = [h["iteration"] for h in history]
        values = [h["mean_loglik"] for h in history]
    else:
        iters = list(range(1, len(history) + 1))
        values = list(history)
    return np.asarray(iters), np.asarray(values, dtype=np.float64)


def plot_convergence(model, ax=None):
    """Mean log-likelihood per row against EM iteration.

    Parameters
    ----------
    model : fitted mixture, list of dict or list of float
        A fitted estimator (its ``history_``, else ``lower_bounds_``), a ``history_``
        list, or the values of ``lower_bounds_``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure's).

    Returns
    -------
    ax : matplotlib.axes.Axes
        The curve is ``ax.lines[0]``; x holds the iteration numbers (1, 2, ...).
    """
    iters, values = _history(model)
    ax = _axes(ax)
    ax.plot(iters, values, marker="o", markersize=3, label="mean log-likelihood")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood per row")
    converged = getattr(model, "converged_", None)
    if converged is not None:
        ax.set_title(f"Convergence ({'converged' if converged else 'not converged'} after {len(iters)} iterations)")
    else:
        ax.set_title("Convergence")
    ax.grid(True, alpha=0.3)
    return ax


# --------------------------------------------------------------------------- components
def projection_matrix(model, projection=None):
    """The (2, D) matrix that :func:`plot_components` projects onto.

    Parameters
    ----------
    model : fitted Gaussian mixture
    projection : None, "pca" or array-like of shape (2, D)
        None: the first two features. "pca": the two leading principal axes of the
        component means (weighted by ``weights_``), orthonormal rows. An array: used as given.

    Returns
    -------
    P : ndarray of shape (2, D)
    """
    means = np.asarray(model.means_, dtype=np.float64)
    K, D = means.shape
    if projection is None:
        if D < 2:
            raise ValueError("plot_components needs at least 2 features; this model has 1.")
        return np.eye(2, D)
    if isinstance(projection, str):
        if projection != "pca":
            raise ValueError(f"projection must be None, 'pca' or a (2, {D}) array; got {projection!r}.")
        if K < 3 or D < 2:
            raise ValueError(
                f"projection='pca' needs at least 3 components and 2 features (got K={K}, "
                f"D={D}); use projection=None or pass a (2, {D}) matrix."
            )
        w = np.asarray(model.weights_, dtype=np.float64)
        centred = (means - w @ means) * np.sqrt(w)[:, None]
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return vt[:2]
    P = np.asarray(projection, dtype=np.float64)
    if P.shape != (2, D):
        raise ValueError(f"projection must have shape (2, {D}) for this model; got {P.shape}.")
    return P


def ellipse_geometry(cov2, n_std):
    """Width, height and angle (degrees) of the ``n_std`` ellipse of a 2x2 covariance."""
    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    return 2 * n_std * np.sqrt(vals[1]), 2 * n_std * np.sqrt(vals[0]), angle


def _sample_rows(X, max_points, seed):
    """At most ``max_points`` rows of X (NumPy or dask) as a NumPy array."""
    n = X.shape[0]
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        X = X[idx]
    if hasattr(X, "compute"):
        X = X.compute()
    X = np.asarray(X, dtype=np.float64)
    return X[np.isfinite(X).all(axis=1)]


def plot_components(model, X=None, *, projection=None, n_std=2.0, max_points=MAX_POINTS, seed=0, ax=None):
    """Component means and covariance ellipses on a 2-D projection, over the data.

    Parameters
    ----------
    model : fitted GaussianMixture
        Any ``covariance_type``.
    X : array-like or dask array of shape (n_samples, n_features), optional
        Points drawn under the ellipses (a seeded sample of ``max_points`` rows,
        coloured by predicted component).
    projection : None, "pca" or array-like of shape (2, n_features)
        See :func:`projection_matrix`.
    n_std : float, default=2.0
        Ellipse radius in standard deviations along the projected principal axes.
    max_points : int, default=5000
        At most this many rows are drawn as points.
    seed : int, default=0
        Seed of the point sample.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure's).

    Returns
    -------
    ax : matplotlib.axes.Axes
        One ``matplotlib.patches.Ellipse`` per component in ``ax.patches``, with
        ``gid="component-k"``; a legend names each component's colour and weight.
        The axes are labelled with the feature names (``feature_names_in_``, an
        xarray feature coordinate, else "feature 0", "feature 1") for the first two features, "PC 1", "PC 2" for
        ``projection="pca"``.
    """
    from matplotlib.patches import Ellipse

    plt = _pyplot()
    P = projection_matrix(model, projection)
    K, D = np.shape(model.means_)
    means = np.asarray(model.means_, dtype=np.float64) @ P.T
    covs = P @ full_covariances(model.covariances_, getattr(model, "covariance_type", "full"), K, D) @ P.T
    colours = plt.get_cmap("tab10" if K <= 10 else "tab20")(np.arange(K) % (10 if K <= 10 else 20))
    ax = _axes(ax)
    if X is not None:
        pts = _sample_rows(X, max_points, seed)
        names = getattr(model, "feature_names_in_", None)
        if names is not None and len(pts):  # the sample is NumPy: give the model its columns back
            import pandas as pd

            pts_in = pd.DataFrame(pts, columns=list(names))
        else:
            pts_in = pts
        labels = np.asarray(model.predict(pts_in)) if len(pts) else np.zeros(0, int)
        xy = pts @ P.T
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c=colours[labels], alpha=0.35, linewidths=0, rasterized=True)
    for k in range(K):
        width, height, angle = ellipse_geometry(covs[k], n_std)
        ax.add_patch(
            Ellipse(
                means[k],
                width,
                height,
                angle=angle,
                fill=False,
                edgecolor=colours[k],
                linewidth=2,
                gid=f"component-{k}",
            )
        )
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=60, c="black", zorder=3, label="means")
    ax.autoscale_view()
    name = "first two features" if projection is None else ("PCA of the means" if isinstance(projection, str) else "given projection")
    ax.set_title(f"{K} components ({getattr(model, 'covariance_type', '')}), {name}, {n_std:g} sd")
    xlabel, ylabel = _projection_labels(model, projection)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _component_legend(ax, colours, np.asarray(model.weights_, dtype=np.float64))
    return ax


def _projection_labels(model, projection):
    """Axis labels of :func:`plot_components`: feature names, principal axes or rows."""
    if projection is None:
        names = getattr(model, "feature_names_in_", None)  # DataFrame columns, Dataset variables
        if names is None:  # an xarray feature coordinate of numbers (wavelengths, ...)
            names = getattr(model, "feature_coords_", None)
        if names is None:
            return "feature 0", "feature 1"
        dim = getattr(model, "feature_dim_", None)
        prefix = f"{dim} " if dim and not isinstance(names[0], str) else ""
        return f"{prefix}{names[0]}", f"{prefix}{names[1]}"
    if isinstance(projection, str):
        return "PC 1", "PC 2"
    return "projection row 1", "projection row 2"


def _component_legend(ax, colours, weights):
    """A legend entry per component (its colour and weight), and the means' marker."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour, linewidth=2, label=f"component {k} (weight {w:.2f})")
        for k, (colour, w) in enumerate(zip(colours, weights))
    ]
    handles.append(Line2D([], [], color="black", marker="x", linestyle="none", label="means"))
    columns = 1 if len(handles) <= 7 else 2
    ax.legend(handles=handles, fontsize="small", ncols=columns, loc="center left", bbox_to_anchor=(1.02, 0.5),
              frameon=False)
    ax.figure.tight_layout()


# --------------------------------------------------------------------------- BIC / AIC
def _criterion_table(table):
    """Columns n_components, bic, aic (sorted by K) from a dict of lists or a list of rows."""
    if isinstance(table, dict):
        cols = {k: list(v) for k, v in table.items()}
    elif isinstance(table, (list, tuple)) and table and all(isinstance(r, dict) for r in table):
        cols = {k: [r.get(k) for r in table] for k in table[0]}
    else:
        raise ValueError(
            "plot_criterion needs a dict of columns or a non-empty list of dict rows with "
            f"'n_components' and 'bic' and/or 'aic'; got {type(table).__name__}."
        )
    if "n_components" not in cols:
        raise ValueError(f"The table has no 'n_components' column (columns: {sorted(cols)}).")
    order = np.argsort(np.asarray(cols["n_components"]))
    return {k: np.asarray(v)[order] for k, v in cols.items()}


def plot_criterion(table, *, criteria=("bic", "aic"), ax=None):
    """BIC and/or AIC against the number of components, the minimum of each marked.

    Parameters
    ----------
    table : dict of lists, list of dict, or an object with a ``table`` attribute
        Columns (or row keys) ``n_components`` and the criteria to draw, e.g.
        ``[{"n_components": 2, "bic": 1.2e4, "aic": 1.1e4}, ...]`` or the ``table`` of
        :func:`dask_em.select_n_components`. With a ``covariance_type`` column holding
        several types, each type gets its own curve.
    criteria : sequence of str, default=("bic", "aic")
        Columns to draw; each must be in the table.
    ax : matplotlib.axes.Axes, optional
        Axes to draw every criterion on. By default a new figure gets one panel per
        criterion, side by side, each with its own scale: BIC and AIC differ by far
        less than their range, so on one scale their curves and minima overlap.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The (first) panel. Each panel has one line per criterion (and covariance
        type), labelled "BIC", "AIC" or "BIC (full)", ..., and one marker line per
        minimum, labelled "best BIC: K=3"; a covariance type keeps its colour in
        every panel. With ``ax=None``, ``ax.figure.axes`` holds the panels.
    """
    cols = _criterion_table(getattr(table, "table", table))
    missing = [c for c in criteria if c not in cols]
    if missing:
        raise ValueError(f"The table has no column {missing[0]!r} (columns: {sorted(cols)}); pass criteria=... accordingly.")
    kinds = cols.get("covariance_type")
    groups = [None] if kinds is None or len(set(kinds.tolist())) < 2 else list(dict.fromkeys(kinds.tolist()))
    if ax is None:
        fig, panels = _pyplot().subplots(1, len(criteria), figsize=(4.2 * len(criteria) + 1.2, 4.2), squeeze=False)
        panels = list(panels[0])
    else:
        panels = [ax] * len(criteria)
    colours = _pyplot().get_cmap("tab10")(np.arange(len(groups)) % 10)
    styles = {"bic": ("-", "o"), "aic": ("--", "s")}
    for ax, name in zip(panels, criteria):
        linestyle, marker = styles.get(name, (":", "^"))
        for colour, group in zip(colours, groups):
            rows = np.ones(len(cols["n_components"]), bool) if group is None else kinds == group
            ks = cols["n_components"][rows].astype(int)
            values = cols[name][rows].astype(np.float64)
            suffix = "" if group is None else f" ({group})"
            ax.plot(ks, values, marker=marker, markersize=4, linestyle=linestyle, color=colour,
                    label=name.upper() + suffix)
            best = int(np.argmin(values))
            ax.plot([ks[best]], [values[best]], marker="*", markersize=15, color=colour, markeredgecolor="black",
                    markeredgewidth=0.8, linestyle="none", zorder=4, label=f"best {name.upper()}{suffix}: K={ks[best]}")
    for ax in dict.fromkeys(panels):  # each panel once
        drawn = [n.upper() for p, n in zip(panels, criteria) if p is ax]
        ax.set_xlabel("number of components K")
        ax.set_ylabel(f"{' / '.join(drawn)} (lower is better)")
        ax.set_xticks(np.unique(cols["n_components"].astype(int)))
        ax.legend(fontsize="small", frameon=False)
        ax.grid(True, alpha=0.3)
    panels[0].figure.tight_layout()
    return panels[0]


# --------------------------------------------------------------------------- label map
def plot_label_map(labels, *, class_names=None, ax=None, cmap="tab10", title=None):
    """Map of component labels held in a 2-D xarray DataArray (missing labels blank).

    Parameters
    ----------
    labels : xarray.DataArray of shape (y, x)
        Integer labels, or float with NaN where no label exists (masked pixels);
        dask-backed arrays are computed. Dimensions named ``y`` and ``x`` are put in
        that order; otherwise the array's own order is used (rows, columns). With
        coordinates, the map is drawn north up (larger ``y`` at the top, whether the
        coordinate ascends or descends) with square pixels when ``x`` and ``y``
        have the same spacing (equal aspect in coordinate units).
    class_names : sequence of str, optional
        Name of each label (index = label), shown on the colour bar.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure's).
    cmap : str, default="tab10"
        Matplotlib colormap of the labels.
    title : str, optional
        Title of the axes.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The image is ``ax.images[0]`` (a masked array: masked where the label is missing).
    """
    import xarray as xr
    from matplotlib.colors import BoundaryNorm

    plt = _pyplot()
    if not isinstance(labels, xr.DataArray):
        raise ValueError(
            f"plot_label_map needs an xarray.DataArray with two dimensions; got "
            f"{type(labels).__name__}. Wrap it, e.g. xr.DataArray(labels, dims=('y', 'x'))."
        )
    if labels.ndim != 2:
        raise ValueError(
            f"plot_label_map needs a 2-D DataArray; got dims {labels.dims}. Select one "
            f"slice first, e.g. labels.isel(time=0)."
        )
    if set(labels.dims) == {"y", "x"}:
        labels = labels.transpose("y", "x")
    values = np.asarray(labels.values, dtype=np.float64)
    mask = ~np.isfinite(values)
    present = np.unique(values[~mask]).astype(int)
    n_classes = int(present.max()) + 1 if present.size else 1
    image = np.ma.masked_array(np.where(mask, 0, values), mask=mask)
    ax = _axes(ax)
    extent, origin = None, "upper"
    ydim, xdim = labels.dims
    if ydim in labels.coords and xdim in labels.coords and labels.shape[0] > 1 and labels.shape[1] > 1:
        xs, ys = labels[xdim].values.astype(np.float64), labels[ydim].values.astype(np.float64)
        dx, dy = (xs[1] - xs[0]) / 2, abs(ys[1] - ys[0]) / 2
        if ys[-1] > ys[0]:  # ascending y: row 0 is the southernmost, drawn at the bottom
            origin, bottom, top = "lower", ys[0] - dy, ys[-1] + dy
        else:
            bottom, top = ys[-1] - dy, ys[0] + dy
        extent = (xs[0] - dx, xs[-1] + dx, bottom, top)
    cm = plt.get_cmap(cmap, n_classes)
    norm = BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes)
    im = ax.imshow(image, cmap=cm, norm=norm, interpolation="nearest", extent=extent, origin=origin, aspect="equal")
    bar = ax.figure.colorbar(im, ax=ax, ticks=np.arange(n_classes), fraction=0.046, pad=0.04)
    bar.set_label(labels.name or "component")
    if class_names is not None:
        if len(class_names) < n_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the labels go up to {n_classes - 1}.")
        bar.set_ticklabels(list(class_names)[:n_classes])
    ax.set_xlabel(xdim)
    ax.set_ylabel(ydim)
    ax.set_title(title or f"{labels.name or 'labels'}: {present.size} classes, {int(mask.sum())} missing")
    return ax


__all__ = [
    "ellipse_geometry",
    "plot_components",
    "plot_convergence",
    "plot_criterion",
    "plot_label_map",
    "projection_matrix",
]
