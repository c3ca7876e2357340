"""Everything the trainer does besides the step itself, as callbacks (see base.py for the hooks).

A new behaviour is one file here with one ``Callback`` subclass, added to :func:`default_callbacks`
(or passed to ``Trainer(callbacks=...)`` / ``run_training(callbacks=...)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from megadfm.training.callbacks.attention_anneal import AttentionAnnealCallback
from megadfm.training.callbacks.base import Callback, CallbackList, MicroBatch, StepState
from megadfm.training.callbacks.block_curriculum import BlockCurriculumCallback
from megadfm.training.callbacks.checkpointing import CheckpointCallback
from megadfm.training.callbacks.evaluation import EvaluationCallback
from megadfm.training.callbacks.memory import MemoryCallback
from megadfm.training.callbacks.step_log import StepLogCallback
from megadfm.training.callbacks.step_policy import StepPolicyCallback
from megadfm.training.callbacks.telemetry import TelemetryCallback
from megadfm.training.callbacks.throughput import ThroughputCallback
from megadfm.training.callbacks.validation import ValidationCallback

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

__all__ = ["Callback", "CallbackList", "MicroBatch", "StepState", "default_callbacks"]


def default_callbacks(trainer: "Trainer") -> List[Callback]:
    """The built-in callbacks in their fixed order. Order matters within a hook: throughput fills the
    step's scalars before telemetry logs them; telemetry judges the spike before the policy acts on it;
    the step log is written before validation and checkpointing, which may take a while; memory marks the
    end of the first optimizer step before anything else runs after it."""
    cfg = trainer.cfg
    callbacks: List[Callback] = [MemoryCallback()]
    if cfg.dfm.attention_anneal_steps:
        callbacks.append(AttentionAnnealCallback(trainer))
    if cfg.dfm.block_size_warmup:
        callbacks.append(BlockCurriculumCallback(trainer))
    callbacks += [ThroughputCallback(), TelemetryCallback(trainer), StepPolicyCallback(cfg.training.nonfinite_policy)]
    if cfg.training.step_log:
        callbacks.append(StepLogCallback())
    callbacks += [ValidationCallback(trainer), EvaluationCallback(trainer), CheckpointCallback(cfg.checkpoint.save_interval)]
    return callbacks
