"""The autoregressive objective (``dfm.objective: ar``): next-token cross-entropy of a causal model,
trained by the same trainer, data pipeline, checkpoints and telemetry as DFM.

Users continue or pretrain AR Qwen3 models with it and compare like for like (the AR → DFM
experiment trains its AR starting point this way). Conventions:

- the input is the clean batch (nothing is masked) and t = 1 is passed to the model (clean data);
  a causal model (``model.attention_mode: causal``) without time conditioning is the plain Qwen3;
- every real token with a previous token in its document is a target, predicted from the output
  at the previous position: the shift of megadfm/dfm/shift.py, so packed documents never attend
  to nor predict across a boundary, and an SFT batch's prompt is never scored;
- the loss is the mean CE over those targets (``loss_weighting: none``, ``loss_normalizer: masked``,
  required by the config): transformers' ``Qwen3ForCausalLM`` loss on the same weights and tokens.

Telemetry: every sequence has mask ratio 0 and weight 1, so all of them land in the lowest
mask-ratio bucket, and ``train/loss`` equals ``train/ce``.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import DFMLossOutput, loss_normalizer, scored_weighted_loss
from megadfm.dfm.path import maskable_positions
from megadfm.dfm.schedulers import Scheduler
from megadfm.dfm.shift import segment_starts
from megadfm.tokens import PAD_TOKEN_ID


def ar_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], t: torch.Tensor, cfg: DFMConfig,
            scheduler: Scheduler, generator: torch.Generator, *, mask_token_id: Optional[int] = None,
            pad_token_id: int = PAD_TOKEN_ID) -> DFMLossOutput:
    """Mean next-token CE of ``batch`` (the signature of dfm_loss; ``t``, ``scheduler``, ``generator`` and
    the mask id are not used: nothing is sampled)."""
    x1 = batch["input_ids"]
    bsz, seq_len = x1.shape
    starts = segment_starts(batch["cu_seqlens"], bsz, seq_len)
    prompt_mask = batch.get("prompt_mask")
    scored = maskable_positions(batch["loss_mask"], starts, True, prompt_mask)
    clean = torch.ones(bsz, dtype=torch.float32, device=x1.device)
    hidden = model(x1, t=clean, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                   max_seqlen=batch["max_seqlen"])
    normalizer = loss_normalizer(batch["loss_mask"], scored, cfg, prompt_mask)
    weight = torch.ones(bsz, dtype=torch.float32, device=x1.device)
    loss, ce, row = scored_weighted_loss(model, hidden, x1, scored, starts, True, weight / normalizer,
                                         batch.get("loss_weights"))
    unweighted = torch.zeros(bsz, dtype=torch.float32, device=x1.device).index_add(0, row, ce)
    return DFMLossOutput(
        loss=loss + hidden.sum() * 0.0,  # every parameter stays in the graph, as in dfm_loss
        per_seq_weighted_sum=unweighted.detach(),
        per_seq_unweighted_sum=unweighted.detach(),
        per_seq_masked_count=scored.sum(dim=1),
        t=clean,
        mask_ratio=torch.zeros(bsz, dtype=torch.float32, device=x1.device),
        weight=weight,
        normalizer=normalizer,
        x_t=x1,
        masked=scored,
        truncated_rows=torch.zeros(bsz, dtype=torch.bool, device=x1.device),
    )
