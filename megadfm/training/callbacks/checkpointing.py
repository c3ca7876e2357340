"""Checkpoints every ``checkpoint.save_interval`` steps and when training ends (done, paused by
``training.exit_after_steps``, or stopped by the step policy: then the last good state).

Each checkpoint carries the trainer's position (step, consumed samples), every callback's state, and
provenance in ``megadfm_meta.json`` (tokenizer sha256, data manifest, weights fingerprint at init).
Callbacks see the finished but unpublished directory through ``pre_checkpoint_publish``.

An interval save refused for lack of disk space is logged and training goes on (the previous
checkpoint stays the newest); a refused final save raises CheckpointSaveError, so the run exits
non-zero instead of reporting success with its last steps unsaved.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from megadfm.checkpoints.layout import RUN_CONFIG_FILE
from megadfm.config import config_to_yaml
from megadfm.io_utils import sha256_file
from megadfm.training.callbacks.base import Callback, StepState
from megadfm.training.checkpoint_verify import CheckpointSaveError

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer


def tokenizer_sha256(tokenizer_dir: str) -> Optional[str]:
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    return sha256_file(path) if os.path.isfile(path) else None


class CheckpointCallback(Callback):
    def __init__(self, save_interval: int):
        self.save_interval = save_interval
        self.saved_step: Optional[int] = None

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        if self.save_interval and state.step % self.save_interval == 0:
            self.save(trainer)

    def on_train_end(self, trainer: "Trainer", status: str) -> None:
        if self.saved_step != trainer.step and self.save(trainer) is None:
            newest = trainer.ckpt.complete_checkpoints()
            raise CheckpointSaveError(f"final checkpoint at step {trainer.step} not saved: {trainer.ckpt.refusal}; the newest "
                                      f"checkpoint is step {newest[-1] if newest else '(none)'}: free disk space and rerun "
                                      "to redo the steps after it")

    def save(self, trainer: "Trainer") -> Optional[str]:
        cfg, step = trainer.cfg, trainer.step
        client_state = {"step": step, "consumed_samples": trainer.consumed_samples, "optimizer_steps": step,
                        "callbacks": trainer.callbacks.state_dict()}
        meta = {"consumed_samples": trainer.consumed_samples, "tokenizer_json_sha256": tokenizer_sha256(cfg.data.tokenizer),
                "data_manifest": trainer.data.manifest(), "weights_fingerprint_at_init": trainer.weights_fingerprint}
        path = trainer.ckpt.save(trainer.engine, step, client_state, meta, {RUN_CONFIG_FILE: config_to_yaml(cfg)},
                                 before_publish=lambda d: trainer.callbacks.call("pre_checkpoint_publish", trainer, step, d))
        if path is not None:
            self.saved_step = step
        return path
