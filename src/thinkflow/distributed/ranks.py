"""Rank helpers shared by every training stage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def global_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_rank_zero() -> bool:
    return global_rank() == 0


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 holds only this rank's shard of the parameters."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every parameter is whole on every rank (a collective under ZeRO-3:
    all ranks must enter it); a no-op otherwise. Read-only: changes are not scattered back."""
    if not is_zero3_partitioned(model):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


class NullTracker:
    """Stands in for the Tracker on ranks other than 0: tracking happens once, on rank 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Mean of each metric over ranks (every rank passes the same keys)."""
    keys = sorted(metrics)
    n = world_size() if dist.is_available() and dist.is_initialized() else 1
    return {k: v / n for k, v in zip(keys, all_sum([metrics[k] for k in keys]), strict=True)}


def close_process_group() -> None:
    """End this rank's part in the process group before the interpreter exits.

    Left to interpreter shutdown, the process group's C++ threads are destroyed in no fixed order;
    now and then one is still joinable and the rank dies with SIGABRT ("terminate called without an
    active exception") after its work is done, which torchrun reports as a failed stage. A barrier
    first, so no rank tears down while another still talks to it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
