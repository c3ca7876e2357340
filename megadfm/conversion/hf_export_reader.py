"""Read a megadfm HF export (``tools/convert_megadfm_to_hf.py`` without ``--as-qwen3``) back into a
Qwen3DFM, for evaluation and sampling: the export plan of the model's own names, inverted.

The folder's ``config.json`` carries every exported ModelConfig field, ``shift_logits`` and the DFM mode
(``dfm_mode``, ``block_size``; absent from folders exported before block diffusion: full mode); its
``generation_config.json`` carries the scheduler the model was trained with. Loading is strict.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, Tuple

from megadfm.checkpoints.safetensors_io import read_header, read_tensors
from megadfm.checkpoints.source import SourceError, safetensors_files
from megadfm.checkpoints.strict_load import load_into_model
from megadfm.config_base import build
from megadfm.conversion import hf_modeling
from megadfm.conversion.hf_config import megadfm_config_fields
from megadfm.conversion.plan import hf_export_plan
from megadfm.dfm.config import DFMConfig
from megadfm.model.config import ModelConfig

if TYPE_CHECKING:
    from megadfm.model.qwen3_dfm import Qwen3DFM

CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"


def is_hf_export(path: str) -> bool:
    cfg = os.path.join(path, CONFIG_JSON)
    if not os.path.isfile(cfg):
        return False
    with open(cfg, encoding="utf-8") as f:
        return json.load(f).get("model_type") == hf_modeling.MODEL_TYPE


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise SourceError(f"{os.path.dirname(path)}: missing {os.path.basename(path)} (a megadfm HF export has it)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_hf_export(folder: str, **model_overrides: Any) -> Tuple["Qwen3DFM", ModelConfig, DFMConfig]:
    """(model in eval mode, its ModelConfig, the DFM conventions it was exported with)."""
    from megadfm.model.qwen3_dfm import Qwen3DFM

    hf = _read_json(os.path.join(folder, CONFIG_JSON))
    if hf.get("model_type") != hf_modeling.MODEL_TYPE:
        raise SourceError(f"{folder}/{CONFIG_JSON}: model_type {hf.get('model_type')!r} is not a megadfm export "
                          f"({hf_modeling.MODEL_TYPE!r}); a plain Qwen3 folder is an AR model (evaluate it as one) or an "
                          "input of tools/convert_hf_to_megadfm.py")
    fields = set(megadfm_config_fields(ModelConfig()))
    tree = {k: v for k, v in hf.items() if k in fields}
    tree.update(model_overrides)
    cfg = build(ModelConfig, tree, "model", default_source=os.path.join(folder, CONFIG_JSON))
    sampler = _read_json(os.path.join(folder, GENERATION_CONFIG_JSON)).get("dfm_sampler", {})
    block = {"mode": "block", "block_size": int(hf["block_size"])} if hf.get("dfm_mode", "full") == "block" else {}
    dfm = DFMConfig(shift_logits=bool(hf.get("shift_logits", True)), scheduler=sampler.get("scheduler", "polynomial"),
                    scheduler_exponent=float(sampler.get("scheduler_exponent", 1.0)), **block)
    model = Qwen3DFM(cfg)
    plan = hf_export_plan({n: tuple(p.shape) for n, p in model.named_parameters()}, cfg)
    ours_of = {hf_name: ours for ours, hf_name in plan.rename.items()}
    files = safetensors_files(folder)
    shapes, order = {}, []
    for path in files:
        specs, _, _ = read_header(path)
        for name, spec in specs.items():
            if name not in ours_of:
                raise SourceError(f"{path}: tensor {name!r} is not a name of megadfm's export of this config")
            shapes[ours_of[name]] = tuple(spec.shape)
            order.append((path, name))

    def tensors():
        for path in files:
            for name, tensor in read_tensors(path, [n for p, n in order if p == path]):
                yield ours_of[name], tensor

    load_into_model(model, tensors(), folder, shapes)
    return model.eval(), cfg, dfm
