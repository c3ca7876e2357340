"""Global gradient L2 norms per parameter group, correct under every ZeRO stage.

Call after the last micro-batch's ``engine.backward`` and before ``engine.step()`` (the only window in
which DeepSpeed holds the reduced gradients):

    norms = compute_grad_norms(engine, model.parameter_group, clip=cfg.training.grad_clip)
    norms.total, norms.groups["backbone"], norms.clip_coef, norms.groups_post_clip["head"]

Where each parameter's gradient lives after backward:

- no ZeRO / ZeRO-0 / a plain module: ``param.grad`` holds the full, already data-parallel-averaged
  gradient on every rank (replicated), so its sum of squares is counted locally and never reduced.
- ZeRO-1/2: DeepSpeed clears ``param.grad``; each rank owns a disjoint fragment of every parameter's
  averaged gradient (``param._hp_mapping``), the same fragment ``deepspeed.utils.safe_get_full_grad``
  assembles with one all-reduce *per parameter*. We take the sum of squares of the local fragment.
- ZeRO-3: ``deepspeed.utils.safe_get_local_grad(param)`` is this rank's partition of the averaged
  gradient (partition padding is zero). Again the sum of squares of the local partition.

The partitioned sums of squares of all groups are stacked into one tensor and summed across the
data-parallel group with ONE all-reduce; the global norm of a group is the square root. Gradients
are divided by the fp16 loss scale when fp16 is on (bf16 and fp32 have none). Post-clip norms mirror
DeepSpeed's clipping: every gradient is multiplied by ``clip_coef = 1 / max(1, (total + 1e-6) / clip)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

GROUPS: Tuple[str, ...] = ("embeddings", "backbone", "head", "time_conditioning")


@dataclass
class GradNorms:
    """Global pre- and post-clip gradient norms of one optimizer step."""

    total: float
    groups: Dict[str, float]
    clip: float = 0.0
    clip_coef: float = 1.0
    groups_post_clip: Dict[str, float] = field(default_factory=dict)

    @property
    def total_post_clip(self) -> float:
        return self.total * self.clip_coef

    @property
    def clipped(self) -> bool:
        return self.clip_coef < 1.0

    def as_dict(self) -> Dict[str, float]:
        """Flat metric names as logged: ``grad/total``, ``grad/<group>``, ``grad/<group>_post_clip``, ..."""
        out = {"grad/total": self.total, "grad/total_post_clip": self.total_post_clip, "grad/clip": self.clip,
               "grad/clip_coef": self.clip_coef}
        for name, value in self.groups.items():
            out[f"grad/{name}"] = value
            out[f"grad/{name}_post_clip"] = self.groups_post_clip.get(name, value * self.clip_coef)
        return out


def clip_coefficient(total: float, clip: float) -> float:
    """The factor DeepSpeed (and torch's clip_grad_norm_) applies to every gradient; 1 when clip <= 0."""
    if clip <= 0 or not math.isfinite(total):
        return 1.0
    return 1.0 / max(1.0, (total + 1e-6) / clip)


def _fragment_of_hp_mapping(param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """This rank's fragment of a ZeRO-1/2 (or bf16-optimizer) gradient, as safe_get_full_grad reads it."""
    mapping = param._hp_mapping
    if mapping is None:  # this rank owns no element of this parameter
        return None
    frag = mapping.get_lp_grad_fragment(param._index_in_param_group).float().flatten()
    address = mapping.lp_fragment_address
    if frag.numel() == param.numel() and address.numel != param.numel():
        # the bf16 optimizer keeps a full accumulation buffer per rank: count only the owned fragment
        frag = frag.narrow(0, address.start, address.numel)
    return frag


def _local_grad(param: torch.nn.Parameter) -> Tuple[Optional[torch.Tensor], bool]:
    """(gradient visible on this rank, whether it is a partition to be summed across ranks)."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(param), True
    if getattr(param, "_hp_grad", None) is not None or (hasattr(param, "_hp_mapping") and param.grad is None):
        return _fragment_of_hp_mapping(param), True
    return param.grad, False


def _unwrap(model_or_engine) -> Tuple[torch.nn.Module, Optional[object]]:
    module = getattr(model_or_engine, "module", None)
    if isinstance(module, torch.nn.Module) and hasattr(model_or_engine, "optimizer"):
        return module, model_or_engine
    return model_or_engine, None


def _loss_scale(engine) -> float:
    if engine is None:
        return 1.0
    fp16 = getattr(engine, "fp16_enabled", None)
    if callable(fp16) and fp16():
        scale = getattr(engine.optimizer, "loss_scale", None) or getattr(engine.optimizer, "cur_scale", None)
        return float(scale) if scale else 1.0
    return 1.0


def _dp_group(engine):
    if engine is None:
        return None
    opt = getattr(engine, "optimizer", None)
    return getattr(opt, "dp_process_group", None) or getattr(engine, "data_parallel_group", None)


def compute_grad_norms(model_or_engine, group_of: Callable[[str], str], clip: float = 0.0,
                       groups: Sequence[str] = GROUPS, process_group=None) -> GradNorms:
    """Global L2 gradient norm in total and per group (``group_of(param_name)``), before and after clipping.

    ``model_or_engine`` is a DeepSpeed engine or a plain ``nn.Module`` (DDP-style replicated grads).
    Collective when any gradient is partitioned (ZeRO-1/2/3 with several ranks): every rank must call it.
    ``process_group`` defaults to the engine's data-parallel group (the world for a plain module).
    """
    module, engine = _unwrap(model_or_engine)
    index = {name: i for i, name in enumerate(groups)}
    partitioned_sq: Optional[torch.Tensor] = None
    replicated_sq: Optional[torch.Tensor] = None
    any_partitioned = False
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of(name)
        if group not in index:
            raise ValueError(f"group_of({name!r}) returned {group!r}; expected one of {list(groups)}")
        grad, is_partition = _local_grad(param)
        any_partitioned |= is_partition
        if grad is None:
            continue
        sq = grad.detach().float().pow(2).sum()
        if is_partition:
            if partitioned_sq is None:
                partitioned_sq = torch.zeros(len(groups), dtype=torch.float64, device=sq.device)
            partitioned_sq[index[group]] += sq.double()
        else:
            if replicated_sq is None:
                replicated_sq = torch.zeros(len(groups), dtype=torch.float64, device=sq.device)
            replicated_sq[index[group]] += sq.double()
    if any_partitioned:
        if partitioned_sq is None:  # a rank that owns no gradient element still joins the reduction
            device = next(module.parameters()).device
            partitioned_sq = torch.zeros(len(groups), dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(partitioned_sq, group=process_group if process_group is not None else _dp_group(engine))
    total_sq = torch.zeros(len(groups), dtype=torch.float64)
    for part in (partitioned_sq, replicated_sq):
        if part is not None:
            total_sq += part.cpu()
    scale = _loss_scale(engine)
    per_group = {name: math.sqrt(float(total_sq[i])) / scale for name, i in index.items()}
    total = math.sqrt(float(total_sq.sum())) / scale
    coef = clip_coefficient(total, clip)
    return GradNorms(total=total, groups=per_group, clip=float(clip), clip_coef=coef,
                     groups_post_clip={k: v * coef for k, v in per_group.items()})
