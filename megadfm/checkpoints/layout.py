"""The on-disk layout of a megadfm run and its checkpoints, and the one rule for "which checkpoint".

    RUN_DIR/
      config.yaml                     the resolved run config
      telemetry/                      metrics, spikes, step log
      checkpoints/
        step_00000100/                complete: DeepSpeed files + megadfm_meta.json + config.yaml + rng_rank*.pt
        step_00000200/
        .incomplete-step_00000300/    a save in progress, or one that crashed: never read
        step_00000100_universal/      DeepSpeed universal form (resume on another world size)
        latest                        "step_00000200": kept for DeepSpeed's own tools

A save writes into ``.incomplete-<tag>``, fsyncs it, renames it to ``<tag>`` and then rewrites
``latest``. So a directory named ``step_XXXXXXXX`` that holds ``megadfm_meta.json`` is complete, and
**the newest complete step is the checkpoint** -- for resume, ``init_from``, export, generation and
evaluation alike (:func:`resolve_step`). ``latest`` is only a hint: when it disagrees (a crash
between the rename and its rewrite, or it names a step that is gone or was never finished) the
disagreement is logged and the newest complete step wins.

A megadfm init folder (``tools/convert_hf_to_megadfm.py``) holds ``megadfm_model.yaml`` and
``model.safetensors`` (or shards plus ``model.safetensors.index.json``), optionally ``tokenizer/``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import List, Optional

logger = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"
"""The resolved run config: in RUN_DIR and again inside every step directory."""
CHECKPOINTS_DIR = "checkpoints"
TELEMETRY_DIR = "telemetry"
LATEST_FILE = "latest"
META_FILE = "megadfm_meta.json"
"""Written last into a step directory: its presence marks the checkpoint complete."""
INCOMPLETE_PREFIX = ".incomplete-"
UNIVERSAL_SUFFIX = "_universal"
MODEL_CONFIG_FILE = "megadfm_model.yaml"
"""The ModelConfig of an init folder."""
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_SUBDIR = "tokenizer"

TAG_RE = re.compile(r"^step_(\d{8})$")


class CheckpointNotFoundError(ValueError):
    """A path is not a run, checkpoint or model folder, or the requested step is not there."""


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of_tag(tag: str) -> Optional[int]:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def is_complete(step_dir: str) -> bool:
    return step_of_tag(os.path.basename(os.path.normpath(step_dir))) is not None and os.path.isfile(os.path.join(step_dir, META_FILE))


def complete_steps(root: str) -> List[int]:
    """Steps of the complete checkpoints under ``root`` (a checkpoints/ directory), oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(s for name in os.listdir(root) if (s := step_of_tag(name)) is not None
                  and os.path.isfile(os.path.join(root, name, META_FILE)))


def incomplete_dirs(root: str) -> List[str]:
    """Names of interrupted saves under ``root``."""
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if n.startswith(INCOMPLETE_PREFIX))


def read_latest(root: str) -> Optional[str]:
    """What ``latest`` says, or None when it is absent. A file that is not a plain step tag (binary
    garbage, an empty file) is reported as such rather than decoded blindly."""
    path = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read(256)
    text = raw.decode("ascii", errors="replace").strip()
    return text


def resolve_step(root: str, step: Optional[int] = None, *, warn: bool = True) -> Optional[int]:
    """The checkpoint to use under ``root``: ``step`` if given (it must be complete), else the newest
    complete one. ``latest`` is compared and any disagreement logged; it never overrides. None when
    there is no complete checkpoint."""
    steps = complete_steps(root)
    if step is not None:
        if step not in steps:
            raise CheckpointNotFoundError(f"{root}: no complete checkpoint for step {step}; complete steps: {steps or 'none'}")
        return step
    if warn:
        for name in incomplete_dirs(root):
            logger.warning("ignoring incomplete checkpoint %s (a save was interrupted)", os.path.join(root, name))
    newest = steps[-1] if steps else None
    latest = read_latest(root)
    if warn and latest is not None:
        named = step_of_tag(latest)
        if named is None:
            logger.warning("%s holds %r, not a step tag; using the newest complete checkpoint %s", os.path.join(root, LATEST_FILE),
                           latest[:40], tag_for_step(newest) if newest is not None else "(none)")
        elif named not in steps:
            logger.warning("'latest' names %s, which is not a complete checkpoint; using the newest complete one %s",
                           latest, tag_for_step(newest) if newest is not None else "(none)")
        elif named != newest:
            logger.warning("'latest' names %s but %s is newer and complete (a crash after publishing it); using %s",
                           latest, tag_for_step(newest), tag_for_step(newest))
    return newest


@dataclass(frozen=True)
class CheckpointLocation:
    """A resolved checkpoint: ``root``/``tag`` is its step directory."""

    root: str
    step: int

    @property
    def tag(self) -> str:
        return tag_for_step(self.step)

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.tag)


def checkpoints_root(path: str) -> str:
    """RUN_DIR -> RUN_DIR/checkpoints; a checkpoints/ directory is returned as it is."""
    sub = os.path.join(path, CHECKPOINTS_DIR)
    return sub if os.path.isdir(sub) else path


def locate_checkpoint(path: str, step: Optional[int] = None) -> CheckpointLocation:
    """A run directory, its checkpoints/ directory or one step directory -> the checkpoint to read."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if step_of_tag(base) is not None:
        if not is_complete(path):
            raise CheckpointNotFoundError(f"{path}: an incomplete checkpoint (no {META_FILE}); its save was interrupted")
        if step is not None and tag_for_step(step) != base:
            raise CheckpointNotFoundError(f"{path} is checkpoint {base} but step {step} was asked for")
        return CheckpointLocation(os.path.dirname(path), step_of_tag(base))
    root = checkpoints_root(path)
    found = resolve_step(root, step)
    if found is None:
        raise CheckpointNotFoundError(
            f"{path}: no complete megadfm checkpoint (step_XXXXXXXX/ with {META_FILE}) under {root}, and no "
            f"{MODEL_CONFIG_FILE} (init folder). Pass a run directory, its {CHECKPOINTS_DIR}/ directory, a step "
            "directory or an init folder.")
    return CheckpointLocation(root, found)


def is_init_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE))
