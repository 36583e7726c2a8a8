"""A pass over in-memory row blocks run in the calling thread: no graph, no scheduler.

A fit of NumPy input pays, on every pass, the fixed cost of building and running a
dask graph (tokenizing the parameters, optimising, scheduling): 2-5 ms, more than
the work of a pass over a few thousand rows, and the whole of scikit-learn's fit
of 1,000 rows takes about that. Inside :func:`in_process` (which
:func:`~dask_em.fitting.fit_models` enters for NumPy input), a pass whose row
blocks are NumPy arrays held by the graph runs here instead, when parallel tasks
would gain nothing: the graph would run one task, the scheduler has one thread
(``num_workers=1``) or is the synchronous one, or the data are at most
:data:`INLINE_BYTES`.

The result is the graph's, bit for bit: the same kernel calls on the same blocks
(grouped into the same tasks), combined in the same tree (the same fan-in, in the
same order), with BLAS limited to one thread where the graph's pass limits it.
Dask input is left to dask: one graph per pass, run by dask's scheduler.
"""

import contextlib
import contextvars

import numpy as np
from dask.core import flatten

#: Most bytes of data a pass runs in the calling thread when the graph would run
#: several tasks in parallel (below this, a pass takes about as long as dask's
#: fixed cost for scheduling it; see benchmarks/README.md).
INLINE_BYTES = 4 * 2**20

_enabled = contextvars.ContextVar("dask_em_inline_passes", default=False)


@contextlib.contextmanager
def in_process(enabled=True):
    """Let :func:`~dask_em.engine.passes.run_pass` run passes over in-memory blocks
    in the calling thread (see the module's docstring) while the context is open."""
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def enabled():
    """Whether passes may run in the calling thread here (:func:`in_process`)."""
    return _enabled.get()


def in_memory_blocks(collection, keys=None):
    """The blocks of ``collection`` (those of ``keys``; all of them by default, in
    order) when its graph holds them as NumPy arrays (persisted, or NumPy data
    wrapped by ``da.from_array``), else ``None``."""
    graph = collection.__dask_graph__()
    if keys is None:
        keys = list(flatten(collection.__dask_keys__()))
    blocks = [graph.get(key) for key in keys]
    return blocks if all(isinstance(b, np.ndarray) for b in blocks) else None


def kernel_on_blocks(kernel, combine, blocks, extras, payload, first):
    """Run ``kernel`` on consecutive row blocks and combine their results (one task)."""
    return combine([kernel(b, e, payload, first + j) for j, (b, e) in enumerate(zip(blocks, extras))])


def kernel_on_joined_blocks(kernel, combine, blocks, extras, payload, first):
    """Run a row-wise ``kernel`` once on consecutive row blocks joined together (one task)."""
    joined = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    extra = None if extras[0] is None else np.concatenate(extras)
    return kernel(joined, extra, payload, first)


def run_inline(blocks, extras, kernel, payload, *, combine, split_every, blocks_per_task, row_wise):
    """One pass over in-memory ``blocks`` in the calling thread, structured as
    :func:`~dask_em.engine.passes.tree_pass`'s graph: the same tasks, the same tree.

    Parameters
    ----------
    blocks : list of ndarray
        The row blocks, in order.
    extras : list of ndarray or None
        The matching blocks of the per-row array (sample weights), or ``None`` each.
    kernel, payload, combine, split_every, blocks_per_task, row_wise
        As for :func:`~dask_em.engine.passes.tree_pass` (resolved: no defaults).
    """
    if blocks_per_task <= 1:
        level = [kernel(b, e, payload, i) for i, (b, e) in enumerate(zip(blocks, extras))]
    else:
        group = kernel_on_joined_blocks if row_wise else kernel_on_blocks
        level = [
            group(kernel, combine, blocks[i : i + blocks_per_task], extras[i : i + blocks_per_task], payload, i)
            for i in range(0, len(blocks), blocks_per_task)
        ]
    depth = 0
    while len(level) > 1 or depth == 0:  # a single block still goes through combine once
        level = [combine(level[j : j + split_every]) for j in range(0, len(level), split_every)]
        depth += 1
    return level[0]


__all__ = ["INLINE_BYTES", "enabled", "in_memory_blocks", "in_process", "run_inline"]
