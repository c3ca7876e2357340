"""AdamW parameter groups: no weight decay on norms, biases and embeddings; an LR multiplier for
the time-conditioning group. Each torch param group carries a ``name`` for logging."""

from __future__ import annotations

import logging
from typing import Callable, Dict, List

import torch
from torch import nn

from megadfm.training.config import TrainingConfig

logger = logging.getLogger(__name__)


def decays(name: str, param: nn.Parameter, group: str) -> bool:
    """Weight decay applies to matrices of the backbone, head and time MLP; not to norms, biases, embeddings."""
    return param.ndim >= 2 and group != "embeddings" and not name.endswith(".bias")


def build_param_groups(model: nn.Module, cfg: TrainingConfig, group_of: Callable[[str], str]) -> List[Dict]:
    buckets: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of(name)
        is_time = group == "time_conditioning"
        wd = cfg.weight_decay if decays(name, param, group) else 0.0
        key = f"{'time_conditioning' if is_time else 'model'}/{'decay' if wd else 'no_decay'}"
        if key not in buckets:
            lr = cfg.lr * (cfg.time_conditioning_lr_mult if is_time else 1.0)
            buckets[key] = {"name": key, "params": [], "param_names": [], "weight_decay": wd, "lr": lr}
        buckets[key]["params"].append(param)
        buckets[key]["param_names"].append(name)
    groups = [buckets[k] for k in sorted(buckets)]
    for g in groups:
        numel = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in g["params"])
        logger.info("param group %-28s %4d tensors %12d params  weight_decay=%g  lr=%g",
                    g["name"], len(g["params"]), numel, g["weight_decay"], g["lr"])
    for g in groups:
        del g["param_names"]  # torch optimizers reject unknown list-valued keys in state_dict round trips
    return groups


def build_optimizer(model: nn.Module, cfg: TrainingConfig, group_of: Callable[[str], str]) -> torch.optim.Optimizer:
    # torch's AdamW (with zero_allow_untested_optimizer) needs no compiled DeepSpeed op on CPU.
    return torch.optim.AdamW(build_param_groups(model, cfg, group_of), lr=cfg.lr,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
