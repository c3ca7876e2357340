"""Open any set of megadfm weights: a training checkpoint, an init folder or a model folder.

``open_source(path, step=None)`` is how training's ``init_from``, the HF export and generation read
weights. It accepts

- a run directory, its ``checkpoints/`` directory or one ``step_XXXXXXXX/`` directory: a DeepSpeed
  checkpoint of any ZeRO stage and world size (zero.py). The step is ``step`` if given, else the
  newest complete one that verifies against its manifest (layout.newest_verified_step: ``latest`` is
  only a logged hint). One that fails verification, or whose files then fail to load, is reported by
  file and reason and the next newest is used (left in place: a reader never modifies a run). The
  run config is the checkpoint's own ``config.yaml``.
- a megadfm init folder (``megadfm_model.yaml`` + safetensors, tools/convert_hf_to_megadfm.py),
  streamed tensor by tensor.
- a model folder (``config.yaml``, a run config, + ``model.safetensors``; dfm/model_loading.save_model_dir),
  streamed the same way.

Whatever the kind, the result names every tensor with its dtype and shape (``specs``) before any is
read, so a strict load (strict_load.py) can check them all first. Any path that is none of these
raises :class:`SourceError` naming the path and what was expected (layout.py's error class).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import yaml

from megadfm.checkpoints.layout import (CHECKPOINTS_DIR, META_FILE, MODEL_CONFIG_FILE, RUN_CONFIG_FILE, TOKENIZER_SUBDIR,
                                        WEIGHTS_FILE, WEIGHTS_INDEX_FILE, CheckpointLocation, CheckpointNotFoundError,
                                        is_init_folder, locate_checkpoint, report_bad, step_of_tag)
from megadfm.checkpoints.safetensors_io import TensorSpec, read_header, read_tensors
from megadfm.checkpoints.zero import step_weights
from megadfm.config import MegaDFMConfig, load_config
from megadfm.config_base import build
from megadfm.model.config import ModelConfig

SourceError = CheckpointNotFoundError
"""A path is not a set of megadfm weights, or the requested step is not there (one class for both)."""


class MissingFileError(CheckpointNotFoundError, FileNotFoundError):
    """A folder that is almost a source lacks one of its files (the message names it)."""


@dataclass
class MegaDFMSource:
    kind: str  # "deepspeed" | "init_folder" | "model_dir"
    path: str  # the step directory, the init folder or the model folder
    step: Optional[int]
    model_config: ModelConfig
    run_config: Optional[MegaDFMConfig]  # None for an init folder (it holds a ModelConfig only)
    meta: Dict[str, Any]
    specs: Dict[str, TensorSpec]  # in the order iter_tensors yields them
    _iter: Callable[[], Iterator[Tuple[str, torch.Tensor]]] = field(repr=False)
    _read: Callable[[str], torch.Tensor] = field(repr=False)
    details: Dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: Optional[str] = None

    def iter_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        return self._iter()

    def read(self, name: str) -> torch.Tensor:
        return self._read(name)


def open_source(path: str, step: Optional[int] = None, verify: str = "sha256") -> MegaDFMSource:
    """``verify`` (sha256 | size): how a DeepSpeed checkpoint is checked against its manifest first."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SourceError(f"{path} does not exist or is not a directory")
    if is_init_folder(path) or _is_model_folder(path):
        if step is not None:
            raise SourceError(f"{path} is a megadfm {'init' if is_init_folder(path) else 'model'} folder (one set of "
                              "weights); --step does not apply")
        return _open_init_folder(path) if is_init_folder(path) else _open_model_folder(path)
    return _open_newest_loadable(path, step, verify)


def _open_newest_loadable(path: str, step: Optional[int], verify: str) -> MegaDFMSource:
    """The newest verified checkpoint whose weights load; one that verifies but fails to load (a
    checkpoint saved before manifests) is reported and the next newest tried. An explicit step or step
    directory gets no fallback: its error is raised."""
    failed: List[int] = []
    while True:
        loc = locate_checkpoint(path, step, verify, exclude=failed)
        if step is not None or step_of_tag(os.path.basename(path)) is not None:
            return _open_deepspeed(loc)
        try:
            return _open_deepspeed(loc)
        except Exception as e:  # any failure to read the files: report by file and reason, fall back (module docstring)
            report_bad(loc.root, loc.step, f"{loc.path}: loading failed ({type(e).__name__}: {e})", set_aside=False)
            failed.append(loc.step)


def _is_model_folder(path: str) -> bool:
    """model.safetensors, or a config.yaml that is not a run or step directory's (those are checkpoints)."""
    if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        return True
    checkpoint_like = step_of_tag(os.path.basename(path)) is not None or os.path.isdir(os.path.join(path, CHECKPOINTS_DIR))
    return os.path.isfile(os.path.join(path, RUN_CONFIG_FILE)) and not checkpoint_like


# ---- DeepSpeed checkpoints ----------------------------------------------------------------------

def _open_deepspeed(loc: CheckpointLocation) -> MegaDFMSource:
    step_dir = loc.path
    config_path = os.path.join(step_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise MissingFileError(f"{step_dir}: no {RUN_CONFIG_FILE} (the run config saved with every megadfm checkpoint)")
    run_cfg = load_config(config_path)
    with open(os.path.join(step_dir, META_FILE)) as f:
        meta = json.load(f)
    state, how = step_weights(loc.root, loc.tag)
    specs = {n: TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in state.items()}
    return MegaDFMSource(
        kind="deepspeed", path=step_dir, step=loc.step, model_config=run_cfg.model, run_config=run_cfg, meta=meta,
        specs=specs, _iter=lambda: _drain(state), _read=lambda n: state[n],
        details={"checkpoint_root": loc.root, "tag": loc.tag, "world_size": meta.get("world_size"),
                 "zero_stage": run_cfg.training.zero_stage, "weights": how},
        tokenizer_dir=resolve_tokenizer_path(run_cfg.data.tokenizer, loc.root))


def _drain(state: Dict[str, torch.Tensor]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield and forget each tensor, so the consolidated model is freed as it is written (iterate once)."""
    for name in list(state):
        yield name, state.pop(name)


def resolve_tokenizer_path(path: str, checkpoint_root: str) -> Optional[str]:
    """data.tokenizer as saved in the run config: absolute, or relative to the working directory the run
    was launched from (tried: this working directory, the run directory's parent, the megadfm checkout)."""
    if os.path.isabs(path):
        return path if os.path.isdir(path) else None
    run_dir = os.path.dirname(os.path.abspath(checkpoint_root))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for base in (os.getcwd(), os.path.dirname(run_dir), repo):
        candidate = os.path.join(base, path)
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return None


# ---- safetensors folders (init folders, model folders) ------------------------------------------

def safetensors_files(folder: str) -> List[str]:
    """The weight files of a folder (``model.safetensors``, or the shards its index names), checked to exist."""
    index = os.path.join(folder, WEIGHTS_INDEX_FILE)
    single = os.path.join(folder, WEIGHTS_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise SourceError(f"{index}: no 'weight_map' mapping parameter names to shard files")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise MissingFileError(f"{index} names shard(s) that are missing from {folder}: {', '.join(missing)}")
        return [os.path.join(folder, f) for f in files]
    if os.path.isfile(single):
        return [single]
    raise MissingFileError(f"{folder}: missing {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE} and its shards): a megadfm "
                           f"init folder holds {MODEL_CONFIG_FILE} and the weights, a model folder {RUN_CONFIG_FILE} "
                           f"and {WEIGHTS_FILE}")


def _open_safetensors(folder: str, kind: str, cfg: ModelConfig, run_cfg: Optional[MegaDFMConfig],
                      tokenizer_dir: Optional[str]) -> MegaDFMSource:
    files = safetensors_files(folder)
    specs: Dict[str, TensorSpec] = {}
    file_of: Dict[str, str] = {}
    for path in files:
        file_specs, ranges, _ = read_header(path)
        for name in sorted(file_specs, key=lambda k: ranges[k][0]):
            specs[name] = file_specs[name]
            file_of[name] = path

    def iterate():
        for path in files:
            yield from read_tensors(path, [n for n in specs if file_of[n] == path])

    return MegaDFMSource(kind=kind, path=folder, step=None, model_config=cfg, run_config=run_cfg, meta={}, specs=specs,
                         _iter=iterate, _read=lambda n: next(read_tensors(file_of[n], [n]))[1],
                         details={"weights": f"{len(files)} safetensors file(s)"}, tokenizer_dir=tokenizer_dir)


def _open_init_folder(folder: str) -> MegaDFMSource:
    config_path = os.path.join(folder, MODEL_CONFIG_FILE)
    with open(config_path, encoding="utf-8") as f:
        tree = yaml.safe_load(f) or {}
    cfg = build(ModelConfig, tree, "model", default_source=config_path)
    tok = os.path.join(folder, TOKENIZER_SUBDIR)
    return _open_safetensors(folder, "init_folder", cfg, None, tok if os.path.isdir(tok) else None)


def _open_model_folder(folder: str) -> MegaDFMSource:
    config_path = os.path.join(folder, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise MissingFileError(f"{folder}: missing {RUN_CONFIG_FILE} (a model folder holds {RUN_CONFIG_FILE} and {WEIGHTS_FILE})")
    if not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        raise MissingFileError(f"{folder}: missing {WEIGHTS_FILE} (a model folder holds {RUN_CONFIG_FILE} and {WEIGHTS_FILE})")
    run_cfg = load_config(config_path)
    return _open_safetensors(folder, "model_dir", run_cfg.model, run_cfg, resolve_tokenizer_path(run_cfg.data.tokenizer, folder))
