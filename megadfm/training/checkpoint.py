"""Crash-safe checkpoints around DeepSpeed's own save/load (the layout: megadfm/checkpoints/layout.py).

A save writes everything into ``.incomplete-<tag>``, fsyncs every file, renames the directory to
``<tag>`` (atomic on one filesystem) and only then rewrites ``latest`` (temporary name + rename).
A crash or full disk at any point leaves the previous checkpoint as the newest complete one.
Retention deletes old checkpoints only after the new one is published. Before a save, the free
space is compared with the size of the previous checkpoint: the save is refused cleanly (all ranks
agree) if it would not fit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megadfm.checkpoints.layout import (INCOMPLETE_PREFIX, LATEST_FILE, META_FILE, UNIVERSAL_SUFFIX, complete_steps,
                                        incomplete_dirs, resolve_step, tag_for_step)
from megadfm.io_utils import dir_size, fsync_path, fsync_tree, write_bytes_atomic
from megadfm.training.config import CheckpointConfig

logger = logging.getLogger(__name__)


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _agree(flag: bool) -> bool:
    """Rank 0's decision, broadcast so every rank takes the same branch."""
    if not _dist():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _restore_adam_step_counts(engine, steps: int) -> None:
    """DeepSpeed's universal checkpoint keeps Adam's moments but not torch.optim.AdamW's per-parameter
    ``step`` (its loader was written for optimizers that keep the step in the param group), so the
    bias correction would restart. Put back the number of optimizer steps taken."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    before = set()
    for state in inner.state.values():
        if "step" in state:
            before.add(float(state["step"]))
            state["step"] = torch.tensor(float(steps), dtype=state["step"].dtype) if torch.is_tensor(state["step"]) else steps
    logger.info("universal checkpoint: Adam step count set to %d (loaded value(s): %s)", steps, sorted(before))


@dataclass
class LoadedCheckpoint:
    path: str
    step: int
    meta: Dict[str, Any]
    client_state: Dict[str, Any]


class CheckpointManager:
    """Saves, publishes, prunes and finds checkpoints under ``root`` for every rank of a run."""

    def __init__(self, root: str, cfg: CheckpointConfig, rank: int = 0, world_size: int = 1):
        self.root = root
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.last_save_bytes: Optional[int] = None
        if rank == 0:
            os.makedirs(root, exist_ok=True)
        _barrier()

    # -- discovery (the one rule lives in the layout module) ---------------------------------------
    def complete_checkpoints(self) -> List[int]:
        """Steps of complete checkpoints, oldest first."""
        return complete_steps(self.root)

    def incomplete_checkpoints(self) -> List[str]:
        return incomplete_dirs(self.root)

    def latest_step(self) -> Optional[int]:
        """The checkpoint a resume uses: the newest complete one (disagreements of ``latest`` are logged)."""
        return resolve_step(self.root, warn=self.rank == 0)

    # -- saving --------------------------------------------------------------------------------
    def _estimate_bytes(self) -> Optional[int]:
        if self.last_save_bytes is not None:
            return self.last_save_bytes
        steps = self.complete_checkpoints()
        return dir_size(os.path.join(self.root, tag_for_step(steps[-1]))) if steps else None

    def _space_ok(self, step: int) -> bool:
        estimate = self._estimate_bytes()
        free = shutil.disk_usage(self.root).free
        if estimate is None:
            return free > self.cfg.min_free_bytes
        if free - estimate < self.cfg.min_free_bytes:
            logger.error("refusing to save checkpoint at step %d: %.1f MB free, the last checkpoint took %.1f MB and "
                         "checkpoint.min_free_bytes is %.1f MB; the previous checkpoint stays 'latest'. Free disk space.",
                         step, free / 1e6, estimate / 1e6, self.cfg.min_free_bytes / 1e6)
            return False
        if free - 2 * estimate < self.cfg.min_free_bytes:
            logger.warning("disk space is low: %.1f MB free, room for about one more checkpoint of %.1f MB",
                           free / 1e6, estimate / 1e6)
        return True

    def save(self, engine, step: int, client_state: Dict[str, Any], meta: Dict[str, Any],
             extra_files: Optional[Dict[str, str]] = None,
             before_publish: Optional[Callable[[str], None]] = None) -> Optional[str]:
        """Save on every rank; returns the published path, or None when the save was refused.

        ``before_publish(directory)`` runs on every rank once the DeepSpeed files and RNG states are
        written and before anything is published (callbacks' ``pre_checkpoint_publish``)."""
        tag = tag_for_step(step)
        tmp_tag = INCOMPLETE_PREFIX + tag
        tmp_dir = os.path.join(self.root, tmp_tag)
        if not _agree(self._space_ok(step) if self.rank == 0 else True):
            return None
        if self.rank == 0:
            for stale in self.incomplete_checkpoints():
                shutil.rmtree(os.path.join(self.root, stale), ignore_errors=True)
            if os.path.isdir(os.path.join(self.root, tag)):  # re-saving the same step (e.g. stop right after a save)
                shutil.rmtree(os.path.join(self.root, tag))
        _barrier()
        start = time.time()
        engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), os.path.join(tmp_dir, f"rng_rank{self.rank}.pt"))
        _barrier()
        if before_publish is not None:
            before_publish(tmp_dir)
        if self.rank == 0:
            full_meta = dict(meta, step=step, world_size=self.world_size, saved_at=time.time(), tag=tag)
            with open(os.path.join(tmp_dir, META_FILE), "w") as f:
                json.dump(full_meta, f, indent=2, default=str)
            for name, text in (extra_files or {}).items():
                with open(os.path.join(tmp_dir, name), "w", encoding="utf-8") as f:
                    f.write(text)
            fsync_tree(tmp_dir)
            final_dir = os.path.join(self.root, tag)
            os.rename(tmp_dir, final_dir)
            fsync_path(self.root)
            write_bytes_atomic(os.path.join(self.root, LATEST_FILE), tag.encode())
            self.last_save_bytes = dir_size(final_dir)
            logger.info("saved checkpoint %s (%.1f MB, %.1fs)", final_dir, self.last_save_bytes / 1e6, time.time() - start)
            self._apply_retention()
        _barrier()
        return os.path.join(self.root, tag)

    def _apply_retention(self) -> None:
        steps = self.complete_checkpoints()
        keep = set(steps[-self.cfg.keep_last:])
        if self.cfg.keep_every:
            keep |= {s for s in steps if s % self.cfg.keep_every == 0}
        for s in steps:
            if s not in keep:
                shutil.rmtree(os.path.join(self.root, tag_for_step(s)))
                shutil.rmtree(os.path.join(self.root, tag_for_step(s) + UNIVERSAL_SUFFIX), ignore_errors=True)
                logger.info("retention: removed checkpoint %s", tag_for_step(s))

    # -- loading -------------------------------------------------------------------------------
    def read_meta(self, step: int) -> Dict[str, Any]:
        with open(os.path.join(self.root, tag_for_step(step), META_FILE)) as f:
            return json.load(f)

    def needs_universal(self, step: int) -> bool:
        """True when checkpoint ``step`` was saved on another data-parallel world size than this run's."""
        return int(self.read_meta(step).get("world_size", self.world_size)) != self.world_size

    def prepare_universal(self, step: int) -> str:
        """Convert checkpoint ``step`` to DeepSpeed's universal format (once; rank 0, others wait).

        ZeRO shards are cut for one world size; the universal format stores every parameter and its
        optimizer moments whole, so a run on another world size can re-shard them on load
        (DeepSpeed's ``ds_to_universal``; the engine must be built with ``checkpoint.load_universal``).
        """
        tag = tag_for_step(step)
        out = os.path.join(self.root, tag + UNIVERSAL_SUFFIX)
        if self.rank == 0 and not os.path.isdir(out):
            tmp = os.path.join(self.root, INCOMPLETE_PREFIX + tag + UNIVERSAL_SUFFIX)
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   os.path.join(self.root, tag), "--output_folder", tmp, "--num_extract_workers", "1",
                   "--num_merge_workers", "1", "--inject_missing_state"]
            logger.info("checkpoint %s was saved on world size %d, this run has %d: converting to a universal "
                        "checkpoint (%s)", tag, self.read_meta(step)["world_size"], self.world_size, " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"ds_to_universal failed on {os.path.join(self.root, tag)} (exit {proc.returncode}):\n"
                                   f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            fsync_tree(tmp)
            os.rename(tmp, out)
        _barrier()
        return out

    def load(self, engine, step: int, restore_rng: bool = True) -> LoadedCheckpoint:
        """Load checkpoint ``step`` into ``engine`` (module, optimizer, LR scheduler) on every rank.

        If it was saved on another world size, its universal form is loaded instead (see
        :meth:`prepare_universal`); per-rank RNG states are then not restored (ranks differ).
        """
        tag = tag_for_step(step)
        path = os.path.join(self.root, tag)
        meta = self.read_meta(step)
        if self.needs_universal(step):
            if not engine.load_universal_checkpoint():
                raise RuntimeError(f"{path} was saved with world size {meta['world_size']}; this run has "
                                   f"{self.world_size}: build the engine with checkpoint.load_universal (the trainer does)")
            tag = tag + UNIVERSAL_SUFFIX
            restore_rng = False
        load_path, client_state = engine.load_checkpoint(self.root, tag=tag, load_optimizer_states=True,
                                                         load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        if tag.endswith(UNIVERSAL_SUFFIX):
            _restore_adam_step_counts(engine, int((client_state or {}).get("optimizer_steps", step)))
        rng_file = os.path.join(path, f"rng_rank{self.rank}.pt")
        if restore_rng and os.path.isfile(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        return LoadedCheckpoint(path=path, step=step, meta=meta, client_state=client_state or {})
