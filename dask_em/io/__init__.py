"""Data edges for stores and labelled arrays: Zarr in and out, xarray in and out.

:func:`dask_em.data.as_source` dispatches here; the writers put per-row results
(labels, probabilities, scores) back into Zarr stores chunk by chunk, at local
paths or URLs (:mod:`dask_em.io.locations`: where outputs go, checked before any pass).
"""

from dask_em.io.xarray_source import XarrayLayout, from_xarray, is_xarray
from dask_em.io.locations import check_output
from dask_em.io.zarr_source import is_zarr, open_zarr_array, replace_path, write_zarr, zarr_to_dask

__all__ = [
    "XarrayLayout",
    "check_output",
    "from_xarray",
    "is_xarray",
    "is_zarr",
    "open_zarr_array",
    "replace_path",
    "write_zarr",
    "zarr_to_dask",
]
