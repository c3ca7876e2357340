"""Validation every ``training.eval_interval`` steps: the loss per mask-ratio bucket at each bucket's
fixed mid ratio, on the same held-out batches with the same masks every time (seeded by batch index),
so the curves are comparable across steps and runs. The record goes to every callback's
``on_validation`` (telemetry writes it to its sinks)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.dfm.time_sampling import step_seed
from megadfm.training.callbacks.base import Callback, StepState
from megadfm.training.telemetry.buckets import Buckets
from megadfm.training.telemetry.recorder import t_of_mask_ratio_fn
from megadfm.training.telemetry.reduce import all_reduce_sum
from megadfm.training.telemetry.validation import validation_record

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")

VALIDATION_SEED_OFFSET = 7919
"""Keeps validation masks apart from training noise drawn from the same training.seed."""


class ValidationCallback(Callback):
    def __init__(self, trainer: "Trainer"):
        self.interval = trainer.cfg.training.eval_interval
        self.buckets = Buckets.from_config(trainer.cfg.telemetry, t_of_mask_ratio_fn(trainer.scheduler))

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        if self.interval and state.step % self.interval == 0:
            self.validate(trainer)

    def validate(self, trainer: "Trainer") -> Dict[str, Any]:
        tcfg = trainer.cfg.training
        batches = list(trainer.data.valid_batches(trainer.device, tcfg.eval_batches))
        trainer.engine.eval()

        def loss_at_t(t_value: float) -> List[DFMLossOutput]:
            outs = []
            with torch.no_grad():
                for i, batch in enumerate(batches):
                    n = batch["input_ids"].shape[0]
                    t = torch.full((n,), float(t_value), device=trainer.device)
                    gen = torch.Generator(device=trainer.device).manual_seed(
                        step_seed(tcfg.seed + VALIDATION_SEED_OFFSET, i, trainer.rank))
                    outs.append(trainer.forward(batch, t, gen))
            return outs

        record = validation_record(trainer.step, self.buckets, loss_at_t, reduce=all_reduce_sum())
        trainer.engine.train()
        trainer.callbacks.call("on_validation", trainer, trainer.step, record)
        buckets = " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in record.items()
                           if k.startswith("val/bucket_") and k.endswith("/ce") and v is not None)
        logger.info("validation at step %d: loss %.4f, ce %.4f; ce per mask-ratio bucket: %s", trainer.step,
                    record.get("val/loss") or float("nan"), record.get("val/ce") or float("nan"), buckets)
        return record
