"""Block diffusion (``dfm.mode: block``, as BD3LM): bidirectional inside blocks of ``dfm.block_size`` tokens,
causal across blocks, trained on the two-stream layout ``[x_t ‖ x_0]`` (docs/BLOCK_DIFFUSION.md).

Blocks are counted from the start of each document (block k of a document holds its positions
``[k * block_size, (k + 1) * block_size)``, from the batch's ``position_ids``), so a packed row and a
prompt being decoded cut a document into the same blocks. The model runs once on the row twice over,
the corrupted copy x_t then the clean copy x_0, with the same position ids, and this pattern (within one
document always; padding is its own segment, as in full DFM):

- a noisy token of block k sees the noisy tokens of block k (bidirectionally) and the clean tokens of
  blocks < k;
- a clean token of block k sees the clean tokens of blocks <= k (block-causal);
- a clean token never sees a noisy one.

Noisy tokens are conditioned on their block's t, clean tokens on t = 1 (clean data). The clean stream
is therefore exactly what a decoder has cached once a block is finished, which is why block-wise
sampling with a K/V cache is exact.

Which output predicts a masked token at position i (the one rule, :func:`prediction_sources`):
without ``shift_logits``, the noisy stream at i; with it, the noisy stream at i - 1 when i - 1 is in
the same block, else (i opens a block) the clean stream at i - 1, which has seen exactly the clean
document before i. Everything else (corruption, weighting w(t), normalisers, SFT's prompt mask and
loss weights) is full DFM's (megadfm/dfm/loss.py), per token at its block's t.

Times: ``block_t: row`` corrupts every block of a row at the row's t (the trainer's draw), and the loss
then equals :func:`megadfm.dfm.loss.dfm_loss` when one block covers each document. ``block_t: block``
gives block k of a row the time frac(t_b / t_max + k * phi) * t_max (phi the golden ratio's fractional
part, t_max the largest t sampled): uniform on [0, t_max] like t_b, different from block to block,
and no extra random draw. In evaluation (``model.eval()``, the validation pass) every block uses the
row's t, so the per-mask-ratio validation points stay exact. Telemetry buckets a row by the mean mask
ratio of its real tokens.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import DFMLossOutput, check_loss_inputs, loss_normalizer, loss_weight, weighted_prediction_loss
from megadfm.dfm.path import corrupt, maskable_positions
from megadfm.dfm.schedulers import Scheduler
from megadfm.dfm.shift import segment_starts
from megadfm.dfm.time_sampling import max_time
from megadfm.model.kernels.attention import segment_ids
from megadfm.model.kernels.attention_pattern import TwoStreamBlockPattern
from megadfm.tokens import PAD_TOKEN_ID

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
"""Fractional part of the golden ratio: block k's time offset is k * GOLDEN (mod 1), well spread for any k."""


def block_size_at(cfg: DFMConfig, step: int) -> int:
    """The block size optimizer step ``step`` (from 1) trains with: ``block_size_warmup``'s, then ``block_size``."""
    for until, size in cfg.block_size_warmup:
        if step <= until:
            return size
    return cfg.block_size


def document_blocks(position_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """long [B, L]: each token's block index within its document (position ids restart at every document)."""
    if block_size < 1:
        raise ValueError(f"dfm.block_size must be >= 1, got {block_size}")
    return torch.div(position_ids.long(), block_size, rounding_mode="floor")


def two_stream_attention(segment: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """bool [B, 2L, 2L] (query x key) over ``[x_t ‖ x_0]``: the pattern of the module docstring (the model's
    TwoStreamBlockPattern, megadfm/model/kernels/attention_pattern.py, is its one implementation)."""
    return TwoStreamBlockPattern(segment, block).dense()


def prediction_sources(targets: torch.Tensor, block: torch.Tensor, segment_start: torch.Tensor,
                       shift: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat ``(source, target)``: the two-stream output at ``source`` (into [B * 2L]) predicts the token at
    ``target`` (into [B * L]), for every True of ``targets`` [B, L], row-major (the module docstring's rule)."""
    bsz, seq_len = targets.shape
    if shift and bool((targets & segment_start).any()):
        raise ValueError("with shift_logits on, the first token of a document cannot be predicted; it must never be "
                         "masked or decoded")
    target = targets.reshape(-1).nonzero(as_tuple=True)[0]
    row, col = target // seq_len, target % seq_len
    if not shift:
        source_col = col
    else:
        flat_block = block.reshape(-1)
        opens_block = flat_block.index_select(0, target - 1) != flat_block.index_select(0, target)
        source_col = torch.where(opens_block, seq_len + col - 1, col - 1)
    return row * 2 * seq_len + source_col, target


def block_times(t: torch.Tensor, block: torch.Tensor, t_max: float, per_block: bool) -> torch.Tensor:
    """float32 [B, L]: each token's time, the row's t (``per_block`` False) or its block's (module docstring)."""
    row_t = t.to(torch.float32)[:, None].expand_as(block)
    if not per_block:
        return row_t
    unit = torch.frac(t.double()[:, None] / t_max + block.double() * GOLDEN)
    return (unit * t_max).to(torch.float32)


def block_dfm_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], t: torch.Tensor, cfg: DFMConfig,
                   scheduler: Scheduler, generator: torch.Generator, *, mask_token_id: Optional[int] = None,
                   pad_token_id: int = PAD_TOKEN_ID) -> DFMLossOutput:
    """The DFM loss of ``dfm.mode: block`` (the signature and output of dfm_loss; t [B] is each row's time)."""
    del pad_token_id  # CoDA's strategies, the only users of padding here, are refused in block mode
    x1 = batch["input_ids"]
    bsz, seq_len = x1.shape
    mask_token_id = check_loss_inputs(model, t, bsz, mask_token_id)
    starts = segment_starts(batch["cu_seqlens"], bsz, seq_len)
    block = document_blocks(batch["position_ids"], cfg.block_size)
    prompt_mask = batch.get("prompt_mask")
    maskable = maskable_positions(batch["loss_mask"], starts, cfg.shift_logits, prompt_mask)
    per_block = cfg.block_t == "block" and model.training
    t_token = block_times(t, block, max_time(cfg, scheduler), per_block)
    ratio_token = scheduler.mask_ratio(t_token.double()).to(torch.float32)
    # one ratio per row when the row has one t: the very draws of dfm_loss
    row_ratio = scheduler.mask_ratio(t.double()).to(torch.float32)
    path = corrupt(x1, maskable, ratio_token if per_block else row_ratio, cfg, generator, mask_token_id)

    clean_t = torch.ones_like(t_token)
    hidden = model(torch.cat([path.x_t, x1], dim=1), t=torch.cat([t_token, clean_t], dim=1),
                   position_ids=torch.cat([batch["position_ids"], batch["position_ids"]], dim=1),
                   attention_pattern=TwoStreamBlockPattern(segment_ids(batch["cu_seqlens"], bsz, seq_len), block))
    weight_token = loss_weight(t_token.double(), ratio_token.double(), cfg, scheduler).to(torch.float32)
    normalizer = loss_normalizer(batch["loss_mask"], path.scored, cfg, prompt_mask)
    extra = batch.get("loss_weights")
    position_weights = weight_token if extra is None else weight_token * extra.to(torch.float32)
    source, target = prediction_sources(path.scored, block, starts, cfg.shift_logits)
    hidden_sel = hidden.reshape(-1, hidden.shape[-1]).index_select(0, source)
    ones = torch.ones(bsz, dtype=torch.float32, device=x1.device)
    weighted_ce, ce, row = weighted_prediction_loss(model, hidden_sel, x1.reshape(-1).index_select(0, target), target,
                                                    seq_len, ones / normalizer, position_weights)
    unweighted = torch.zeros(bsz, dtype=torch.float32, device=x1.device).index_add(0, row, ce)
    weighted = torch.zeros_like(unweighted).index_add(0, row, ce * position_weights[path.scored])
    if normalizer.dim() == 1:  # a per-row divisor (response_length), folded in as in dfm_loss
        weighted = weighted * (bsz / normalizer)
        normalizer = torch.tensor(float(bsz), dtype=torch.float32, device=x1.device)
    real = batch["loss_mask"].bool()
    tokens = real.sum(dim=1).clamp(min=1)
    mask_ratio = torch.where(real, ratio_token, 0.0).sum(dim=1) / tokens  # the row's ratio (per_block: the mean)
    row_weight = torch.where(real, weight_token, 0.0).sum(dim=1) / tokens
    return DFMLossOutput(
        loss=weighted_ce + hidden.sum() * 0.0,  # every parameter stays in the graph, as in dfm_loss
        per_seq_weighted_sum=weighted.detach(),
        per_seq_unweighted_sum=unweighted.detach(),
        per_seq_masked_count=path.scored.sum(dim=1),
        t=t.detach(),
        mask_ratio=mask_ratio if per_block else row_ratio,
        weight=row_weight if per_block else weight_token[:, 0],
        normalizer=normalizer,
        x_t=path.x_t,
        masked=path.scored,
        truncated_rows=torch.zeros(bsz, dtype=torch.bool, device=x1.device),
    )
