"""Learning-rate schedules: linear warmup, then cosine, linear or constant decay to min_lr."""

from __future__ import annotations

import math

from megadfm.training.config import TrainingConfig


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """LR for optimizer step ``step`` (0-based: the update made by the (step+1)-th optimizer step)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    decay_steps = max(1, cfg.train_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.lr_schedule == "linear":
        return cfg.lr - (cfg.lr - cfg.min_lr) * progress
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, cfg: TrainingConfig) -> float:
    """lr_at / peak lr, for torch.optim.lr_scheduler.LambdaLR (keeps per-group multipliers intact)."""
    return lr_at(step, cfg) / cfg.lr
