"""What happens to a step whose loss or gradient is not finite, or that telemetry calls a spike.

Non-finite loss or grad norm: ``training.nonfinite_policy`` stop (save the last good state, exit 3,
before the update touches the weights) or skip (drop the update). A spike: ``telemetry.spike_action``
skip_step (drop the update) or stop (finish the step, save, exit 3). A dropped update zeroes the
gradients and the LR for that step, so AdamW leaves the weights unchanged and its moments decay by
one step as if the gradient had been zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from megadfm.training.callbacks.base import Callback, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer


class StepPolicyCallback(Callback):
    def __init__(self, nonfinite_policy: str):
        self.nonfinite_policy = nonfinite_policy

    def pre_optim_step(self, trainer: "Trainer", state: StepState) -> None:
        finite = math.isfinite(state.loss) and math.isfinite(state.grad_norms.total)
        if not finite:
            if self.nonfinite_policy == "stop":
                state.abort = (f"step {state.step}: loss {state.loss} / grad norm {state.grad_norms.total} is not finite; saving "
                               "the last good state and stopping (lower training.lr, inspect telemetry/spikes.jsonl, or set "
                               "training.nonfinite_policy: skip)")
                return
            state.skip_update, state.skip_reason = True, "non-finite loss/grad"
            return
        spike = state.spike
        if spike is not None and spike.skip:
            state.skip_update, state.skip_reason = True, "loss spike"
        if spike is not None and spike.stop:
            state.stop = f"step {state.step}: loss spike and telemetry.spike_action=stop (see telemetry/spikes.jsonl)"
