"""The model weights inside a DeepSpeed checkpoint directory, as Qwen3DFM parameter names.

ZeRO 1-3 checkpoints are consolidated with DeepSpeed's zero_to_fp32 (fp32 master weights, any world
size, the whole model in memory). ZeRO-0 checkpoints have no partitioned optimizer files: the
module's weights are in ``mp_rank_00_model_states.pt`` directly.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Dict, Optional, Tuple

import torch

from megadfm.checkpoints.layout import CheckpointNotFoundError

logger = logging.getLogger("megadfm.checkpoints")

WRAPPER_PREFIX = "model."
"""DFMTrainingModule holds the Qwen3DFM as ``.model``; checkpoint names carry that prefix."""
ZERO0_MODEL_FILE = "mp_rank_00_model_states.pt"


def _strip_prefix(state: Dict[str, torch.Tensor], prefix: str, where: str) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            raise CheckpointNotFoundError(f"{where}: parameter {k!r} does not start with the wrapper prefix {prefix!r}")
        out[k[len(prefix):]] = v
    return out


def consolidated_state_dict(checkpoint_dir: str, tag: Optional[str] = None, prefix: str = WRAPPER_PREFIX) -> Dict[str, torch.Tensor]:
    """fp32 weights of a ZeRO 1-3 checkpoint (``checkpoint_dir``/``tag``), any world size, with the
    training wrapper's ``prefix`` stripped so names are Qwen3DFM parameter names."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return _strip_prefix(get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag), prefix, checkpoint_dir)


def zero0_module_state(step_dir: str) -> Dict[str, torch.Tensor]:
    """The module weights of a ZeRO-0 checkpoint, as fp32 (floating point) Qwen3DFM parameters."""
    path = os.path.join(step_dir, ZERO0_MODEL_FILE)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{step_dir}: neither ZeRO optimizer partitions (*_optim_states.pt) nor "
                                      f"{ZERO0_MODEL_FILE}: not a DeepSpeed checkpoint, or an incomplete one")
    state = torch.load(path, map_location="cpu", weights_only=False)
    module = state.get("module") if isinstance(state, dict) else None
    if not isinstance(module, dict) or not module:
        raise CheckpointNotFoundError(f"{path}: holds no module weights")
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in _strip_prefix(module, WRAPPER_PREFIX, path).items()}


def step_weights(root: str, tag: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """(weights, how they were read) of the checkpoint ``root``/``tag``, whatever its ZeRO stage."""
    step_dir = os.path.join(root, tag)
    zero_files = sorted(glob.glob(os.path.join(step_dir, "*_optim_states.pt")))
    if zero_files:
        logger.info("consolidating %s (%d partitioned optimizer file(s)) with DeepSpeed zero_to_fp32", step_dir, len(zero_files))
        return consolidated_state_dict(root, tag), f"zero_to_fp32 over {len(zero_files)} optimizer partition file(s)"
    return zero0_module_state(step_dir), f"module weights of a ZeRO-0 checkpoint ({ZERO0_MODEL_FILE})"
