"""Initial weights for a run: from scratch, from a megadfm init folder (tools/convert_hf_to_megadfm.py),
or from a megadfm training checkpoint. Loading is strict: any missing or unexpected key, or any
shape mismatch, is an error that lists them all, never a silent random init. A fingerprint of what
was loaded is logged so a user can confirm it.

An init folder holds ``model.safetensors`` (or shards + ``model.safetensors.index.json``) with
megadfm parameter names, and ``megadfm_model.yaml`` (the ModelConfig it was written for).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MODEL_CONFIG_FILE = "megadfm_model.yaml"


class WeightLoadError(RuntimeError):
    """Weights do not match the model: the message lists every offending key."""


def safetensors_files(folder: str) -> List[str]:
    """The weight files of an init/HF-style folder, checked to exist."""
    index = os.path.join(folder, INDEX_FILE)
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightLoadError(f"{index}: no 'weight_map' mapping parameter names to shard files")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise WeightLoadError(f"{index} names shard(s) that are missing from {folder}: {', '.join(missing)}")
        return [os.path.join(folder, f) for f in files]
    if os.path.isfile(single):
        return [single]
    raise WeightLoadError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (is this a megadfm init folder or checkpoint?)")


def _param_shape(p: nn.Parameter) -> Tuple[int, ...]:
    return tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)


def check_keys(model: nn.Module, shapes: Dict[str, Tuple[int, ...]], source: str) -> None:
    """Raise WeightLoadError listing missing, unexpected and mis-shaped keys."""
    params = {n: _param_shape(p) for n, p in model.named_parameters()}
    missing = sorted(set(params) - set(shapes))
    unexpected = sorted(set(shapes) - set(params))
    mismatched = sorted(f"{k}: checkpoint {shapes[k]} vs model {params[k]}" for k in set(params) & set(shapes)
                        if tuple(shapes[k]) != params[k])
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise WeightLoadError(f"cannot load weights from {source}: " + " | ".join(parts))


def load_into_model(model: nn.Module, tensors: Iterator[Tuple[str, torch.Tensor]], source: str,
                    shapes: Dict[str, Tuple[int, ...]]) -> None:
    """Copy tensors into the model; works for ZeRO-3-partitioned parameters too (gathered per tensor)."""
    check_keys(model, shapes, source)
    params = dict(model.named_parameters())
    zero3 = any(hasattr(p, "ds_id") for p in params.values())
    for name, tensor in tensors:
        p = params[name]
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    p.data.copy_(tensor.to(p.dtype))
        else:
            with torch.no_grad():
                p.copy_(tensor.to(p.dtype))


# Fields that change the function the weights compute; the rest (kernels, dtype, checkpointing, chunk
# size, attention mode) are run-time choices the training YAML may set freely.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "resolved_head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                       "attention_bias", "time_conditioning", "time_embedding_dim", "mask_token_id")


def check_architecture(saved, model_cfg, source: str) -> None:
    """Raise WeightLoadError listing every architecture field where ``saved`` (the weights' config)
    and ``model_cfg`` (this run's) differ."""
    diffs = [f"{name}: weights {getattr(saved, name)!r} vs config {getattr(model_cfg, name)!r}"
             for name in ARCHITECTURE_FIELDS if getattr(saved, name) != getattr(model_cfg, name)]
    if diffs:
        raise WeightLoadError(f"the model section of the config does not match the weights in {source}: " + "; ".join(diffs) +
                              ". Copy the weights' model config into your YAML.")


def consolidated_state_dict(checkpoint_dir: str, tag: Optional[str] = None, prefix: str = "model.") -> Dict[str, torch.Tensor]:
    """fp32 weights of a megadfm/DeepSpeed checkpoint (any ZeRO stage, any world size), with the
    training wrapper's ``prefix`` stripped so names are Qwen3DFM parameter names."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            raise WeightLoadError(f"{checkpoint_dir}: parameter {k!r} does not start with the wrapper prefix {prefix!r}")
        out[k[len(prefix):]] = v
    return out


def load_checkpoint_weights(model: nn.Module, checkpoint_dir: str, tag: Optional[str] = None, prefix: str = "model.") -> None:
    """Load the consolidated weights of a megadfm checkpoint into a Qwen3DFM (strict)."""
    sd = consolidated_state_dict(checkpoint_dir, tag, prefix)
    load_into_model(model, iter(sd.items()), f"{checkpoint_dir} (tag {tag or 'latest'})",
                    {k: tuple(v.shape) for k, v in sd.items()})


def fingerprint(model: nn.Module) -> Dict[str, float]:
    """Norms that identify what was loaded: embedding, output head, and all parameters."""
    import deepspeed

    params = dict(model.named_parameters())
    out: Dict[str, float] = {}
    total_sq = 0.0
    for name, p in params.items():
        with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
            sq = float(p.detach().double().pow(2).sum())
        total_sq += sq
        if name in ("embed_tokens.weight", "lm_head.weight", "norm.weight"):
            out[f"norm/{name}"] = sq ** 0.5
    out["norm/all_parameters"] = total_sq ** 0.5
    return out
