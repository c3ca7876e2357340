"""CoDA's masking strategies, as options with per-sequence probabilities (DFMConfig).

- **Unmaskable prefix** (``prefix_mask_prob``): the first p tokens of the row stay clean, p uniform
  in [1, n - 1] where n is the row's real-token count. Teaches prompt-conditioned generation.
- **Truncated suffix** (``truncate_suffix_prob``, only on rows without a prefix, as CoDA): the row
  is cut at c uniform in [1, n - 1]; tokens from c on become padding (pad id, out of the loss,
  their own ``cu_seqlens`` segment so nothing attends to them). Teaches variable lengths.
- **Block masking** (``block_mask_prob``): the row's corruption decisions are made per contiguous
  block of ``block_mask_size`` positions (random phase per row) instead of per token. Each
  position lies in exactly one block and a block is corrupted with probability r, so **each
  token's marginal corruption probability stays exactly r**; only the correlation changes (spans,
  as in infilling).

CoDA draws its prefix length and truncation point over the whole packed row (``randint(1, L)``);
here they are drawn over the row's real tokens, which is the same for packed rows without padding
and does not waste the strategy on padding otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from megadfm.dfm.config import DFMConfig


@dataclass
class StrategyDraw:
    """What the strategies decided for one batch."""

    batch: Dict[str, torch.Tensor]  # the batch, with truncated rows rewritten (a new dict; input untouched)
    unmaskable_prefix: torch.Tensor  # bool [B, L]: prefix positions that must stay clean
    block_rows: torch.Tensor  # bool [B]: rows corrupted in blocks rather than per token
    truncated_rows: torch.Tensor  # bool [B]: rows whose suffix became padding


def _uniform_int(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-row integer uniform in [low, high] (inclusive; requires high >= low)."""
    u = torch.rand(low.shape, generator=generator, device=low.device, dtype=torch.float64)
    return low + torch.floor(u * (high - low + 1).double()).long().clamp(max=(high - low))


def _truncate(batch: Dict[str, torch.Tensor], cut: torch.Tensor, rows: torch.Tensor, pad_token_id: int) -> Dict[str, torch.Tensor]:
    """Turn positions >= cut[b] of the selected rows into padding with their own cu_seqlens segment."""
    ids = batch["input_ids"]
    bsz, seq_len = ids.shape
    positions = torch.arange(seq_len, device=ids.device)
    tail = rows[:, None] & (positions[None, :] >= cut[:, None])
    out = dict(batch)
    out["input_ids"] = ids.masked_fill(tail, pad_token_id)
    out["loss_mask"] = batch["loss_mask"] & ~tail
    # New boundaries at every cut point and at every old boundary inside the tail (the tail becomes
    # padding runs; extra boundaries inside padding are harmless, a boundary is never removed).
    cuts = (torch.arange(bsz, device=ids.device) * seq_len + cut)[rows]
    cu = torch.unique(torch.cat([batch["cu_seqlens"].to(torch.long), cuts.to(torch.long)]))
    out["cu_seqlens"] = cu.to(batch["cu_seqlens"].dtype)
    out["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
    pos = batch["position_ids"].clone()
    # Padding positions count 0, 1, ... from the cut (batch contract); only cosmetic, it is its own segment.
    restart = (positions[None, :] - cut[:, None]).clamp(min=0)
    out["position_ids"] = torch.where(tail, restart, pos)
    return out


def draw_strategies(batch: Dict[str, torch.Tensor], cfg: DFMConfig, generator: torch.Generator,
                    pad_token_id: int) -> StrategyDraw:
    """Decide per row which CoDA strategies apply and apply the truncation."""
    ids = batch["input_ids"]
    bsz, seq_len = ids.shape
    device = ids.device
    n_real = batch["loss_mask"].sum(dim=1)
    eligible = n_real >= 2  # a prefix or cut needs at least one token on each side

    def coin(p: float) -> torch.Tensor:
        if p <= 0.0:
            return torch.zeros(bsz, dtype=torch.bool, device=device)
        return torch.rand(bsz, generator=generator, device=device) < p

    prefix_rows = coin(cfg.prefix_mask_prob) & eligible
    truncate_rows = coin(cfg.truncate_suffix_prob) & eligible & ~prefix_rows
    block_rows = coin(cfg.block_mask_prob)
    positions = torch.arange(seq_len, device=device)

    unmaskable = torch.zeros((bsz, seq_len), dtype=torch.bool, device=device)
    if bool(prefix_rows.any()):
        one = torch.ones_like(n_real)
        length = _uniform_int(one, (n_real - 1).clamp(min=1), generator)
        unmaskable = prefix_rows[:, None] & (positions[None, :] < length[:, None])
    out = batch
    if bool(truncate_rows.any()):
        one = torch.ones_like(n_real)
        cut = _uniform_int(one, (n_real - 1).clamp(min=1), generator)
        out = _truncate(batch, cut, truncate_rows, pad_token_id)
    return StrategyDraw(out, unmaskable, block_rows, truncate_rows)


def corruption_pattern(mask_ratio: torch.Tensor, shape: torch.Size, block_rows: torch.Tensor, block_size: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Bool [B, L]: which positions are corrupted before restricting to the maskable ones.

    Per-token rows: independent Bernoulli(r_b). Block rows: Bernoulli(r_b) per block of
    ``block_size`` positions with a random phase, every position in exactly one block, so the
    marginal is r_b at every position either way.
    """
    bsz, seq_len = shape
    device = mask_ratio.device
    r = mask_ratio.to(torch.float32)
    r = r[:, None] if r.dim() == 1 else r  # per row [B], or per token [B, L] (block diffusion)
    per_token = torch.rand((bsz, seq_len), generator=generator, device=device) < r
    if block_size <= 1 or not bool(block_rows.any()):
        return per_token
    phase = torch.floor(torch.rand(bsz, generator=generator, device=device) * block_size).long().clamp(max=block_size - 1)
    num_blocks = (seq_len + block_size - 1) // block_size + 1
    block_id = (torch.arange(seq_len, device=device)[None, :] + phase[:, None]) // block_size
    per_block = torch.rand((bsz, num_blocks), generator=generator, device=device) < r
    blocked = per_block.gather(1, block_id)
    return torch.where(block_rows[:, None], blocked, per_token)
