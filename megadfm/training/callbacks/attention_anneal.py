"""Attention annealing during training (``dfm.attention_anneal_steps``): before each step, tell the model
which fraction of future keys it sees (megadfm/model/attention_anneal.py); logged as ``attention/future_fraction``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from megadfm.model.attention_anneal import AttentionAnneal, anneal_fraction, anneal_seed
from megadfm.training.callbacks.base import Callback, MicroBatch, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")


class AttentionAnnealCallback(Callback):
    def __init__(self, trainer: "Trainer"):
        self.steps = trainer.cfg.dfm.attention_anneal_steps
        self.seed = trainer.cfg.training.seed
        if trainer.rank == 0:
            logger.info("attention annealing: causal -> bidirectional over steps 1-%d (future keys visible with "
                        "probability (step-1)/%d); bidirectional from step %d", self.steps, self.steps, self.steps + 1)

    def _set(self, trainer: "Trainer", step: int, micro: int) -> Optional[float]:
        """Set the model's annealing for this micro-batch; returns the fraction (None: bidirectional)."""
        fraction = anneal_fraction(step, self.steps)
        trainer.module.model.attention_anneal = None if fraction is None else AttentionAnneal(
            fraction, anneal_seed(self.seed, step, trainer.rank, micro))
        return fraction

    def pre_step(self, trainer: "Trainer", state: StepState) -> None:
        fraction = self._set(trainer, state.step, 0)
        state.scalars["attention/future_fraction"] = 1.0 if fraction is None else fraction

    def post_micro_batch(self, trainer: "Trainer", micro: MicroBatch) -> None:
        self._set(trainer, micro.step, micro.micro + 1)  # the next micro-batch draws its own pattern

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        # validation and evaluation after the step see the model the step ended with
        fraction = anneal_fraction(state.step + 1, self.steps)
        if fraction is None:
            trainer.module.model.attention_anneal = None
