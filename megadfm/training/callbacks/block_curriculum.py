"""The block-size curriculum of block diffusion (``dfm.block_size_warmup``): before each optimizer step, give the
objective the block size of that step (megadfm/dfm/block_diffusion.py ``block_size_at``); logged as
``block/size``. The step alone determines it, so a resumed run trains with the same sizes."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from megadfm.dfm.block_diffusion import block_size_at
from megadfm.training.callbacks.base import Callback, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")


class BlockCurriculumCallback(Callback):
    def __init__(self, trainer: "Trainer"):
        self.cfg = trainer.cfg.dfm
        if trainer.rank == 0:
            stages = ", ".join(f"blocks of {size} up to step {until}" for until, size in self.cfg.block_size_warmup)
            logger.info("block-size curriculum: %s, then blocks of %d", stages, self.cfg.block_size)

    def _set(self, trainer: "Trainer", step: int) -> int:
        size = block_size_at(self.cfg, step)
        if trainer.module.dfm_cfg.block_size != size:
            # the objective's config gets this step's size alone: the schedule lives here, and its later, larger
            # sizes would fail the config's "size <= block_size" check against the smaller one
            trainer.module.dfm_cfg = dataclasses.replace(trainer.module.dfm_cfg, block_size=size, block_size_warmup=[])
        return size

    def pre_step(self, trainer: "Trainer", state: StepState) -> None:
        state.scalars["block/size"] = float(self._set(trainer, state.step))

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        # validation and evaluation after the step use the size the next step will train with
        self._set(trainer, state.step + 1)
