"""Find and read the weights to export: a megadfm training checkpoint, or a megadfm init folder.

``open_source(path, step)`` accepts

- a run directory (``RUN/checkpoints/step_XXXXXXXX/``), its ``checkpoints/`` directory, or one
  ``step_XXXXXXXX`` directory: a DeepSpeed checkpoint of any ZeRO stage and world size. The step is
  ``step`` if given, else the one ``latest`` names (else the newest complete one). ZeRO 1-3 are
  consolidated with DeepSpeed's zero_to_fp32 (fp32 master weights, whole model in memory); ZeRO-0
  checkpoints have no partitioned optimizer files and hold the module's weights directly. The run
  config is the checkpoint's own ``config.yaml``.
- a megadfm init folder (``megadfm_model.yaml`` + safetensors, from convert_hf_to_megadfm.py),
  streamed tensor by tensor.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import yaml

from megadfm.config import MegaDFMConfig, load_config
from megadfm.config_base import build
from megadfm.conversion.safetensors_io import TensorSpec, read_header, read_tensors
from megadfm.model.config import ModelConfig
from megadfm.training.checkpoint import LATEST_FILE, META_FILE, TAG_RE, tag_for_step
from megadfm.training.init_weights import MODEL_CONFIG_FILE, consolidated_state_dict, safetensors_files

logger = logging.getLogger("megadfm.conversion")

RUN_CONFIG_FILE = "config.yaml"
WRAPPER_PREFIX = "model."  # DFMTrainingModule holds the Qwen3DFM as .model


class SourceError(ValueError):
    """The --ckpt path is not a megadfm checkpoint / init folder, or the requested step is not there."""


@dataclass
class MegaDFMSource:
    kind: str  # "deepspeed" | "init_folder"
    path: str  # the step directory, or the init folder
    step: Optional[int]
    model_config: ModelConfig
    run_config: Optional[MegaDFMConfig]
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


def open_source(path: str, step: Optional[int] = None) -> MegaDFMSource:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SourceError(f"--ckpt {path} does not exist or is not a directory")
    if os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
        if step is not None:
            raise SourceError(f"{path} is a megadfm init folder (one set of weights); --step does not apply")
        return _open_init_folder(path)
    root, tag = _find_checkpoint(path, step)
    return _open_deepspeed(root, tag)


# ---- DeepSpeed checkpoints ----------------------------------------------------------------------

def _complete_steps(root: str) -> List[int]:
    steps = []
    for name in os.listdir(root):
        m = TAG_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, META_FILE)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def _find_checkpoint(path: str, step: Optional[int]) -> Tuple[str, str]:
    base = os.path.basename(path)
    if TAG_RE.match(base) and os.path.isfile(os.path.join(path, META_FILE)):
        if step is not None and tag_for_step(step) != base:
            raise SourceError(f"--ckpt names checkpoint {base} but --step is {step}")
        return os.path.dirname(path), base
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = _complete_steps(root)
    if not steps:
        raise SourceError(f"{path}: no complete megadfm checkpoint (step_XXXXXXXX/ with {META_FILE}) under {root}, and "
                          f"no {MODEL_CONFIG_FILE} (init folder). Pass a run directory, its checkpoints/ directory, "
                          "a step directory or an init folder.")
    if step is not None:
        if step not in steps:
            raise SourceError(f"{root}: no complete checkpoint for step {step}; available steps: {steps}")
        return root, tag_for_step(step)
    latest = os.path.join(root, LATEST_FILE)
    if os.path.isfile(latest):
        with open(latest) as f:
            tag = f.read().strip()
        m = TAG_RE.match(tag)
        if m and int(m.group(1)) in steps:
            return root, tag
        logger.warning("%s names %r, which is not a complete checkpoint; using the newest complete one", latest, tag)
    return root, tag_for_step(steps[-1])


def _open_deepspeed(root: str, tag: str) -> MegaDFMSource:
    step_dir = os.path.join(root, tag)
    config_path = os.path.join(step_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise SourceError(f"{step_dir}: no {RUN_CONFIG_FILE} (the run config saved with every megadfm checkpoint)")
    run_cfg = load_config(config_path)
    with open(os.path.join(step_dir, META_FILE)) as f:
        meta = json.load(f)
    zero_files = sorted(glob.glob(os.path.join(step_dir, "*_optim_states.pt")))
    if zero_files:
        logger.info("consolidating %s (%d partitioned optimizer file(s)) with DeepSpeed zero_to_fp32", step_dir, len(zero_files))
        state = consolidated_state_dict(root, tag, prefix=WRAPPER_PREFIX)
        how = f"zero_to_fp32 over {len(zero_files)} optimizer partition file(s)"
    else:
        state = _zero0_module_state(step_dir)
        how = "module weights of a ZeRO-0 checkpoint (mp_rank_00_model_states.pt)"
    specs = {n: TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in state.items()}
    src = MegaDFMSource(
        kind="deepspeed", path=step_dir, step=int(TAG_RE.match(tag).group(1)), model_config=run_cfg.model,
        run_config=run_cfg, meta=meta, specs=specs, _iter=lambda: _drain(state), _read=lambda n: state[n],
        details={"checkpoint_root": root, "tag": tag, "world_size": meta.get("world_size"),
                 "zero_stage": run_cfg.training.zero_stage, "weights": how})
    src.tokenizer_dir = resolve_tokenizer_path(run_cfg.data.tokenizer, root)
    return src


def _drain(state: Dict[str, torch.Tensor]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield and forget each tensor, so the consolidated model is freed as it is written (iterate once)."""
    for name in list(state):
        yield name, state.pop(name)


def _zero0_module_state(step_dir: str) -> Dict[str, torch.Tensor]:
    path = os.path.join(step_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise SourceError(f"{step_dir}: neither ZeRO optimizer partitions (*_optim_states.pt) nor "
                          "mp_rank_00_model_states.pt: not a DeepSpeed checkpoint, or an incomplete one")
    state = torch.load(path, map_location="cpu", weights_only=False)
    module = state.get("module") if isinstance(state, dict) else None
    if not isinstance(module, dict) or not module:
        raise SourceError(f"{path}: holds no module weights")
    out = {}
    for k, v in module.items():
        if not k.startswith(WRAPPER_PREFIX):
            raise SourceError(f"{path}: parameter {k!r} does not start with the wrapper prefix {WRAPPER_PREFIX!r}")
        out[k[len(WRAPPER_PREFIX):]] = v.detach().float() if v.is_floating_point() else v
    return out


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


# ---- init folders -------------------------------------------------------------------------------

def _open_init_folder(folder: str) -> MegaDFMSource:
    with open(os.path.join(folder, MODEL_CONFIG_FILE), encoding="utf-8") as f:
        tree = yaml.safe_load(f) or {}
    cfg = build(ModelConfig, tree, "model", default_source=os.path.join(folder, MODEL_CONFIG_FILE))
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

    tok = os.path.join(folder, "tokenizer")
    src = MegaDFMSource(kind="init_folder", path=folder, step=None, model_config=cfg, run_config=None, meta={},
                        specs=specs, _iter=iterate, _read=lambda n: next(read_tensors(file_of[n], [n]))[1],
                        details={"weights": f"{len(files)} safetensors file(s)"})
    src.tokenizer_dir = tok if os.path.isdir(tok) else None
    return src
