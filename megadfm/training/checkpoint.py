"""Crash-safe checkpoints around DeepSpeed's own save/load (the layout: megadfm/checkpoints/layout.py).

A save writes everything into ``.incomplete-<tag>``, fsyncs every file, renames the directory to
``<tag>`` (atomic on one filesystem) and only then rewrites ``latest`` (temporary name + rename).
Before publishing, every file is listed with its size and sha256 in the manifest. A crash at any
point leaves the previous checkpoint as the newest complete one. Retention deletes old checkpoints
only after the new one is published, and never the newest. Before a save, every rank compares its
free space with the estimated size (checkpoint_verify.py): the save is refused cleanly (all ranks
agree) if it would not fit. A write that fails anyway removes the save's ``.incomplete-*`` and
raises one CheckpointSaveError ("disk full (N bytes needed, M free) at PATH", or the real reason).

A resume uses the newest checkpoint that verifies against its manifest (layout.newest_verified_step)
and loads; one that fails either is reported by file and reason, renamed to ``.corrupt-<tag>`` and
the next newest is tried. With checkpoints present but none usable the run refuses to start
(``checkpoint.resume: false`` starts from scratch deliberately).
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

from megadfm.checkpoints.layout import (INCOMPLETE_PREFIX, LATEST_FILE, MANIFEST_FILE, META_FILE, UNIVERSAL_SUFFIX,
                                        NoVerifiedCheckpointError, complete_steps, incomplete_dirs, newest_verified_step,
                                        report_bad, tag_for_step)
from megadfm.io_utils import dir_size, fsync_path, fsync_tree, write_bytes_atomic
from megadfm.training.checkpoint_verify import (CheckpointSaveError, agree_ok, all_gather, check_space, describe_write_error,
                                                first_save_estimate, write_manifest)
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
        self.refusal: Optional[str] = None  # why the last save was refused (None: it was not)
        if rank == 0:
            os.makedirs(root, exist_ok=True)
        _barrier()

    # -- discovery (the one rule lives in the layout module) ---------------------------------------
    def complete_checkpoints(self) -> List[int]:
        """Steps of complete checkpoints, oldest first."""
        return complete_steps(self.root)

    def incomplete_checkpoints(self) -> List[str]:
        return incomplete_dirs(self.root)

    def latest_step(self, exclude=()) -> Optional[int]:
        """The checkpoint a resume uses: the newest complete one that verifies (rank 0 verifies and sets
        bad ones aside as .corrupt-*; every rank gets its answer). None when there never was one; with
        checkpoints present but none usable, raises rather than let the run start from scratch."""
        answer = None
        if self.rank == 0:
            try:
                answer = newest_verified_step(self.root, self.cfg.verify, set_aside=True, exclude=exclude)
            except NoVerifiedCheckpointError as e:
                answer = (f"{e}. Refusing to start from scratch over them (the .corrupt-* directories are kept for "
                          "inspection): restore a checkpoint, or set checkpoint.resume=false to start over deliberately")
        answer = all_gather(answer)[0]
        if isinstance(answer, str):
            raise NoVerifiedCheckpointError(answer)
        return answer

    # -- saving --------------------------------------------------------------------------------
    def _estimate_bytes(self, engine) -> int:
        """The previous checkpoint's size, else the parameter-count estimate (checkpoint_verify.py)."""
        if self.last_save_bytes is not None:
            return self.last_save_bytes
        steps = self.complete_checkpoints()
        return dir_size(os.path.join(self.root, tag_for_step(steps[-1]))) if steps else first_save_estimate(engine)

    def _write(self, what: Callable[[], None], path: str, needed: int, free: int, inside_deepspeed: bool = False) -> None:
        """Run one write phase on every rank; if any rank failed, remove the save and raise its error everywhere."""
        error = None
        try:
            what()
        except Exception as e:  # any write failure: reported once, the save removed (below), then raised
            error = describe_write_error(e, path, needed, free)
            if inside_deepspeed:  # the ranks that succeeded wait in DeepSpeed's closing barrier: meet them there
                _barrier()
        error = agree_ok(error)
        if error is None:
            return
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)  # a failed save must not keep the disk full
            logger.error("checkpoint save failed: %s; removed %s; the newest checkpoint is still %s", error, path,
                         tag_for_step(self.complete_checkpoints()[-1]) if self.complete_checkpoints() else "(none)")
        _barrier()
        raise CheckpointSaveError(error)

    def save(self, engine, step: int, client_state: Dict[str, Any], meta: Dict[str, Any],
             extra_files: Optional[Dict[str, str]] = None,
             before_publish: Optional[Callable[[str], None]] = None) -> Optional[str]:
        """Save on every rank; returns the published path, or None when the save was refused for lack of
        space (``self.refusal`` says why). A write that fails raises CheckpointSaveError.

        ``before_publish(directory)`` runs on every rank once the DeepSpeed files and RNG states are
        written and before anything is published (callbacks' ``pre_checkpoint_publish``)."""
        tag = tag_for_step(step)
        tmp_tag = INCOMPLETE_PREFIX + tag
        tmp_dir = os.path.join(self.root, tmp_tag)
        if self.rank == 0:  # interrupted saves first: their bytes count against the free space
            for stale in self.incomplete_checkpoints():
                shutil.rmtree(os.path.join(self.root, stale), ignore_errors=True)
        _barrier()
        needed = self._estimate_bytes(engine)
        free = shutil.disk_usage(self.root).free
        self.refusal = check_space(self.root, needed, self.cfg.min_free_bytes)
        if self.refusal is not None:
            logger.error("not saving checkpoint %s: %s; the newest checkpoint is still %s. Free disk space.", tag,
                         self.refusal, tag_for_step(self.complete_checkpoints()[-1]) if self.complete_checkpoints() else "(none)")
            return None
        if step in self.complete_checkpoints():
            # a resume that stops at once (exit_after_steps = its step): the state is the one just loaded. The
            # published copy is kept: deleting it first would lose the newest good checkpoint if this save failed
            logger.info("checkpoint %s already exists (the state this run resumed from): not saving it again", tag)
            return os.path.join(self.root, tag)
        start = time.time()
        self._write(lambda: engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False),
                    tmp_dir, needed, free, inside_deepspeed=True)
        self._write(lambda: torch.save(rng_state(), os.path.join(tmp_dir, f"rng_rank{self.rank}.pt")), tmp_dir, needed, free)
        _barrier()
        if before_publish is not None:
            self._write(lambda: before_publish(tmp_dir), tmp_dir, needed, free)
        full_meta = dict(meta, step=step, world_size=self.world_size, saved_at=time.time(), tag=tag, manifest=MANIFEST_FILE)
        self._write(lambda: self._write_rank0_files(tmp_dir, full_meta, extra_files or {}), tmp_dir, needed, free)
        self._write(lambda: write_manifest(tmp_dir, self.rank, self.world_size), tmp_dir, needed, free)
        self._write(lambda: self._publish(tmp_dir, tag), tmp_dir, needed, free)
        if self.rank == 0:
            final_dir = os.path.join(self.root, tag)
            self.last_save_bytes = dir_size(final_dir)
            logger.info("saved checkpoint %s (%.1f MB, %.1fs)", final_dir, self.last_save_bytes / 1e6, time.time() - start)
            self._apply_retention()
        _barrier()
        return os.path.join(self.root, tag)

    def _write_rank0_files(self, tmp_dir: str, meta: Dict[str, Any], extra_files: Dict[str, str]) -> None:
        if self.rank != 0:
            return
        with open(os.path.join(tmp_dir, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        for name, text in extra_files.items():
            with open(os.path.join(tmp_dir, name), "w", encoding="utf-8") as f:
                f.write(text)

    def _publish(self, tmp_dir: str, tag: str) -> None:
        """fsync, rename to ``tag``, rewrite ``latest`` (rank 0; the manifest is already written)."""
        if self.rank != 0:
            return
        fsync_tree(tmp_dir)
        os.rename(tmp_dir, os.path.join(self.root, tag))
        fsync_path(self.root)
        write_bytes_atomic(os.path.join(self.root, LATEST_FILE), tag.encode())

    def _apply_retention(self) -> None:
        steps = self.complete_checkpoints()
        keep = set(steps[-max(1, self.cfg.keep_last):])  # the newest (just published) is never removed
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

    def load_newest(self, engine, step: int) -> LoadedCheckpoint:
        """Load ``step`` (from :meth:`latest_step`); if loading fails on any rank, report it by file and
        reason, set it aside as .corrupt-* and load the next newest that verifies, until one loads. The
        engine is built before this: a fallback that needs another world size's universal form fails
        with its own message."""
        failed: List[int] = []
        while True:
            error = None
            try:
                loaded = self.load(engine, step)
            except Exception as e:  # any failure to load: reported, set aside, next newest (module docstring)
                error = f"{os.path.join(self.root, tag_for_step(step))}: loading failed on rank {self.rank} ({type(e).__name__}: {e})"
            error = agree_ok(error)
            if error is None:
                return loaded
            if self.rank == 0:
                report_bad(self.root, step, error, set_aside=True)
            _barrier()
            failed.append(step)
            step = self.latest_step(exclude=failed)
            if step is None:  # latest_step raises when checkpoints existed; None cannot follow a failure
                raise NoVerifiedCheckpointError(f"{self.root}: no checkpoint left to load after {error}")
