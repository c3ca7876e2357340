"""Per-mask-ratio-bucket loss telemetry as a callback: records every micro-batch, judges spikes before
the optimizer step, closes the step (a log line on logging steps), writes validation records."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Mapping

from megadfm.config_base import to_dict
from megadfm.training.callbacks.base import Callback, MicroBatch, StepState
from megadfm.training.telemetry.recorder import Telemetry, format_line
from megadfm.training.telemetry.reduce import all_gather_objects, all_reduce_sum

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")


class TelemetryCallback(Callback):
    name = "telemetry"

    def __init__(self, trainer: "Trainer"):
        cfg = trainer.cfg
        self.last_step = cfg.training.train_steps
        self.telemetry = Telemetry(cfg.telemetry, trainer.out_dir, log_interval=cfg.training.log_interval,
                                   grad_clip=cfg.training.grad_clip, scheduler=trainer.scheduler, run_config=to_dict(cfg),
                                   rank=trainer.rank, world_size=trainer.world_size, is_writer=trainer.rank == 0,
                                   reduce=all_reduce_sum(), gather=all_gather_objects())

    def post_micro_batch(self, trainer: "Trainer", micro: MicroBatch) -> None:
        # replay: what rebuilds this micro-batch's t and masks (see trainer.training_noise)
        self.telemetry.record(micro.out, micro.batch,
                              replay={"step": micro.step, "micro": micro.micro, "global_offset": micro.global_offset})

    def pre_optim_step(self, trainer: "Trainer", state: StepState) -> None:
        self.telemetry.record_grad_norms(state.grad_norms)
        state.spike = self.telemetry.check_spike(state.step)

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        self.telemetry.record_scalars(lr=state.lr, **state.scalars)
        record = self.telemetry.end_step(state.step, skipped=state.skip_update, force_log=state.step == self.last_step)
        if record is not None:
            logger.info("%s", format_line(record))

    def on_validation(self, trainer: "Trainer", step: int, record: Mapping[str, Any]) -> None:
        self.telemetry.write(dict(record))

    def state_dict(self) -> Dict[str, Any]:
        return self.telemetry.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.telemetry.load_state_dict(state)

    def close(self, trainer: "Trainer") -> None:
        self.telemetry.close()

