"""Marks the memory phases of the first optimizer step and the first checkpoint (megadfm/training/memory.py).

First in the callback list, so "optimizer step" ends before anything else runs in ``post_step`` (the
checkpoint callback may save there: that is the "save" phase). Later steps cost nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from megadfm.training.callbacks.base import Callback, MicroBatch, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer


class MemoryCallback(Callback):
    def __init__(self):
        self.first_step = None  # the step the run starts with (1, or the one after a resume)
        self.saved = False

    def pre_step(self, trainer: "Trainer", state: StepState) -> None:
        if self.first_step is None:
            self.first_step = state.step
            trainer.memory.mark("until the first step")  # data loader start-up, callbacks' on_train_start

    def post_forward(self, trainer: "Trainer", micro: MicroBatch) -> None:
        if micro.step == self.first_step and micro.micro == 0:
            trainer.memory.mark("first forward")

    def post_micro_batch(self, trainer: "Trainer", micro: MicroBatch) -> None:
        if micro.step == self.first_step and micro.micro == 0:
            trainer.memory.mark("first backward")

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        if state.step == self.first_step:
            trainer.memory.mark("first optimizer step")  # with the rest of its micro-batches and the grad norms

    def on_train_end(self, trainer: "Trainer", status: str) -> None:
        if self.first_step is not None and trainer.step > self.first_step:
            trainer.memory.mark("later steps")  # before the final save, which the checkpoint callback makes after this

    def pre_checkpoint_publish(self, trainer: "Trainer", step: int, directory: str) -> None:
        if not self.saved:
            self.saved = True
            trainer.memory.mark("first save")
