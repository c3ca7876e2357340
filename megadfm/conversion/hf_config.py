"""config.json <-> ModelConfig: a Qwen3 (or CoDA) config.json in, a Qwen3 or megadfm config.json out.

Which fields travel is marked once on ModelConfig (megadfm/model/config.py): ``qwen3`` for the
fields transformers' Qwen3Config shares by name and meaning, ``hf`` for those megadfm's own export
writes (configuration_megadfm.py reads them back). rope_theta and mask_token_id are handled here by
hand: rope_theta moved into ``rope_parameters`` in transformers 5, and a Qwen3 config.json has no
mask token (megadfm's exports add one).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Mapping

from megadfm.config_base import fields_tagged
from megadfm.conversion.name_map import ConversionError
from megadfm.model.config import HF, QWEN3, ModelConfig

SUPPORTED_MODEL_TYPES = {
    "qwen3": "Qwen3 dense models (Qwen3ForCausalLM)",
    "CoDA": "Salesforce CoDA: a bidirectional Qwen3 diffusion LM with Qwen3's tensor names and a trained <|mask|> "
            "(mask_token_id in config.json)",
}
"""config.json model_type values that import, and what they are. Dream (Qwen2.5: attention biases, no q/k norms)
is not among them: its q/k/v biases fit, but Qwen2.5 has no q_norm / k_norm, which megadfm's attention always applies."""
QWEN3_OPTIONAL = ("head_dim", "attention_bias", "initializer_range")
"""Qwen3 fields a config.json may leave out (transformers has defaults that equal ModelConfig's)."""


def model_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A Qwen3 ``config.json`` (as a dict) -> ModelConfig; ``overrides`` set megadfm-only fields
    (attention_mode, time_conditioning, kernels, ...). Anything the model does not implement is
    rejected by name rather than silently ignored."""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = "; ".join(f"{k!r} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        raise ConversionError(f"config.json model_type is {model_type!r}; supported model types: {supported}")
    problems = []
    if model_type == "CoDA" and "mask_token_id" not in hf_config:
        problems.append("no mask_token_id (a CoDA config.json names its trained mask token)")
    if hf_config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf_config['hidden_act']!r} (only 'silu' / SwiGLU is implemented)")
    if hf_config.get("use_sliding_window"):
        problems.append("use_sliding_window=true (sliding-window attention is not implemented)")
    if float(hf_config.get("attention_dropout", 0.0) or 0.0) != 0.0:
        problems.append(f"attention_dropout={hf_config['attention_dropout']} (attention dropout is not implemented)")
    rope = hf_config.get("rope_parameters") or {}
    scaling = hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (only the default RoPE is implemented)")
    theta = rope.get("rope_theta", hf_config.get("rope_theta"))
    if theta is None:
        problems.append("no rope_theta (neither top-level nor in rope_parameters)")
    shared = fields_tagged(ModelConfig, QWEN3)
    missing = [k for k in shared if k not in hf_config and k not in QWEN3_OPTIONAL]
    if missing:
        problems.append(f"missing fields {missing}")
    if problems:
        raise ConversionError("unsupported Qwen3 config: " + "; ".join(problems))
    kwargs = {k: hf_config[k] for k in shared if k in hf_config and hf_config[k] is not None}
    kwargs["rope_theta"] = float(theta)
    if "mask_token_id" in hf_config:  # written by hf_config_from_model_config; absent from Qwen3's own config.json
        kwargs["mask_token_id"] = hf_config["mask_token_id"]
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConversionError(f"unknown ModelConfig override(s) {unknown}; valid: {sorted(known)}")
    if model_type == "CoDA":  # CoDA attends bidirectionally and has no t: the same function needs no time conditioning
        kwargs.update(attention_mode="bidirectional")
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def hf_config_from_model_config(cfg: ModelConfig) -> Dict[str, Any]:
    """The Qwen3 ``config.json`` fields for export (the inverse of model_config_from_hf on shared fields)."""
    out: Dict[str, Any] = cfg.tagged(QWEN3)
    out.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_act="silu", rope_theta=cfg.rope_theta,
               rope_scaling=None, use_sliding_window=False, attention_dropout=0.0, mask_token_id=cfg.mask_token_id)
    return out


def megadfm_config_fields(cfg: ModelConfig) -> Dict[str, Any]:
    """The ModelConfig fields of a megadfm HF export's config.json (head_dim resolved)."""
    return cfg.tagged(HF)
