"""Memory fixes for DeepSpeed's ZeRO-3 optimizer that no config knob provides.

fp32 master weights. ZeRO-3 flattens each sub-group's parameter partitions into one buffer and keeps
the optimizer's fp32 "master" copy of it. When the parameters are fp32 already, on the device the
optimizer runs on, DeepSpeed means to use that buffer itself (stage3.py, ``_create_fp32_partitions``:
"we don't need another copy of the weights"), but its test compares the buffer's ``torch.device``
with the device *name*, a str, and ``torch.device("cpu") == "cpu"`` is False. So every fp32 run
holds a second copy: 4 bytes per parameter / ranks (1.12 GiB per rank at the 0.6B shape on 2 ranks).

:func:`share_fp32_master_partitions` does what DeepSpeed meant: for each sub-group whose two buffers
have the same dtype, device, size and values, the master tensor's storage becomes the parameter
buffer's. The optimizer keeps its tensor objects (its state is keyed by them); DeepSpeed's copy of
the updated master into the parameters after each step becomes a copy onto itself. Nothing is
changed when the optimizer is offloaded, in bf16 (the copy is then real: another dtype), or when the
optimizer is not DeepSpeed's ZeRO-3; the log says which.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("megadfm.memory")


def share_fp32_master_partitions(zero_optimizer) -> int:
    """Alias each fp32 master partition to the identical parameter partition; returns the bytes freed."""
    name = type(zero_optimizer).__name__
    if name != "DeepSpeedZeroOptimizer_Stage3":
        logger.info("fp32 master weights: %s is not DeepSpeed's ZeRO-3 optimizer, nothing to share", name)
        return 0
    if getattr(zero_optimizer, "offload_optimizer", False):
        logger.info("fp32 master weights: optimizer offloaded, DeepSpeed's CPU copy kept")
        return 0
    params, masters = zero_optimizer.fp16_partitioned_groups_flat, zero_optimizer.fp32_partitioned_groups_flat
    if len(params) != len(masters):
        raise RuntimeError(f"ZeRO-3 optimizer has {len(params)} parameter sub-groups but {len(masters)} fp32 master ones")
    freed = 0
    for p, m in zip(params, masters):
        if m.data_ptr() == p.data_ptr():
            continue  # DeepSpeed shared it itself
        if m.dtype != p.dtype or m.device != p.device or m.numel() != p.numel():
            continue  # a real copy: another dtype (bf16 parameters) or device
        if not torch.equal(m, p):
            raise RuntimeError("ZeRO-3 fp32 master partition differs from its parameter partition at start-up; "
                               "not sharing them (DeepSpeed's initialisation changed?)")
        freed += m.numel() * m.element_size()
        m.data = p.data
    if freed:
        logger.info("fp32 master weights: shared with the fp32 parameter partitions instead of DeepSpeed's duplicate "
                    "(%.2f GiB freed on this rank)", freed / 2**30)
    else:
        logger.info("fp32 master weights: nothing to share (%s parameters)", params[0].dtype if params else "no")
    return freed
