"""Load a megadfm model for generation: a model folder (``config.yaml`` + ``model.safetensors``) or a
training checkpoint (a run directory, its ``checkpoints/`` or one ``step_XXXXXXXX/``).

The sampler benchmark loads models through it. Finding and reading the weights is
megadfm.checkpoints.source.open_source; loading them is the strict loader (megadfm.checkpoints.strict_load),
the same two steps as training's ``init_from``. tools/generate.py loads through megadfm.eval.models.load_dfm
instead, which also reads HF exports and init folders (no run config: the default DFM conventions).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from megadfm.checkpoints.layout import RUN_CONFIG_FILE, WEIGHTS_FILE
from megadfm.checkpoints.source import SourceError, open_source
from megadfm.checkpoints.strict_load import load_source
from megadfm.config import MegaDFMConfig
from megadfm.model import Qwen3DFM


def load_model_dir(model_dir: str, device: Optional[torch.device] = None,
                   dtype: Optional[str] = None) -> Tuple[Qwen3DFM, MegaDFMConfig]:
    """(model in eval mode on ``device``, its run config) from ``model_dir``.

    ``dtype`` ("float32" / "bfloat16") overrides the config's model dtype (bf16 checkpoints are
    usually run in fp32 on a CPU). Missing files and mismatched parameter names raise errors
    naming the folder, the file and the names. A checkpoint is the newest complete step,
    consolidated from any ZeRO stage and world size, with the run config saved beside it.
    """
    source = open_source(model_dir)
    if source.run_config is None:  # generation needs the run config (tokenizer, DFM settings)
        raise SourceError(f"{source.path} is a megadfm init folder (a ModelConfig, no run config); generation reads a "
                          f"model folder ({RUN_CONFIG_FILE} + {WEIGHTS_FILE}) or a training checkpoint")
    cfg = source.run_config
    if dtype:
        cfg.model.dtype = dtype
    model = Qwen3DFM(cfg.model)
    load_source(model, source)
    return model.to(device or torch.device("cpu")).eval(), cfg


def save_model_dir(model: Qwen3DFM, cfg: MegaDFMConfig, model_dir: str) -> None:
    """Write ``model_dir`` in the format :func:`load_model_dir` reads (tests, init folders)."""
    from safetensors.torch import save_file

    from megadfm.config import dump_config

    os.makedirs(model_dir, exist_ok=True)
    dump_config(cfg, os.path.join(model_dir, RUN_CONFIG_FILE))
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    tmp = os.path.join(model_dir, f".{WEIGHTS_FILE}.tmp")
    save_file(state, tmp)
    os.replace(tmp, os.path.join(model_dir, WEIGHTS_FILE))
