"""Tokens per second (real tokens of all ranks, padding excluded), MFU and peak memory of each step."""

from __future__ import annotations

import logging
import resource
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from megadfm.training.callbacks.base import Callback, StepState
from megadfm.training.mfu import device_peak, mfu

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident set on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class ThroughputCallback(Callback):
    def __init__(self):
        entry = device_peak()
        self.peak_flops = None if entry is None else entry.flops
        if entry is not None:
            logger.info("MFU: peak-table entry %s, %.0f TFLOP/s dense bf16 (device %r)", entry.device, entry.flops / 1e12,
                        torch.cuda.get_device_name())
        elif torch.cuda.is_available():
            logger.info("MFU: not reported, device %r is not in megadfm/training/mfu.py's peak table",
                        torch.cuda.get_device_name())

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
