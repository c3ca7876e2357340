"""What a save needs beyond DeepSpeed: the manifest, the free-space check, one clear error per failure.

- The manifest (layout.MANIFEST_FILE) lists every file of the step directory with its size and
  sha256. Hashing is split over the ranks (file i by rank i mod world size) and gathered on rank 0,
  so a save reads each byte once, on one rank.
- The free-space check runs on every rank before anything is written; all ranks agree to save or
  refuse. The size of a save is estimated from the previous checkpoint; before the first one, from
  the parameter count: ZeRO keeps fp32 master weights (4 bytes) and Adam's two fp32 moments (8) per
  parameter, DeepSpeed adds the module copy (2-4) and pickling overhead: 16 bytes per parameter + 1 MiB.
- A write that fails is reported as "disk full (N bytes needed, M free) at PATH" when the disk is
  full (ENOSPC/EDQUOT, or torch's stream writer failing while almost nothing is left free: torch
  reports ENOSPC as "basic_ios::clear: iostream error", without errno), else with its own reason.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any, List, Optional, Tuple

import torch.distributed as dist

from megadfm.checkpoints.layout import MANIFEST_FILE
from megadfm.io_utils import sha256_file

BYTES_PER_PARAMETER = 16
ESTIMATE_OVERHEAD = 1 << 20
NEARLY_FULL = 1 << 20
"""Free bytes under which a failed write is taken to be a full disk (torch's writer gives no errno)."""


class CheckpointSaveError(RuntimeError):
    """A save failed or was refused; its ``.incomplete-*`` directory is gone, the previous checkpoint stays."""


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_gather(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (a list of one element without a process group)."""
    if not _dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def parameter_count(engine) -> int:
    """Parameters of the whole model (ZeRO-3 partitions keep the full size in ``ds_numel``)."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())


def first_save_estimate(engine) -> int:
    return BYTES_PER_PARAMETER * parameter_count(engine) + ESTIMATE_OVERHEAD


def check_space(root: str, needed: int, min_free: int) -> Optional[str]:
    """None when every rank has ``needed`` + ``min_free`` bytes free at ``root``, else the refusal (the same
    message on every rank)."""
    free = shutil.disk_usage(root).free
    answers = all_gather((free, os.uname().nodename))
    worst = min(f for f, _ in answers)
    if worst - needed >= min_free:
        return None
    floor = f" + checkpoint.min_free_bytes {min_free}" if min_free else ""
    return f"disk full ({needed} bytes needed{floor}, {worst} free) at {root}: the save was refused before writing"


def describe_write_error(e: BaseException, path: str, needed: int, free_before: int) -> str:
    """One message for a failed write: 'disk full (...)' when the disk is full, else the real reason."""
    free_now = shutil.disk_usage(os.path.dirname(path) if not os.path.isdir(path) else path).free
    no_space = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    if no_space or free_now < NEARLY_FULL:
        return f"disk full ({needed} bytes needed, {free_before} free) at {path} ({type(e).__name__}: {e})"
    return f"writing checkpoint {path} failed: {type(e).__name__}: {e}"


def write_manifest(step_dir: str, rank: int, world_size: int) -> None:
    """Hash this rank's share of the files of ``step_dir``; rank 0 writes the manifest (call on every rank,
    once every file is written)."""
    names = sorted(os.path.relpath(os.path.join(d, n), step_dir) for d, _, files in os.walk(step_dir) for n in files
                   if n != MANIFEST_FILE)
    mine: List[Tuple[str, int, str]] = [(n, os.path.getsize(os.path.join(step_dir, n)), sha256_file(os.path.join(step_dir, n)))
                                        for i, n in enumerate(names) if i % world_size == rank]
    entries = sorted(e for part in all_gather(mine) for e in part)
    if rank == 0:
        with open(os.path.join(step_dir, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": 1, "files": [{"path": n, "size": s, "sha256": h} for n, s, h in entries]}, f, indent=1)


def agree_ok(error: Optional[str]) -> Optional[str]:
    """The first rank's error, on every rank (None when all succeeded)."""
    return next((e for e in all_gather(error) if e), None)


def barrier() -> None:
    if _dist():
        dist.barrier()
