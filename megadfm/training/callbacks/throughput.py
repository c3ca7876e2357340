"""Tokens per second (real tokens of all ranks, padding excluded), MFU, and the process's peak memory so far
(megadfm/training/memory.py), at each step."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from megadfm.training.callbacks.base import Callback, StepState
from megadfm.training.mfu import device_peak, mfu

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")


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
        state.scalars.update(tokens_per_s=tps, step_time_s=elapsed, mem_max_gb=trainer.memory.peak_since_start_bytes() / 2**30,
                             grad_accum_steps=trainer.cfg.training.grad_accum_steps)
        m = mfu(trainer.cfg.model, trainer.cfg.data.seq_len, tps / trainer.world_size, self.peak_flops)
        if m is not None:
            state.scalars["mfu"] = m
