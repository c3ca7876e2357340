"""Adapter between the trainer and the telemetry package (kept thin so either side can change)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict

import torch

from megadfm.training.grad_norms import compute_grad_norms

logger = logging.getLogger("megadfm")


class TelemetryBridge:
    def __init__(self, cfg, out_dir: str, rank: int, world_size: int, group_of, scheduler):
        self.cfg = cfg
        self.rank = rank
        self.group_of = group_of
        self.scheduler = scheduler
        self.path = os.path.join(out_dir, "telemetry", "metrics.jsonl")
        if rank == 0:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.f = open(self.path, "a")

    def record_micro_batch(self, out, batch) -> None:
        pass

    def grad_norms(self, engine) -> Dict[str, float]:
        n = compute_grad_norms(engine, self.group_of, clip=self.cfg.training.grad_clip)
        d = {"total": n.total, "total_post_clip": n.total_post_clip, "clip_coef": n.clip_coef}
        d.update(n.groups)
        return d

    def spike_action(self, step: int) -> str:
        return "none"

    def end_step(self, step: int, record: Dict[str, Any], action: str) -> None:
        if self.rank == 0:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()
            if step % self.cfg.training.log_interval == 0:
                logger.info("step %d loss %.4f lr %.3g grad %.3f tok/s %.0f", step, record["loss"], record["lr"],
                            record.get("grad_norm/total", float("nan")), record["tokens_per_s"])

    def validate(self, step, engine, data, device) -> None:
        pass

    def close(self) -> None:
        if self.rank == 0:
            self.f.close()
