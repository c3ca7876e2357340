"""The training run entry (called by pretrain_dfm.py): process group, logging, trainer."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

from megadfm.config import MegaDFMConfig
from megadfm.training.distributed import init_distributed, shutdown_distributed


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # DeepSpeed 0.19 calls torch's deprecated reduce_scatter_tensor / all_gather_into_tensor every step:
    # one line of noise per step and rank.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated.*", category=FutureWarning)


def run_training(cfg: MegaDFMConfig, args: Optional[argparse.Namespace] = None, callbacks: Sequence = ()) -> int:
    """Train ``cfg``; ``callbacks`` (megadfm.training.callbacks.Callback) run after the built-in ones."""
    rank, _, _ = init_distributed()
    setup_logging(rank)
    try:
        return _train(cfg, rank, callbacks)
    finally:
        shutdown_distributed()


def _train(cfg: MegaDFMConfig, rank: int, callbacks: Sequence) -> int:
    from megadfm.training.trainer import Trainer  # heavy imports after logging is set up

    try:
        trainer = Trainer(cfg, rank, _world_size(), callbacks=callbacks)
    except refusals() as e:  # bad input caught at start-up: one message, no traceback, nothing trained
        logging.getLogger("megadfm").error("refusing to start: %s", e)
        return EXIT_REFUSED
    try:
        status = trainer.train()
    finally:
        trainer.close()
    return status


def exit_process(status: int) -> None:
    """End a training process with ``status``, skipping the interpreter's teardown.

    DeepSpeed keeps references to the process group, so its gloo and store threads survive
    ``destroy_process_group`` and are only destroyed with the C++ statics at exit, where a still-joinable
    thread calls std::terminate: "terminate called without an active exception", exit -6, after a run
    that finished (about one 2-process CPU run in 40). By now everything the run writes is closed
    (Trainer.close, the sinks, the checkpoints); stdout, stderr and the log handlers are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


EXIT_REFUSED = 2
"""Exit status of a run refused at start-up (provenance, data, tokenizer or checkpoint checks)."""


def refusals() -> tuple:
    """The errors that mean "this input is wrong", each of which names the file or field: reported as one line."""
    from megadfm.checkpoints.layout import CheckpointNotFoundError
    from megadfm.config_base import ConfigError
    from megadfm.data.indexed import IndexedDatasetError
    from megadfm.data.packing import DataError
    from megadfm.data.tokenizer import TokenizerError
    from megadfm.training.provenance import ProvenanceError

    return (CheckpointNotFoundError, ConfigError, DataError, IndexedDatasetError, TokenizerError, ProvenanceError)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size()
