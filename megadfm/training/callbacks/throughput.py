"""Tokens per second (real tokens of all ranks, padding excluded), MFU and peak memory of each step."""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from megadfm.training.callbacks.base import Callback, StepState
from megadfm.training.mfu import device_peak_flops, mfu

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident set on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class ThroughputCallback(Callback):
    def __init__(self):
        self.peak_flops = device_peak_flops()

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        tokens = torch.tensor([state.tokens], dtype=torch.float64)
        if dist.is_initialized() and trainer.world_size > 1:
            dist.all_reduce(tokens)
        elapsed = time.time() - state.started
        tps = float(tokens) / elapsed
        state.scalars.update(tokens_per_s=tps, step_time_s=elapsed, mem_max_gb=peak_memory_gb(),
                             grad_accum_steps=trainer.cfg.training.grad_accum_steps)
        m = mfu(trainer.cfg.model, trainer.cfg.data.seq_len, tps / trainer.world_size, self.peak_flops)
        if m is not None:
            state.scalars["mfu"] = m
