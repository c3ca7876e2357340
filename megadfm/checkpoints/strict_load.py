"""The one way weights go into a model: strict, and loud about every mismatch.

Any missing or unexpected key, or any shape mismatch, is an error that lists them all (never a
silent random init); :func:`key_mismatches` is also what the HF converters report with, so every
"these names do not fit" message reads the same. :func:`check_architecture` compares a weights'
ModelConfig with a run's on the fields marked ``architecture`` (megadfm/model/config.py).
:func:`fingerprint` gives norms that identify what was loaded, for the log.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from megadfm.model.config import ARCHITECTURE

Shape = Tuple[int, ...]


class WeightLoadError(RuntimeError):
    """Weights do not match the model: the message lists every offending key."""


def key_mismatches(found: Mapping[str, Shape], expected: Mapping[str, Shape],
                   optional: Optional[Mapping[str, Shape]] = None) -> List[str]:
    """One line per kind of problem (missing, unexpected, mis-shaped), each listing every name; empty
    when ``found`` has every ``expected`` name, nothing beyond ``expected`` and ``optional``, and
    their shapes."""
    optional = optional or {}
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in optional)
    wrong = [f"{k}: got {tuple(found[k])}, expected {tuple(shape)}" for k, shape in {**expected, **optional}.items()
             if k in found and tuple(found[k]) != tuple(shape)]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong:
        parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong)}")
    return parts


def _param_shape(p: nn.Parameter) -> Shape:
    return tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)  # ZeRO-3 keeps the full shape in ds_shape


def check_keys(model: nn.Module, shapes: Mapping[str, Shape], source: str) -> None:
    """Raise WeightLoadError listing missing, unexpected and mis-shaped keys of ``shapes`` against the model."""
    parts = key_mismatches(shapes, {n: _param_shape(p) for n, p in model.named_parameters()})
    if parts:
        raise WeightLoadError(f"cannot load weights from {source}: " + " | ".join(parts))


def load_into_model(model: nn.Module, tensors: Iterable[Tuple[str, torch.Tensor]], source: str,
                    shapes: Mapping[str, Shape]) -> None:
    """Copy tensors into the model after checking ``shapes`` (every tensor's name and shape) against it.
    Works for ZeRO-3-partitioned parameters too (gathered per tensor)."""
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


def load_source(model: nn.Module, source) -> None:
    """Load an opened source (megadfm.checkpoints.source.open_source) into ``model``, strictly."""
    load_into_model(model, source.iter_tensors(), source.path, {n: tuple(sp.shape) for n, sp in source.specs.items()})


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load an in-memory state dict (e.g. an in-memory conversion) into ``model``, strictly."""
    load_into_model(model, state.items(), source, {k: tuple(v.shape) for k, v in state.items()})


def check_architecture(saved, model_cfg, source: str) -> None:
    """Raise WeightLoadError listing every architecture field where ``saved`` (the weights' ModelConfig)
    and ``model_cfg`` (this run's) differ."""
    ours, theirs = model_cfg.tagged(ARCHITECTURE), saved.tagged(ARCHITECTURE)
    diffs = [f"{name}: weights {theirs[name]!r} vs config {ours[name]!r}" for name in ours if theirs[name] != ours[name]]
    if diffs:
        raise WeightLoadError(f"the model section of the config does not match the weights in {source}: " + "; ".join(diffs) +
                              ". Copy the weights' model config into your YAML.")


def fingerprint(model: nn.Module) -> Dict[str, float]:
    """Norms that identify what was loaded: embedding, output head, final norm and all parameters."""
    import deepspeed

    out: Dict[str, float] = {}
    total_sq = 0.0
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
            sq = float(p.detach().double().pow(2).sum())
        total_sq += sq
        if name in ("embed_tokens.weight", "lm_head.weight", "norm.weight"):
            out[f"norm/{name}"] = sq ** 0.5
    out["norm/all_parameters"] = total_sq ** 0.5
    return out
