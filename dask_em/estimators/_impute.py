"""``impute``: the rows of X with each NaN replaced by its conditional expectation.

Lazy and chunked like the input (one task per row block, the parameters one key of
the graph); xarray in, xarray out with the input's dimensions and coordinates.
"""

import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from dask_em._validation import check_is_fitted
from dask_em.engine.marginal import impute_block
from dask_em.engine import as_float64_state


def impute(estimator, X, *, array=None, feature_dim=None):
    """See :meth:`dask_em.estimators._base.BaseMixture.impute`."""
    check_is_fitted(estimator, estimator._fitted_attribute)
    family = estimator._family()
    if family.missing is None:
        raise ValueError(f"{type(estimator).__name__} cannot impute missing features yet.")
    payload = (family, as_float64_state(estimator._get_state()))
    prepared = estimator._prepare(X, reset=False, array=array, feature_dim=feature_dim, nan_policy="marginalize")
    source, dtype = prepared.source, prepared.dtype
    if source.is_numpy:
        return impute_block(source.data, payload).astype(dtype, copy=False)
    Xd = source.X
    payload_d = delayed(payload, traverse=False)
    out = Xd.map_blocks(impute_block, payload_d, dtype=np.float64, name=f"impute-{family.name}-{tokenize(Xd, payload)}")
    if out.dtype != dtype:
        out = out.astype(dtype)
    if source.layout is None:
        return out
    return _as_xarray(out, source.layout, X)


def _as_xarray(out, layout, X):
    """The (N, D) result on the input's sample dimensions and feature dimension."""
    import dask.array as da
    import xarray as xr

    D = out.shape[1]
    shape = layout.sample_shape + (D,)
    chunks = layout.sample_chunks + ((D,),)
    data = da.reshape_blockwise(out, shape, chunks=chunks) if len(layout.sample_dims) > 1 else out
    dims = layout.sample_dims + (layout.feature_dim,)
    coords = dict(layout.coords)
    if layout.feature_names is not None:
        coords[layout.feature_dim] = list(layout.feature_names)
    result = xr.DataArray(data, dims=dims, coords=coords, name=getattr(X, "name", None))
    if isinstance(X, xr.Dataset):
        return result.to_dataset(dim=layout.feature_dim)
    if isinstance(X, xr.DataArray):
        result = result.transpose(*X.dims)
        result.attrs = dict(X.attrs)
    return result
