"""AdamW parameter groups: no weight decay on norms, biases and embeddings; LR multipliers for the
time-conditioning group and by layer-wise rules (``training.lr_multipliers``). Each torch param group
carries a ``name`` for logging."""

from __future__ import annotations

import logging
import re
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from megadfm.config_base import ConfigError
from megadfm.training.config import LRMultiplierRule, TrainingConfig

logger = logging.getLogger(__name__)
_LAYER = re.compile(r"^layers\.(\d+)\.")


def decays(name: str, param: nn.Parameter, group: str) -> bool:
    """Weight decay applies to matrices of the backbone, head and time MLP; not to norms, biases, embeddings."""
    return param.ndim >= 2 and group != "embeddings" and not name.endswith(".bias")


def layer_index(name: str) -> Optional[int]:
    """N for a parameter under ``layers.N.``, else None."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def rule_matches(rule: LRMultiplierRule, name: str, group: str) -> bool:
    if rule.group is not None and rule.group != group:
        return False
    if rule.match and rule.match not in name:
        return False
    if rule.layers is not None:
        layer = layer_index(name)
        return layer is not None and rule.layers[0] <= layer <= rule.layers[1]
    return True


def build_param_groups(model: nn.Module, cfg: TrainingConfig, group_of: Callable[[str], str]) -> List[Dict]:
    """One torch param group per (time conditioning or not, decay or not, LR factor); the factor of a
    parameter is its first matching ``cfg.lr_multipliers`` rule (1 without one) times
    ``time_conditioning_lr_mult`` for that group. A rule that matches nothing is an error (a typo
    would otherwise leave the rates silently unchanged)."""
    buckets: Dict[str, Dict] = {}
    used = [0] * len(cfg.lr_multipliers)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of(name)
        is_time = group == "time_conditioning"
        wd = cfg.weight_decay if decays(name, param, group) else 0.0
        key = f"{'time_conditioning' if is_time else 'model'}/{'decay' if wd else 'no_decay'}"
        factor = cfg.time_conditioning_lr_mult if is_time else 1.0
        rule = next((i for i, r in enumerate(cfg.lr_multipliers) if rule_matches(r, _bare(name), group)), None)
        if rule is not None:
            used[rule] += 1
            factor *= cfg.lr_multipliers[rule].multiplier
            key += f"/x{cfg.lr_multipliers[rule].multiplier:g} [{cfg.lr_multipliers[rule].describe()}]"
        if key not in buckets:
            buckets[key] = {"name": key, "params": [], "param_names": [], "weight_decay": wd, "lr": cfg.lr * factor}
        buckets[key]["params"].append(param)
        buckets[key]["param_names"].append(name)
    unused = [r.describe() for r, n in zip(cfg.lr_multipliers, used) if n == 0]
    if unused:
        raise ConfigError("training.lr_multipliers", f"rule(s) matching no parameter: {'; '.join(unused)} (groups: "
                          "embeddings, backbone, head, time_conditioning; names look like layers.3.mlp.up_proj.weight)")
    groups = [buckets[k] for k in sorted(buckets)]
    for g in groups:
        numel = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in g["params"])
        logger.info("param group %-28s %4d tensors %12d params  weight_decay=%g  lr=%g",
                    g["name"], len(g["params"]), numel, g["weight_decay"], g["lr"])
    for g in groups:
        del g["param_names"]  # torch optimizers reject unknown list-valued keys in state_dict round trips
    return groups


def _bare(name: str) -> str:
    """The model's own parameter name (the training wrapper prefixes ``model.``)."""
    return name[len("model."):] if name.startswith("model.") else name


def build_optimizer(model: nn.Module, cfg: TrainingConfig, group_of: Callable[[str], str]) -> torch.optim.Optimizer:
    # torch's AdamW (with zero_allow_untested_optimizer) needs no compiled DeepSpeed op on CPU.
    return torch.optim.AdamW(build_param_groups(model, cfg, group_of), lr=cfg.lr,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
