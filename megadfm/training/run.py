"""The training run: set-up, the step loop, checkpoints and resume (called by pretrain_dfm.py)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import torch

from megadfm.config import MegaDFMConfig, config_to_yaml, dump_config
from megadfm.training.checkpoint import CheckpointManager
from megadfm.training.distributed import barrier, init_distributed

logger = logging.getLogger("megadfm")


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/Inf."""


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_training(cfg: MegaDFMConfig, args: Optional[argparse.Namespace] = None) -> int:
    rank, world_size, _ = init_distributed()
    setup_logging(rank)
    from megadfm.training.trainer import Trainer  # heavy imports after logging is set up

    trainer = Trainer(cfg, rank, world_size)
    try:
        return trainer.train()
    finally:
        trainer.close()
