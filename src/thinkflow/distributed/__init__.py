"""Multi-process training: the CPU-capable DeepSpeed strategy, the torchrun launcher used by
stages, and rank helpers (full parameters under ZeRO-3, rank-0-only tracking)."""

from thinkflow.distributed.ranks import (
    NullTracker,
    all_mean,
    all_sum,
    close_process_group,
    full_parameters,
    global_rank,
    is_rank_zero,
    world_size,
)

__all__ = [
    "NullTracker",
    "all_mean",
    "all_sum",
    "close_process_group",
    "full_parameters",
    "global_rank",
    "is_rank_zero",
    "world_size",
]
