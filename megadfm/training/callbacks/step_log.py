"""RUN_DIR/telemetry/train_steps.jsonl: one line per optimizer step with the exact loss, lr, grad norm,
whether the update was skipped, throughput and the identity of the global batch -- the record that
exact-resume checks compare. Only this callback gathers the batch's sample indices across ranks."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Optional, TextIO

import torch
import torch.distributed as dist

from megadfm.training.callbacks.base import Callback, MicroBatch, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

STEP_LOG_FILE = "train_steps.jsonl"


def batch_hash(local_ids: torch.Tensor, world_size: int) -> str:
    """Identity of the global batch (sorted sample indices of all ranks): equal across world sizes
    exactly when the data order is. A collective when world_size > 1."""
    if dist.is_initialized() and world_size > 1:
        parts = [torch.zeros_like(local_ids) for _ in range(world_size)]
        dist.all_gather(parts, local_ids)
        local_ids = torch.cat(parts)
    return hashlib.sha1(",".join(map(str, sorted(local_ids.tolist()))).encode()).hexdigest()[:16]


class StepLogCallback(Callback):
    def __init__(self):
        self._file: Optional[TextIO] = None
        self._ids: list = []

    def on_train_start(self, trainer: "Trainer") -> None:
        if trainer.rank == 0:
            path = os.path.join(trainer.out_dir, "telemetry", STEP_LOG_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def pre_step(self, trainer: "Trainer", state: StepState) -> None:
        self._ids = []

    def post_micro_batch(self, trainer: "Trainer", micro: MicroBatch) -> None:
        self._ids.append(micro.batch["sample_index"].cpu())

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        record = {"step": state.step, "loss": state.loss, "lr": state.lr, "grad_norm": state.grad_norms.total,
                  "skipped": state.skip_update, "consumed_samples": trainer.consumed_samples,
                  "tokens_per_s": state.scalars.get("tokens_per_s"), "mfu": state.scalars.get("mfu"),
                  "mem_max_gb": state.scalars.get("mem_max_gb"),
                  "batch_hash": batch_hash(torch.cat(self._ids), trainer.world_size)}
        state.record.update(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self, trainer: "Trainer") -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
