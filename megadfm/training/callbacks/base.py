"""The callback protocol of the trainer.

The trainer core does the work of one optimizer step (forward, backward, the optimizer update) and
calls every callback at fixed points, in the order of the callback list, on every rank. Hooks that
run collectives (telemetry's reduction, validation, saving) are therefore matched across ranks; a
hook that only one rank should act on (writing a file) checks ``trainer.rank`` itself.

One step, and where each hook runs::

    pre_step(trainer, state)
    for each micro-batch:
        forward                       -> micro.out
        post_forward(trainer, micro)  # the loss may still be replaced (fault injection in tests)
        backward(micro.out.loss)
        post_micro_batch(trainer, micro)
    state.loss, state.grad_norms      # all-reduced mean loss, grad norms per group (collective)
    pre_optim_step(trainer, state)    # may set state.skip_update / state.abort / state.stop
    optimizer step (a skipped update zeroes the gradients and the LR)
    post_step(trainer, state)
    on_validation(trainer, step, record)   # after a validation or evaluation pass (kind "val" or "eval")
    pre_checkpoint_publish(trainer, step, directory)   # every file written, nothing published yet
    on_train_end(trainer, status)          # "done" | "paused" | "stopped"
    close(trainer)

``state_dict()`` / ``load_state_dict()`` of every callback with a ``name`` travel in each checkpoint
(client state ``callbacks``), so a resumed run continues the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import torch

from megadfm.dfm.loss import DFMLossOutput

if TYPE_CHECKING:  # the trainer imports this module; the annotation only
    from megadfm.training.grad_norms import GradNorms
    from megadfm.training.trainer import Trainer


@dataclass
class MicroBatch:
    """One micro-batch of the step being taken."""

    step: int                     # the optimizer step being completed, counting from 1
    micro: int                    # index within the step's gradient accumulation
    global_offset: int            # position of this rank's rows in the global batch (keys the noise)
    batch: Dict[str, torch.Tensor]
    out: DFMLossOutput


@dataclass
class StepState:
    """What the core and the callbacks know about the step being taken; callbacks add to it."""

    step: int
    started: float                                  # time.time() at pre_step
    loss: Optional[float] = None                    # mean loss over micro-batches and ranks
    grad_norms: Optional["GradNorms"] = None
    lr: Optional[float] = None
    tokens: int = 0                                 # this rank's real (non-padding) tokens
    sample_indices: List[torch.Tensor] = field(default_factory=list)
    spike: Optional[Any] = None                     # telemetry's SpikeDecision, set in pre_optim_step
    skip_update: bool = False                       # drop this optimizer update
    skip_reason: Optional[str] = None
    abort: Optional[str] = None                     # stop before the update; the last good state is saved
    stop: Optional[str] = None                      # stop after this step; its state is saved
    scalars: Dict[str, float] = field(default_factory=dict)   # throughput, MFU, memory ... for logs and sinks
    record: Dict[str, Any] = field(default_factory=dict)      # the step log's line


class Callback:
    """Every hook is optional. ``name`` (unique) is the key of the callback's checkpoint state."""

    name: Optional[str] = None

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def pre_step(self, trainer: "Trainer", state: StepState) -> None: ...
    def post_forward(self, trainer: "Trainer", micro: MicroBatch) -> None: ...
    def post_micro_batch(self, trainer: "Trainer", micro: MicroBatch) -> None: ...
    def pre_optim_step(self, trainer: "Trainer", state: StepState) -> None: ...
    def post_step(self, trainer: "Trainer", state: StepState) -> None: ...
    def on_validation(self, trainer: "Trainer", step: int, record: Mapping[str, Any]) -> None: ...
    def pre_checkpoint_publish(self, trainer: "Trainer", step: int, directory: str) -> None: ...
    def on_train_end(self, trainer: "Trainer", status: str) -> None: ...
    def close(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


HOOKS = ("on_train_start", "pre_step", "post_forward", "post_micro_batch", "pre_optim_step", "post_step", "on_validation",
         "pre_checkpoint_publish", "on_train_end", "close")


class CallbackList:
    """Calls a hook on every callback, in list order."""

    def __init__(self, callbacks: Sequence[Callback]):
        names = [c.name for c in callbacks if c.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"callback names must be unique (they key checkpoint state): {', '.join(dupes)}")
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def find(self, kind: type) -> Optional[Callback]:
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def state_dict(self) -> Dict[str, Any]:
        return {c.name: c.state_dict() for c in self.callbacks if c.name}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        for c in self.callbacks:
            if c.name and c.name in states:
                c.load_state_dict(states[c.name])
