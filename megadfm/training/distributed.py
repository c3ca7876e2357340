"""Process-group set-up for the three ways a run starts: the deepspeed launcher, torchrun, or one
plain ``python`` process (which needs the rendezvous variables DeepSpeed would otherwise look for
through mpi4py)."""

from __future__ import annotations

import logging
import os
import socket

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed via DeepSpeed; returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:  # one plain process
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed

    if not dist.is_initialized():
        skip_shm_allreduce_op()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return rank, world, local_rank


def skip_shm_allreduce_op() -> None:
    """Tell DeepSpeed its CPU shared-memory all-reduce op is unavailable, before it initialises.

    Only ``inference_all_reduce`` (DeepSpeed inference and AutoTP) uses that op; training never does.
    Left on, every rank compiles it on a fresh machine (about a minute of C++), and creates a 66 MB
    segment in /dev/shm that DeepSpeed never unlinks: every run, and every killed rank, left one per
    rank until the host ran out of memory. DeepSpeed looks the op up in ``deepspeed.ops.__compatible_ops__``
    (one dict, cached on first access so that edits persist); marking it incompatible makes DeepSpeed
    fall back to torch.distributed, which is what the training collectives use anyway."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def shutdown_distributed() -> None:
    """Destroy the process group while the interpreter is still whole: left to interpreter teardown,
    gloo's worker threads can abort the process ("terminate called without an active exception",
    exit -6) after the run itself succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
