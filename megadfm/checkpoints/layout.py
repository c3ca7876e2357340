"""The on-disk layout of a megadfm run and its checkpoints, and the one rule for "which checkpoint".

    RUN_DIR/
      config.yaml                     the resolved run config
      telemetry/                      metrics, spikes, step log
      checkpoints/
        step_00000100/                complete: DeepSpeed files + megadfm_meta.json + config.yaml + rng_rank*.pt
        step_00000200/
        .incomplete-step_00000300/    a save in progress, or one that crashed: never read
        .corrupt-step_00000050/       failed verification or loading: set aside by a resume, never deleted
        step_00000100_universal/      DeepSpeed universal form (resume on another world size)
        latest                        "step_00000200": kept for DeepSpeed's own tools

A save writes into ``.incomplete-<tag>``, fsyncs it, renames it to ``<tag>`` and then rewrites
``latest``. So a directory named ``step_XXXXXXXX`` that holds ``megadfm_meta.json`` is complete, and
**the newest complete step is the checkpoint** -- for resume, ``init_from``, export, generation and
evaluation alike (:func:`resolve_step`). ``latest`` is only a hint: when it disagrees (a crash
between the rename and its rewrite, or it names a step that is gone or was never finished) the
disagreement is logged and the newest complete step wins.

Every save also writes ``megadfm_manifest.json`` (each file's relative path, size and sha256) before
publishing. :func:`newest_verified_step` is the rule with verification, used by resume and by every
reader (source.open_source): the newest complete step whose files match its manifest. One that does
not match is reported by file and reason and skipped; a resume also renames it to
``.corrupt-<tag>`` (readers never modify a run directory they read). Checkpoints saved before
manifests existed (no ``manifest`` key in their meta file) are used unverified, with a warning.

A megadfm init folder (``tools/convert_hf_to_megadfm.py``) holds ``megadfm_model.yaml`` and
``model.safetensors`` (or shards plus ``model.safetensors.index.json``), optionally ``tokenizer/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from megadfm.io_utils import sha256_file

logger = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"
"""The resolved run config: in RUN_DIR and again inside every step directory."""
CHECKPOINTS_DIR = "checkpoints"
TELEMETRY_DIR = "telemetry"
LATEST_FILE = "latest"
META_FILE = "megadfm_meta.json"
"""Written last into a step directory: its presence marks the checkpoint complete."""
MANIFEST_FILE = "megadfm_manifest.json"
"""Written into a step directory before it is published: every other file's path, size and sha256."""
INCOMPLETE_PREFIX = ".incomplete-"
CORRUPT_PREFIX = ".corrupt-"
"""A checkpoint that failed verification or loading, renamed by a resume so it is never chosen again."""
VERIFY_MODES = ("sha256", "size")
UNIVERSAL_SUFFIX = "_universal"
MODEL_CONFIG_FILE = "megadfm_model.yaml"
"""The ModelConfig of an init folder."""
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_SUBDIR = "tokenizer"

TAG_RE = re.compile(r"^step_(\d{8})$")


class CheckpointNotFoundError(ValueError):
    """A path is not a run, checkpoint or model folder, or the requested step is not there."""


class CheckpointCorruptError(CheckpointNotFoundError):
    """A complete checkpoint whose files do not match its manifest (the message names file and reason)."""


class NoVerifiedCheckpointError(CheckpointNotFoundError):
    """Checkpoints exist (or were set aside as corrupt) but none verifies."""


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


def corrupt_dirs(root: str) -> List[str]:
    """Names of checkpoints set aside as corrupt under ``root``."""
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if n.startswith(CORRUPT_PREFIX))


def verify_step_dir(step_dir: str, mode: str = "sha256") -> None:
    """Check a complete step directory against its manifest; raise CheckpointCorruptError naming the
    first file that is missing, has another size or (``mode`` sha256) other bytes. ``mode`` size skips
    hashing (for checkpoints too large to read twice). Logs how long it took and the rate."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"checkpoint verify mode must be one of {VERIFY_MODES}, got {mode!r}")
    meta_path = os.path.join(step_dir, META_FILE)
    try:
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise CheckpointCorruptError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or "manifest" not in meta:
        logger.warning("%s has no manifest (saved before megadfm wrote manifests): used unverified", step_dir)
        return
    manifest_path = os.path.join(step_dir, MANIFEST_FILE)
    try:
        with open(manifest_path, "rb") as f:
            files = [{"path": str(e["path"]), "size": int(e["size"]), "sha256": e.get("sha256")}
                     for e in json.loads(f.read().decode("utf-8"))["files"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # any malformed manifest is a corrupt one
        raise CheckpointCorruptError(f"{manifest_path}: missing or unreadable manifest ({type(e).__name__}: {e})") from e
    start, total = time.monotonic(), 0
    for entry in files:
        path = os.path.join(step_dir, entry["path"])
        if not os.path.isfile(path):
            raise CheckpointCorruptError(f"{path}: missing (the manifest lists it, {entry['size']} bytes)")
        size = os.path.getsize(path)
        if size != entry["size"]:
            raise CheckpointCorruptError(f"{path}: {size} bytes, the manifest says {entry['size']} (truncated or overwritten)")
        if mode == "sha256" and (digest := sha256_file(path)) != entry["sha256"]:
            raise CheckpointCorruptError(f"{path}: sha256 {digest[:16]}... differs from the manifest's {entry['sha256'][:16]}... "
                                         "(the bytes changed after the save)")
        total += size
    took = time.monotonic() - start
    logger.info("verified %s (%s): %d files, %.1f MB in %.2fs (%.0f MB/s)", step_dir, mode, len(files), total / 1e6, took,
                total / 1e6 / max(took, 1e-6))


def quarantine(root: str, step: int) -> str:
    """Rename a bad checkpoint (and its universal form) to ``.corrupt-<tag>``: out of every reader's way,
    kept for inspection. Returns the new path."""
    tag = tag_for_step(step)
    out = os.path.join(root, CORRUPT_PREFIX + tag)
    n = 1
    while os.path.exists(out):  # the same step went bad twice (re-saved after an earlier quarantine)
        out = os.path.join(root, f"{CORRUPT_PREFIX}{tag}.{n}")
        n += 1
    os.rename(os.path.join(root, tag), out)
    universal = os.path.join(root, tag + UNIVERSAL_SUFFIX)
    if os.path.isdir(universal):
        os.rename(universal, out + UNIVERSAL_SUFFIX)
    return out


def report_bad(root: str, step: int, reason: str, set_aside: bool) -> None:
    """Log why checkpoint ``step`` is not used, and (``set_aside``: a resume) rename it to .corrupt-*."""
    if set_aside:
        logger.error("checkpoint %s is unusable: %s; moved to %s; falling back to the next newest", tag_for_step(step),
                     reason, quarantine(root, step))
    else:
        logger.error("checkpoint %s is unusable: %s; skipping it (left in place; a training resume moves it to %s*)",
                     tag_for_step(step), reason, CORRUPT_PREFIX)


def newest_verified_step(root: str, verify: str = "sha256", *, set_aside: bool = False, exclude=(),
                         warn: bool = True) -> Optional[int]:
    """THE rule with verification: the newest complete step under ``root`` that matches its manifest.
    Failing ones are reported (and, ``set_aside``, renamed to .corrupt-*) and the next newest is tried.
    ``exclude``: steps already found unusable by the caller (a load that failed). None when there
    never was a checkpoint; NoVerifiedCheckpointError when there were some but none is usable."""
    resolve_step(root, warn=warn)  # reports incomplete saves and a 'latest' that disagrees
    failures = []
    for step in reversed(complete_steps(root)):
        if step in exclude:
            continue
        try:
            verify_step_dir(os.path.join(root, tag_for_step(step)), verify)
            return step
        except CheckpointCorruptError as e:
            failures.append(str(e))
            report_bad(root, step, str(e), set_aside)
    if failures or exclude or corrupt_dirs(root):
        raise NoVerifiedCheckpointError(
            f"{root}: no usable checkpoint: {'; '.join(failures) or 'every complete one failed'}"
            + (f" (set aside earlier: {', '.join(corrupt_dirs(root))})" if corrupt_dirs(root) else ""))
    return None


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


def locate_checkpoint(path: str, step: Optional[int] = None, verify: str = "sha256", exclude=()) -> CheckpointLocation:
    """A run directory, its checkpoints/ directory or one step directory -> the checkpoint to read: the
    newest one that verifies (:func:`newest_verified_step`), or exactly the step asked for (verified;
    no fallback: the caller named it). ``exclude``: steps the caller could not load."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if step_of_tag(base) is not None:
        if not is_complete(path):
            raise CheckpointNotFoundError(f"{path}: an incomplete checkpoint (no {META_FILE}); its save was interrupted")
        if step is not None and tag_for_step(step) != base:
            raise CheckpointNotFoundError(f"{path} is checkpoint {base} but step {step} was asked for")
        verify_step_dir(path, verify)
        return CheckpointLocation(os.path.dirname(path), step_of_tag(base))
    root = checkpoints_root(path)
    if step is not None:
        found = resolve_step(root, step)
        verify_step_dir(os.path.join(root, tag_for_step(step)), verify)
    else:
        found = newest_verified_step(root, verify, exclude=exclude)
    if found is None:
        raise CheckpointNotFoundError(
            f"{path}: no complete megadfm checkpoint (step_XXXXXXXX/ with {META_FILE}) under {root}, and no "
            f"{MODEL_CONFIG_FILE} (init folder). Pass a run directory, its {CHECKPOINTS_DIR}/ directory, a step "
            "directory or an init folder.")
    return CheckpointLocation(root, found)


def is_init_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE))
