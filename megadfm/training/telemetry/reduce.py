"""How telemetry vectors cross ranks. The parts of telemetry take these as plain functions, so each
part runs (and is tested) without torch.distributed: pass ``local_sum``/``local_gather`` there."""

from __future__ import annotations

from typing import Any, Callable, List

import torch
import torch.distributed as dist

ReduceFn = Callable[[torch.Tensor], torch.Tensor]
GatherFn = Callable[[Any], List[Any]]


def _distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def local_sum(vec: torch.Tensor) -> torch.Tensor:
    """One process: the sum over ranks is the vector itself."""
    return vec


def local_gather(obj: Any) -> List[Any]:
    return [obj]


def all_reduce_sum(group=None) -> ReduceFn:
    """Sum a float64 vector over the data-parallel ranks (NCCL needs it on the GPU)."""

    def reduce(vec: torch.Tensor) -> torch.Tensor:
        if not _distributed(group):
            return vec
        if dist.get_backend(group) == "nccl" and vec.device.type != "cuda":
            vec = vec.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(vec, group=group)
        return vec

    return reduce


def all_gather_objects(group=None) -> GatherFn:
    """Every rank's object, in rank order (used only for the rare spike event)."""

    def gather(obj: Any) -> List[Any]:
        if not _distributed(group):
            return [obj]
        out: List[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(out, obj, group=group)
        return out

    return gather
