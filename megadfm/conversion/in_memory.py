"""HF Qwen3 <-> megadfm on state dicts in memory (tests, benchmarks, notebooks).

The same plan and tensor steps as the streaming tools (plan.py), applied to a dict: an imported
state dict equals the tensors of the init folder tools/convert_hf_to_megadfm.py writes from the same
weights (time conditioning included), and loads strictly (megadfm.checkpoints.strict_load).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from megadfm.conversion.plan import (HF_EMBEDDING, export_tensors, hf_export_plan, hf_import_plan, import_report,
                                     import_tensors, refuse_trained_time_conditioning)
from megadfm.model.config import ModelConfig


def hf_to_megadfm_state_dict(hf_sd: Mapping[str, torch.Tensor], cfg: ModelConfig, init_mask_row: bool = True,
                             seed: int = 0) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """HF Qwen3 (``model.*`` + ``lm_head.weight``) state dict -> (megadfm state dict, report).

    Tensors are passed through (not copied), except the embedding when ``init_mask_row`` sets its
    mask row to the mean of the rows before it (on a copy: ``hf_sd`` is never modified). Time
    conditioning absent from ``hf_sd`` is added as the import tool adds it (zero modulation, time MLP
    from ``seed``); present (a megadfm export), it is imported as a complete set.
    """
    mask_row = "mean" if init_mask_row else "keep"
    plan = hf_import_plan({k: tuple(v.shape) for k, v in hf_sd.items()}, cfg)
    # the tensor steps change the embedding in place (the streaming reader hands over fresh buffers)
    tensors = ((k, v.detach().clone() if k == HF_EMBEDDING and init_mask_row else v) for k, v in hf_sd.items())
    sd = dict(import_tensors(plan, tensors, hf_sd.__getitem__, cfg, mask_row, seed))
    return sd, import_report(plan, cfg, mask_row, seed)


def megadfm_to_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, time_conditioning: str = "keep") -> Dict[str, torch.Tensor]:
    """megadfm state dict -> HF names; a tied head is omitted (HF re-ties it on load).

    ``time_conditioning``: 'keep' exports it as ``model.<name>`` (for megadfm's HF modeling code);
    'drop' omits it, allowed only while every modulation output is exactly zero (then a plain
    Qwen3ForCausalLM computes the same function), otherwise a ConversionError names the non-zero ones.
    """
    plan = hf_export_plan({k: tuple(v.shape) for k, v in sd.items()}, cfg, time_conditioning)
    if time_conditioning == "drop":
        refuse_trained_time_conditioning(cfg, sd.__getitem__, "time_conditioning='drop'",
                                         "Keep it (time_conditioning='keep') for megadfm's modeling code.")
    return dict(export_tensors(plan, sd.items()))
