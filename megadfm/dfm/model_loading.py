"""Load a megadfm model folder for generation: ``config.yaml`` (a MegaDFMConfig dump) + ``model.safetensors``.

This is the one function tools/generate.py (and the sampler benchmark) load models through; when
the checkpoint format grows (DeepSpeed checkpoints, HF export), only this file changes.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from megadfm.config import MegaDFMConfig, load_config
from megadfm.model import Qwen3DFM

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"


def load_model_dir(model_dir: str, device: Optional[torch.device] = None,
                   dtype: Optional[str] = None) -> Tuple[Qwen3DFM, MegaDFMConfig]:
    """(model in eval mode on ``device``, its run config) from ``model_dir``.

    ``dtype`` ("float32" / "bfloat16") overrides the config's model dtype (bf16 checkpoints are
    usually run in fp32 on a CPU). Missing files and mismatched parameter names raise errors
    naming the folder, the file and the names.
    """
    config_path = os.path.join(model_dir, CONFIG_FILE)
    weights_path = os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights_path) and _is_training_checkpoint(model_dir):
        return _load_from_checkpoint(model_dir, device, dtype)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{os.path.abspath(model_dir)}: missing {os.path.basename(path)} "
                                    f"(a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    overrides = [f"model.dtype={dtype}"] if dtype else []
    cfg = load_config(config_path, overrides)
    from safetensors.torch import load_file

    state = load_file(weights_path)
    model = Qwen3DFM(cfg.model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"{weights_path} does not match Qwen3DFM({CONFIG_FILE}): missing {result.missing_keys}, "
                       f"unexpected {result.unexpected_keys}")
    device = device or torch.device("cpu")
    return model.to(device).eval(), cfg


def save_model_dir(model: Qwen3DFM, cfg: MegaDFMConfig, model_dir: str) -> None:
    """Write ``model_dir`` in the format :func:`load_model_dir` reads (tests, init folders)."""
    from safetensors.torch import save_file

    from megadfm.config import dump_config

    os.makedirs(model_dir, exist_ok=True)
    dump_config(cfg, os.path.join(model_dir, CONFIG_FILE))
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    tmp = os.path.join(model_dir, f".{WEIGHTS_FILE}.tmp")
    save_file(state, tmp)
    os.replace(tmp, os.path.join(model_dir, WEIGHTS_FILE))


def _is_training_checkpoint(path: str) -> bool:
    return (os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isfile(os.path.join(path, "latest"))
            or os.path.isfile(os.path.join(path, "megadfm_meta.json")))


def _load_from_checkpoint(path: str, device: Optional[torch.device], dtype: Optional[str]) -> Tuple[Qwen3DFM, MegaDFMConfig]:
    """A run dir, its checkpoints/ or one step_XXXXXXXX/: the newest complete (or given) checkpoint,
    consolidated from any ZeRO stage and world size, with the run config saved beside it."""
    from megadfm.conversion.checkpoint_source import open_source
    from megadfm.training.init_weights import load_into_model

    source = open_source(path)
    cfg = source.run_config
    if dtype:
        cfg.model.dtype = dtype
    model = Qwen3DFM(cfg.model)
    load_into_model(model, source.iter_tensors(), source.path, {n: tuple(sp.shape) for n, sp in source.specs.items()})
    device = device or torch.device("cpu")
    return model.to(device).eval(), cfg
