"""The family-agnostic EM engine: chunk kernels, tree reduction, and the loop."""

from dask_em.engine.estep import MixtureState, as_float64_state, cast_state, estep_block, m_step, score_block
from dask_em.engine.inline import in_process
from dask_em.engine.loop import EMResult, run_em
from dask_em.engine.passes import add_stats, map_rows, run_pass, split_every_default, tree_pass
from dask_em.engine.stepwise import finish_with_em, run_stepwise

__all__ = [
    "EMResult",
    "MixtureState",
    "add_stats",
    "as_float64_state",
    "cast_state",
    "estep_block",
    "finish_with_em",
    "in_process",
    "m_step",
    "map_rows",
    "run_em",
    "run_pass",
    "run_stepwise",
    "score_block",
    "split_every_default",
    "tree_pass",
]
