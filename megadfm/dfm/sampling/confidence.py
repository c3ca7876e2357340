"""``method: confidence``: confidence-based unmasking, optionally in semi-AR blocks (mask source only).

Each step draws a token at every masked position of the current block and keeps the k most
confident (probability, margin or negative entropy), k chosen so that after step s a fraction
r(t_{s+1}) of the block is still masked (deterministic counts on the same time grid as Euler).
With ``block_length`` > 0 the new positions are decoded in semi-autoregressive blocks, left to
right, ``steps // num_blocks`` steps each, stopping early once every row has produced EOS. The
model receives t = t_for_mask_ratio(fraction of the row's new positions still masked), the time
at which training would have produced that mask ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.sampling.registry import SAMPLER_METHODS
from megadfm.dfm.sampling.steps import predict_tokens, time_grid, write_tokens
from megadfm.dfm.schedulers import Scheduler

if TYPE_CHECKING:  # sampler_config imports this module (for its allowed values), so not at run time
    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.sampler_config import SamplerConfig


@SAMPLER_METHODS.register("confidence")
def confidence(model: torch.nn.Module, x: torch.Tensor, layout: GenerationLayout, cfg: SamplerConfig, dfm: DFMConfig,
               scheduler: Scheduler, mask_id: int, generator: torch.Generator) -> int:
    # Keeping "the most confident" presumes a masked position is known to be noise: a mask source.
    if dfm.source != "mask":
        raise ValueError("the confidence sampler needs a mask source (dfm.source: mask); use method: euler")
    bsz, seq_len = x.shape
    n_max = layout.max_new_tokens
    block = cfg.block_length or n_max
    blocks = [(a, min(a + block, n_max)) for a in range(0, n_max, block)]
    steps_per_block = max(1, cfg.steps // len(blocks))
    ratio_after = scheduler.mask_ratio(time_grid(steps_per_block, cfg.time_grid, scheduler))[1:]
    ratio_after[-1] = 0.0
    offset = layout.offset()
    evals = 0
    for a, b in blocks:
        in_block = layout.generate & (offset >= a) & (offset < b)
        block_size = in_block.sum(dim=1).double()  # rows with fewer new tokens have smaller (or empty) blocks
        for s in range(steps_per_block):
            still = in_block & (x == mask_id)
            keep_masked = torch.round(block_size * float(ratio_after[s])).long()
            k_rows = (still.sum(dim=1) - keep_masked).clamp(min=0)
            k_max = int(k_rows.max())
            if k_max == 0:
                continue
            ratio = (layout.generate & (x == mask_id)).sum(dim=1).double() / layout.new_tokens.double()
            t = scheduler.t_for_mask_ratio(ratio).to(torch.float32)
            target, tokens, scores = predict_tokens(model, x, t, layout, still, dfm.shift_logits, cfg, generator,
                                                    confidence=cfg.confidence)
            evals += 1
            conf = torch.full((bsz * seq_len,), float("-inf"), device=x.device)
            conf[target] = scores.float()
            drawn = torch.zeros(bsz * seq_len, dtype=x.dtype, device=x.device)
            drawn[target] = tokens.to(x.dtype)
            best = torch.topk(conf.view(bsz, seq_len), k_max, dim=1).indices  # [B, k_max] columns
            chosen = torch.arange(k_max, device=x.device)[None, :] < k_rows[:, None]
            flat = (best + torch.arange(bsz, device=x.device)[:, None] * seq_len)[chosen]
            write_tokens(x, flat, drawn[flat])
        if cfg.eos_token_id is not None and _all_rows_ended(x, layout, b, cfg.eos_token_id):
            break
    return evals


def _all_rows_ended(x: torch.Tensor, layout: GenerationLayout, decoded_upto: int, eos: int) -> bool:
    """Every row has an EOS among its first ``decoded_upto`` new positions (all decoded by then) or is complete."""
    done = layout.generate & (layout.offset() < decoded_upto)
    complete = layout.new_tokens <= decoded_upto
    return bool((((x == eos) & done).any(dim=1) | complete).all())
