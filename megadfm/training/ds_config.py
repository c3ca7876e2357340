"""Build the DeepSpeed JSON config from a ds_configs/ template plus the run's YAML.

The YAML is the single source of truth for batch sizes, precision, clipping and ZeRO stage: they
are written into the DeepSpeed config here, so the two can never disagree. A template that sets
batch sizes, gradient_clipping or fp16 to something else, or an optimizer/scheduler, is rejected
naming the file, the key and the YAML field that owns it. ``zero_optimization.stage`` and
``bf16.enabled`` are the exception: every shipped template states them (it is written for one stage
and precision), so the YAML's training.zero_stage / training.precision override them with a warning.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Dict

from megadfm.config_base import ConfigError
from megadfm.training.config import TrainingConfig

logger = logging.getLogger(__name__)

# Keys megadfm fills from the YAML; a template may omit them or agree with them.
_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def resolve_batch_sizes(cfg: TrainingConfig, dp_world_size: int) -> Dict[str, int]:
    """micro x accumulation x data-parallel size = global batch, or a ConfigError explaining why not."""
    derived = cfg.micro_batch_size * cfg.grad_accum_steps * dp_world_size
    if cfg.global_batch_size is not None and cfg.global_batch_size != derived:
        hint = ""
        if cfg.global_batch_size % (cfg.micro_batch_size * dp_world_size) == 0:
            hint = (f"; with {dp_world_size} data-parallel ranks use grad_accum_steps="
                    f"{cfg.global_batch_size // (cfg.micro_batch_size * dp_world_size)}")
        raise ConfigError(
            "training.global_batch_size",
            f"{cfg.global_batch_size} != micro_batch_size {cfg.micro_batch_size} x grad_accum_steps {cfg.grad_accum_steps}"
            f" x data-parallel size {dp_world_size} = {derived}{hint}")
    return {"train_batch_size": derived, "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.grad_accum_steps}


def load_ds_template(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError("training.ds_config", f"DeepSpeed config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError("training.ds_config", f"{path} is not valid JSON: {e}") from None


def _reject_owned_keys(template: Dict[str, Any], cfg: TrainingConfig) -> None:
    """A template value that the YAML would replace is refused: a user who wrote it expects it to apply."""
    clip = template.get("gradient_clipping")
    if clip is not None and clip != float(cfg.grad_clip):
        raise ConfigError("training.ds_config",
                          f"{cfg.ds_config} sets gradient_clipping={clip}, but training.grad_clip owns it (now {cfg.grad_clip}); "
                          "remove gradient_clipping from the DeepSpeed template and set training.grad_clip in the YAML")
    fp16 = template.get("fp16", {})
    if isinstance(fp16, dict) and fp16.get("enabled", False):
        raise ConfigError("training.ds_config",
                          f"{cfg.ds_config} sets fp16.enabled=true, but training.precision owns it (fp32 or bf16; megadfm "
                          "does not train in fp16): remove fp16 from the DeepSpeed template")


def build_ds_config(cfg: TrainingConfig, dp_world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config dict for this run (template + YAML), validated."""
    template = load_ds_template(cfg.ds_config)
    ds = copy.deepcopy(template)
    ds.pop("_comment", None)
    batch = resolve_batch_sizes(cfg, dp_world_size)
    for key in _BATCH_KEYS:
        if key in template and template[key] != batch[key]:
            raise ConfigError("training.ds_config",
                              f"{cfg.ds_config} sets {key}={template[key]}, but the YAML implies {batch[key]}; "
                              "remove batch sizes from the DeepSpeed template (megadfm fills them from the YAML)")
    ds.update(batch)
    if "optimizer" in template or "scheduler" in template:
        raise ConfigError("training.ds_config", f"{cfg.ds_config} defines an optimizer/scheduler; megadfm builds AdamW and the "
                                                "LR schedule from the YAML (training.lr, lr_schedule, ...): remove them")
    _reject_owned_keys(template, cfg)
    zero = ds.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != cfg.zero_stage:
        logger.warning("ZeRO stage %d from training.zero_stage overrides stage %d in %s", cfg.zero_stage, zero["stage"], cfg.ds_config)
    zero["stage"] = cfg.zero_stage
    ds["gradient_clipping"] = float(cfg.grad_clip)
    bf16 = cfg.precision == "bf16"
    if ds.get("bf16", {}).get("enabled", False) != bf16:
        logger.warning("bf16 %s (training.precision=%s overrides %s)", "enabled" if bf16 else "disabled", cfg.precision, cfg.ds_config)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    return ds
