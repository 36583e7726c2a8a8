"""One pass over a row-chunked dask array: a kernel per chunk and a tree of combines.

This is the map-reduce skeleton every E-step and every initialisation pass uses:
one graph per pass, run by dask's scheduler (:func:`run_pass`), or in the calling
thread where that is as fast (:mod:`dask_em.engine.inline`).
"""

import collections
import contextlib
import contextvars
import functools
import hashlib
import itertools
import logging
import pickle

import dask
import dask.threaded
import numpy as np
from dask.base import get_scheduler, tokenize
from dask.delayed import Delayed, delayed
from dask.highlevelgraph import HighLevelGraph
from dask.local import get_sync
from dask.optimization import cull
from dask.utils import parse_timedelta

from dask_em.engine import inline
from dask_em.engine.blas import blas_limited, one_blas_thread
from dask_em.engine.inline import kernel_on_blocks, kernel_on_joined_blocks
from dask_em.settings import in_memory_threads

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_EVERY = 8


def split_every_default():
    """Fan-in of the tree reduction: ``dask.config`` key ``dask_em.split_every`` (8)."""
    value = dask.config.get("dask_em.split_every", DEFAULT_SPLIT_EVERY)
    if not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(
            f"dask_em.split_every must be an int >= 2, got {value!r}; "
            f"set it with dask.config.set({{'dask_em.split_every': 8}})."
        )
    return int(value)


def add_stats(parts):
    """Key-wise sum of statistics dicts (or of lists of such dicts, element-wise).

    Parameters
    ----------
    parts : list of dict, or list of list of dict
        Statistics from several row blocks, all with the same keys and shapes.
    """
    first = parts[0]
    if isinstance(first, list):
        return [add_stats([p[i] for p in parts]) for i in range(len(first))]
    return {key: sum(p[key] for p in parts[1:]) + first[key] for key in first}


def tree_pass(
    X,
    kernel,
    payload,
    *,
    name,
    combine=add_stats,
    extra=None,
    split_every=None,
    blocks_per_task=1,
    row_wise=False,
):
    """Lazily map ``kernel`` over the row blocks of ``X`` and tree-combine the results.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked: exactly one chunk along axis 1.
    kernel : callable
        ``kernel(block, extra_block, payload, block_index) -> partial result``.
        ``block`` is an ndarray (n_i, D); ``extra_block`` the matching block of
        ``extra`` or ``None``.
    payload : object
        Small, picklable arguments (parameters). Shipped once per pass as one
        graph key, not embedded in every task.
    name : str
        Prefix of the task names shown in the dashboard, e.g. ``estep-gaussian-full``.
    combine : callable
        ``combine(list_of_partials) -> partial``; associative. Key-wise sum by default.
    extra : dask.array.Array of shape (N,), optional
        A per-row array chunked like the rows of ``X`` (sample weights).
    split_every : int, optional
        Fan-in of the reduction tree; defaults to :func:`split_every_default`.
    blocks_per_task : int, optional
        Consecutive row blocks handled by one task, which runs ``kernel`` on each
        and combines the results. Fewer, larger tasks cut the scheduler's fixed
        cost per task on a local scheduler (see :func:`blocks_per_task`); keep 1
        on a cluster, where a task should run where its block lives.
    row_wise : bool, optional
        ``kernel``'s result depends on the rows alone, not on where blocks start
        (an E-step, not a sampler seeded by ``block_index``): grouped blocks are
        then joined into one array and the kernel runs once per task, which saves
        its fixed cost per call on many small blocks.

    Returns
    -------
    dask.delayed.Delayed
        The combined result of the whole pass; compute it once.
    """
    split_every = split_every or split_every_default()
    token = _pass_token(X.name, None if extra is None else extra.name, kernel, payload, combine, split_every,
                        blocks_per_task, row_wise)
    payload_d = delayed(payload, name=f"{name}-params-{token}", traverse=False)
    dependencies = [X, payload_d]
    blocks = [(X.name, i, 0) for i in range(X.numblocks[0])]
    extras = [None] * len(blocks)
    if extra is not None:
        extra = extra.rechunk((X.chunks[0],))
        extras = [(extra.name, i) for i in range(extra.numblocks[0])]
        dependencies.append(extra)
    if blocks_per_task > 1:
        # blocks already in memory go into the tasks themselves: the graph then holds
        # a few tasks instead of one key per block, which dask handles at ~30 us each
        data = inline.in_memory_blocks(X, blocks)
        if data is not None:
            blocks = data
            dependencies = [d for d in dependencies if d is not X]
        data = None if extra is None else inline.in_memory_blocks(extra, extras)
        if data is not None:
            extras = data
            dependencies = [d for d in dependencies if d is not extra]
    layer, root = _pass_tasks(blocks, extras, kernel, payload_d.key, f"{name}-{token}", f"{name}-combine-{token}",
                              combine, split_every, blocks_per_task, row_wise)
    graph = HighLevelGraph.from_collections(f"{name}-{token}", layer, dependencies=dependencies)
    return Delayed(root, graph, layer=f"{name}-{token}")


def _pass_tasks(blocks, extras, kernel, payload_key, name, combine_name, combine, split_every, blocks_per_task,
                row_wise):
    """The tasks of a pass as a plain dict (building Delayed objects per block costs
    ~0.5 ms each): ``kernel`` per block (keys or arrays; ``blocks_per_task`` of them
    per task), then the tree of ``combine`` with fan-in ``split_every``, a single
    task still combined once. Returns the dict and the key of its root."""
    layer = {}
    level = []
    if blocks_per_task <= 1:
        for i, (block, ext) in enumerate(zip(blocks, extras)):
            key = (name, i)
            layer[key] = (kernel, block, ext, payload_key, i)
            level.append(key)
    else:
        for i in range(0, len(blocks), blocks_per_task):
            part = slice(i, i + blocks_per_task)
            key = (name, i)
            group = kernel_on_joined_blocks if row_wise else kernel_on_blocks
            layer[key] = (group, kernel, combine, blocks[part], extras[part], payload_key, i)
            level.append(key)
    depth = 0
    while len(level) > 1 or depth == 0:
        parents = []
        for j in range(0, len(level), split_every):
            key = (combine_name, depth, j)
            layer[key] = (combine, list(level[j : j + split_every]))
            parents.append(key)
        level = parents
        depth += 1
    return layer, level[0]


def _pass_token(*parts):
    """A deterministic name for a pass: a hash of its pickled parts.

    The payload must pickle anyway (it is shipped to the workers), and pickling it
    takes tens of microseconds, where :func:`dask.base.tokenize` walks its dataclass
    and arrays in ~3 ms, a third of a stepwise step's fixed cost. Parts that do not
    pickle (a lambda as kernel) fall back to ``tokenize``.
    """
    try:
        data = pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        return tokenize(*parts)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


#: Data a task should cover on a local scheduler before blocks are grouped: at
#: ~16 MiB a task does milliseconds of work against ~0.1 ms of scheduling.
TASK_BYTES = 16 * 2**20


def blocks_per_task(X, n_threads):
    """Row blocks per task for a pass of ``X`` on a local scheduler with ``n_threads``.

    Small blocks are grouped until a task covers about :data:`TASK_BYTES` of data,
    keeping at least four tasks per thread so the threads stay evenly loaded.
    """
    n_blocks = X.numblocks[0]
    block_bytes = max(X.nbytes / max(n_blocks, 1), 1)
    wanted = int(TASK_BYTES // block_bytes)
    return max(1, min(wanted, n_blocks // (4 * max(n_threads, 1))))


def _local_threads(scheduler):
    """Threads of dask's local threaded scheduler, or ``None`` for other schedulers."""
    if scheduler is dask.threaded.get:
        return in_memory_threads()
    return None


def run_pass(X, kernel, payload, **kwargs):
    """Build and compute one pass (one ``dask.compute``); see :func:`tree_pass`.

    With dask's local threaded scheduler, BLAS is limited to one thread per task
    while the pass runs: dask already runs one task per core, and BLAS threads on top
    of that oversubscribe the cores (about 9x slower on 2 cores). Worker processes of
    ``distributed`` are already started with one BLAS thread. Small row blocks are
    grouped into larger tasks on the threaded scheduler (:func:`blocks_per_task`).

    On a ``distributed`` cluster, a pass that makes no progress for
    :func:`stall_warning_seconds` is logged as a warning naming the cause the
    scheduler knows of (no workers, workers paused for memory), and again after
    every further such period; the pass keeps waiting.
    """
    scheduler = get_scheduler(collections=[X])
    client = _distributed_client(scheduler)
    threads = None if client is not None else _local_threads(scheduler)
    result = _NOT_IN_PROCESS
    if client is None and inline.enabled():
        result = _pass_in_process(X, kernel, payload, threads, scheduler, kwargs)
    if result is _NOT_IN_PROCESS:
        result = _pass_on_scheduler(X, kernel, payload, client, threads, kwargs)
    _passed(X.numblocks[0])
    return result


_NOT_IN_PROCESS = object()


class BlockPasses:
    """Passes over chosen row blocks of ``X``, one after another (stepwise EM's
    mini-batches): ``run(blocks, ...)`` is ``run_pass(X.blocks[blocks], ...)`` with
    one task per block.

    On dask's threaded scheduler, when the blocks are read from their source (not
    held in memory), ``X``'s graph is materialised once, and each pass runs its
    blocks' own tasks and its kernel tasks with one ``dask.threaded.get``: slicing
    ``X``, merging and optimising its graph again for every pass cost about 3 ms of
    a 9 ms stepwise step over two 5,000-row chunks of a Zarr store (measured; the
    reads and the E-step take about 4). The kernel tasks, their indices and the
    combine tree are :func:`tree_pass`'s over ``X.blocks[blocks]``, so the results
    are the same bit for bit. Elsewhere (a distributed client, blocks in memory,
    another scheduler) every pass is :func:`run_pass` over ``X.blocks[blocks]``.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
        Row-chunked data.
    extra : dask.array.Array of shape (N,), optional
        A per-row array (sample weights), rechunked like the rows of ``X``.
    """

    def __init__(self, X, extra=None):
        self.X = X
        self.extra = None if extra is None else extra.rechunk((X.chunks[0],))
        self._graph = None
        if _local_threads(get_scheduler(collections=[X])) is not None and inline.in_memory_blocks(X) is None:
            graphs = [X.__dask_graph__()] + ([] if self.extra is None else [self.extra.__dask_graph__()])
            self._graph = collections.ChainMap(*(dict(g) for g in graphs))

    def run(self, blocks, kernel, payload, *, name, combine=add_stats, split_every=None, row_wise=False):
        """``kernel`` over the row blocks ``blocks`` (their indices in ``X``, in the
        order of the tree) and the combined result, in one compute (see the class)."""
        if self._graph is None:
            return run_pass(
                self.X.blocks[blocks], kernel, payload, name=name, combine=combine, split_every=split_every,
                extra=None if self.extra is None else self.extra.blocks[blocks], row_wise=row_wise,
                blocks_per_task=1,
            )
        split_every = split_every or split_every_default()
        token = _pass_token(self.X.name, None if self.extra is None else self.extra.name, tuple(blocks), kernel,
                            payload, combine, split_every, row_wise)
        keys = [(self.X.name, int(i), 0) for i in blocks]
        extras = [None] * len(keys) if self.extra is None else [(self.extra.name, int(i)) for i in blocks]
        layer, root = _plain_pass(keys, extras, kernel, payload, name, token, combine, split_every, 1, row_wise)
        graph, _ = cull(collections.ChainMap(layer, self._graph), [root])
        with blas_limited():
            result = dask.threaded.get(graph, root)
        _passed(len(keys))
        return result


def _pass_on_scheduler(X, kernel, payload, client, threads, kwargs):
    """The pass as a graph, in one ``dask.compute`` (watched on a distributed client;
    on the threaded scheduler with blocks grouped per task and BLAS on one thread, and
    over blocks held in memory as a plain graph, :func:`_pass_of_in_memory_blocks`)."""
    if client is not None:
        return _compute_watched(client, tree_pass(X, kernel, payload, **kwargs), kwargs.get("name", "pass"))
    if threads is None:
        (result,) = dask.compute(tree_pass(X, kernel, payload, **kwargs))
        return result
    kwargs.setdefault("blocks_per_task", blocks_per_task(X, threads))
    result = _pass_of_in_memory_blocks(X, kernel, payload, kwargs)
    if result is not _NOT_IN_PROCESS:
        return result
    graph = tree_pass(X, kernel, payload, **kwargs)
    with blas_limited():
        (result,) = dask.compute(graph)
    return result


def _pass_of_in_memory_blocks(X, kernel, payload, kwargs):
    """The pass of :func:`tree_pass`'s tasks over ``X``'s blocks held in memory (and the
    weights', ``kwargs["extra"]``), run by ``dask.threaded.get`` on a plain dict: the
    same tasks, the same tree, the same bits, on dask's threaded scheduler (its pool,
    its callbacks), without building a collection for ``dask.compute`` to tokenize and
    optimise: the gap between a fit's passes went from 3.3-3.5 to 1.2-1.3 ms (N=1e6
    D=16, 4 to 8 blocks; benchmarks/README.md). ``_NOT_IN_PROCESS`` when a block is not
    in memory. Unlike :func:`_pass_in_process`, it does not depend on
    :func:`~dask_em.engine.inline.in_process`: the tasks still run on dask's scheduler."""
    blocks = inline.in_memory_blocks(X)
    if blocks is None:
        return _NOT_IN_PROCESS
    extra = kwargs.get("extra")
    extras = [None] * X.numblocks[0]
    if extra is not None:
        extras = inline.in_memory_blocks(extra.rechunk((X.chunks[0],)))
        if extras is None:
            return _NOT_IN_PROCESS
    token = next(_local_passes)  # keys unique in the graph; not a hash of the payload (~1 ms at D=64 K=16)
    layer, root = _plain_pass(blocks, extras, kernel, payload, kwargs.get("name", "pass"), token,
                              kwargs.get("combine", add_stats), kwargs.get("split_every") or split_every_default(),
                              kwargs["blocks_per_task"], kwargs.get("row_wise", False))
    with blas_limited():
        return dask.threaded.get(layer, root)


_local_passes = itertools.count()


def _plain_pass(blocks, extras, kernel, payload, name, token, combine, split_every, blocks_per_task, row_wise):
    """:func:`_pass_tasks` with the payload shipped as :func:`tree_pass` ships it, for
    ``dask.threaded.get``: the dict and the key of its root, the keys named as
    :func:`tree_pass` names them (``name``, ``token``)."""
    payload_key = f"{name}-params-{token}"
    layer, root = _pass_tasks(blocks, extras, kernel, payload_key, f"{name}-{token}", f"{name}-combine-{token}",
                              combine, split_every, blocks_per_task, row_wise)
    layer.update(delayed(payload, name=payload_key, traverse=False).__dask_graph__())
    return layer, root


def _pass_in_process(X, kernel, payload, threads, scheduler, kwargs):
    """The pass run in the calling thread (:mod:`dask_em.engine.inline`), when ``X``'s
    blocks (and the weights') are in memory and parallel tasks would gain nothing:
    the graph would run one task, the scheduler has one thread or is synchronous, or
    the data are at most :data:`~dask_em.engine.inline.INLINE_BYTES`. Else
    ``_NOT_IN_PROCESS``."""
    if threads is None and scheduler is not get_sync:
        return _NOT_IN_PROCESS  # another scheduler (processes, a custom one): leave it to dask
    blocks = inline.in_memory_blocks(X, [(X.name, i, 0) for i in range(X.numblocks[0])])
    if blocks is None:
        return _NOT_IN_PROCESS
    extra = kwargs.get("extra")
    extras = [None] * len(blocks)
    if extra is not None:
        extra = extra.rechunk((X.chunks[0],))
        extras = inline.in_memory_blocks(extra, [(extra.name, i) for i in range(extra.numblocks[0])])
        if extras is None:
            return _NOT_IN_PROCESS
    per_task = kwargs.get("blocks_per_task")
    if per_task is None:  # as run_pass would build the graph
        per_task = blocks_per_task(X, threads) if threads is not None else 1
    n_tasks = -(-len(blocks) // max(per_task, 1))
    if threads is not None and threads > 1 and n_tasks > 1 and X.nbytes > inline.INLINE_BYTES:
        return _NOT_IN_PROCESS
    run = functools.partial(
        inline.run_inline, blocks, extras, kernel, payload,
        combine=kwargs.get("combine", add_stats),
        split_every=kwargs.get("split_every") or split_every_default(),
        blocks_per_task=per_task,
        row_wise=kwargs.get("row_wise", False),
    )
    if threads is None:
        return run()
    with blas_limited():  # as the graph's pass: the same BLAS calls, the same bits
        return run()


_pass_listeners = contextvars.ContextVar("dask_em_pass_listeners", default=())


def _passed(n_blocks):
    """Tell the listeners of :func:`watch_passes` that a pass over ``n_blocks`` row blocks ended."""
    for listener in _pass_listeners.get():
        listener(n_blocks)


@contextlib.contextmanager
def watch_passes(listener):
    """Call ``listener(n_blocks)`` after every pass :func:`run_pass` completes in this
    context, with the number of row blocks it read (a fit's progress counts passes
    with it). ``listener=None`` watches nothing."""
    if listener is None:
        yield
        return
    token = _pass_listeners.set(_pass_listeners.get() + (listener,))
    try:
        yield
    finally:
        _pass_listeners.reset(token)


#: Default of the ``dask.config`` key ``dask_em.stall_warning``.
DEFAULT_STALL_WARNING = "60s"


def stall_warning_seconds():
    """Seconds without progress after which a pass on a cluster logs a warning:
    ``dask.config`` key ``dask_em.stall_warning`` (``"60s"``; a number of seconds or a
    time string; ``None`` or ``False`` turns the warning off)."""
    value = dask.config.get("dask_em.stall_warning", DEFAULT_STALL_WARNING)
    if value is None or value is False:
        return None
    try:
        seconds = parse_timedelta(value, default="s")
    except (TypeError, ValueError, KeyError):
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(
            f"dask_em.stall_warning must be a positive time such as '60s' (or None to turn the warning off), "
            f"got {value!r}; set it with dask.config.set({{'dask_em.stall_warning': '60s'}})."
        )
    return float(seconds)


def active_client(X=None):
    """The ``distributed.Client`` that would compute ``X`` (or any collection), or None.

    The active scheduler decides, not the mere existence of a client: under
    ``dask.config.set(scheduler="threads")`` a connected client computes nothing.
    """
    return _distributed_client(get_scheduler(collections=None if X is None else [X]))


def _distributed_client(scheduler):
    """The ``distributed.Client`` whose ``get`` is ``scheduler``, or None."""
    client = getattr(scheduler, "__self__", None)
    if client is None or type(client).__module__.split(".")[0] != "distributed":
        return None
    return client


def _cluster_state(client):
    """The scheduler's count of task transitions (progress) and its workers' states,
    or None when the scheduler does not answer."""

    def state(dask_scheduler=None):  # local, so it is shipped by value: no dask_em import there
        workers = list(dask_scheduler.workers.values())
        return {
            "transitions": dask_scheduler.transition_counter,
            "workers": len(workers),
            "paused": sum(1 for ws in workers if getattr(ws.status, "name", str(ws.status)) == "paused"),
        }

    try:
        return client.run_on_scheduler(state)
    except Exception:  # noqa: BLE001 - a scheduler gone or busy: say so rather than fail the pass
        return None


def stall_cause(state):
    """What a pass waits on, in words, from :func:`_cluster_state`'s report (or None)."""
    if state is None:
        return "the scheduler did not answer"
    n, paused = state["workers"], state["paused"]
    if n == 0:
        return "the cluster has no workers (they died or never started): start workers, or read their logs"
    if paused == n:
        return (
            f"all {n} workers are paused for memory (their memory use passed distributed.worker.memory.pause): "
            f"raise the workers' memory_limit, add workers, use smaller chunks or persist=False"
        )
    if paused:
        return f"{paused} of {n} workers are paused for memory (distributed.worker.memory.pause); the others are busy"
    return f"none of the {n} workers finished a task (busy with other work, or stuck)"


#: Seconds a pass runs before the stall watch asks the scheduler for its state.
_WATCH_AFTER = 1.0


def _compute_watched(client, graph, name):
    """Compute ``graph`` on a distributed ``client``; warn while it makes no progress.

    A pass that ends within a second costs nothing more; a longer one asks the
    scheduler for its transition count then, and after every further
    :func:`stall_warning_seconds`.
    """
    from concurrent.futures import CancelledError

    period = stall_warning_seconds()
    future = client.compute(graph)
    try:
        return _wait_watched(client, future, name, period)
    except CancelledError as error:
        raise _cancelled(graph, name, error) from error
    finally:
        if not future.done():
            future.cancel()


def _cancelled(graph, name, error):
    """The error to raise when the scheduler cancelled a pass: the failure of data it
    reads from the cluster's memory (a persisted input that failed, for example
    because the scheduler could not unpickle its graph) when there is one, else the
    scheduler's reason, with what to do."""
    from distributed import futures_of

    for held in futures_of(graph):
        if held.status == "error":
            cause = held.exception()
            return RuntimeError(
                f"the pass {name!r} could not run: the data it reads, kept in the cluster's memory "
                f"(persist), failed on the cluster with {type(cause).__name__}: {str(cause).strip()} "
                "Read the scheduler's and workers' logs for the cause; a store or package that the "
                "cluster cannot load (one missing or of another version there) is the usual one."
            )
    return RuntimeError(
        f"the pass {name!r} was cancelled by the scheduler ({str(error).strip()}). Its inputs were "
        "lost or cancelled on the cluster; read the scheduler's log, then fit again."
    )


def _result_within(future, timeout):
    """``(True, result)`` when ``future`` ends within ``timeout`` seconds, else ``(False, None)``."""
    from distributed import wait

    try:
        wait([future], timeout=timeout)
    except TimeoutError:
        return False, None
    return True, future.result()


def _wait_watched(client, future, name, period):
    """``future``'s result, with a warning after every ``period`` seconds without progress."""
    if period is None:
        return future.result()
    first = min(_WATCH_AFTER, period / 2)
    done, result = _result_within(future, first)
    if done:
        return result
    last = _cluster_state(client)
    stalled, timeout = first, period - first
    while True:
        done, result = _result_within(future, timeout)
        if done:
            return result
        state = _cluster_state(client)
        moved = state is not None and last is not None and state["transitions"] != last["transitions"]
        last = state if state is not None else last
        stalled, timeout = (0.0 if moved else stalled + timeout), period
        if not moved:
            logger.warning(
                "the pass %r has made no progress for %.0f s: %s. It keeps waiting "
                "(dask.config 'dask_em.stall_warning' sets this delay).",
                name, stalled, stall_cause(state),
            )


def map_rows(X, kernel, payload, *, name, dtype, n_cols=None):
    """Lazily apply ``kernel(block, payload)`` to every row block of ``X``.

    The payload (parameters) is one key of the graph, not a copy in every task. The
    user computes the result on any scheduler, so every task limits BLAS itself to
    one thread when it runs on a worker thread (:func:`one_blas_thread`): dask's
    threaded scheduler already runs one task per core.

    Parameters
    ----------
    X : dask.array.Array of shape (N, D)
    kernel : callable
        ``kernel(block, payload) -> ndarray (n_i,)`` or ``(n_i, n_cols)``.
    payload : object
    name : str
        Name of the output array (task names in the dashboard).
    dtype : dtype
    n_cols : int, optional
        Columns of the output; ``None`` for one value per row.

    Returns
    -------
    dask.array.Array of shape (N,) or (N, n_cols)
    """
    payload_d = delayed(payload, traverse=False)
    if n_cols is None:
        return X.map_blocks(_on_one_blas_thread, kernel, payload_d, dtype=dtype, drop_axis=1, name=name)
    return X.map_blocks(_on_one_blas_thread, kernel, payload_d, dtype=dtype, chunks=(X.chunks[0], (n_cols,)),
                        name=name)


def _on_one_blas_thread(block, kernel, payload):
    with one_blas_thread():
        return kernel(block, payload)
