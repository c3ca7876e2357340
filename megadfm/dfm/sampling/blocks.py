"""Semi-autoregressive blocks and one unmasking step inside a block (the confidence and threshold methods).

The new positions are decoded left to right in the blocks of :meth:`SamplingContext.block_plan`
(``block_length`` offsets, 0: one block of all of them; a block-diffusion model's own blocks in
``dfm.mode: block``). :func:`block_step` is one step of one block, the only place those methods call
the model (through ``ctx.forward``, the cache seam): it draws a token and a confidence at every
still-masked position of the block in the rows that take part, keeps the most confident ``n_b``
of row b (``n_b`` chosen by the method: a count fixed in advance, or a rule on the sorted
confidences) and then retires the rows that are done (EOS or complete, :class:`SamplingContext`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.forward import Block
from megadfm.dfm.sampling.steps import predict_tokens, write_rows

# (confidences [R, K] sorted descending, -inf past the row's candidates; candidates [R]) -> how many to keep [R]
CountRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def in_block(ctx: SamplingContext, block: Block) -> torch.Tensor:
    """bool [B, L]: the columns whose offset lies in ``block`` (int bounds, or per-row [B, 1] ones)."""
    a, b = block
    return (ctx.offset >= a) & (ctx.offset < b)


def block_masked(ctx: SamplingContext, block: Block) -> torch.Tensor:
    """bool [B, L]: still-masked new positions of ``block`` (rows with fewer new tokens have a smaller or empty one)."""
    return ctx.masked() & in_block(ctx, block)


def block_step(ctx: SamplingContext, block: Block, *, counts: Optional[torch.Tensor] = None,
               rule: Optional[CountRule] = None) -> bool:
    """One step of ``block``: unmask the most confident masked positions of each active row. False if none ran.

    Exactly one of ``counts`` (long [B], positions to unmask per row, known before the model runs:
    a row with 0 is not run) and ``rule`` (decides after seeing the confidences; at least one per
    row) is given. The model sees t = t_for_mask_ratio(fraction of the row's new positions still
    masked), the time at which training would have produced that mask ratio.
    """
    if (counts is None) == (rule is None):
        raise ValueError("block_step needs exactly one of counts and rule")
    still_all = block_masked(ctx, block)
    want = still_all.any(dim=1) & ctx.active
    if counts is not None:
        want &= counts > 0
    rows = want.nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return False
    layout = ctx.layout
    still = still_all.index_select(0, rows)
    ratio = ctx.masked().index_select(0, rows).sum(dim=1).double() / layout.new_tokens.index_select(0, rows).double()
    t = ctx.scheduler.t_for_mask_ratio(ratio).to(torch.float32)
    target, tokens, scores = predict_tokens(ctx, rows, t, still, block, confidence=ctx.cfg.confidence)
    n_rows, seq_len = still.shape
    conf = torch.full((n_rows * seq_len,), float("-inf"), device=ctx.x.device)
    conf[target] = scores.float()
    drawn = torch.zeros(n_rows * seq_len, dtype=ctx.x.dtype, device=ctx.x.device)
    drawn[target] = tokens.to(ctx.x.dtype)
    candidates = still.sum(dim=1)
    best = torch.topk(conf.view(n_rows, seq_len), int(candidates.max()), dim=1)  # sorted, most confident first
    keep = counts.index_select(0, rows) if counts is not None else rule(best.values, candidates).clamp(min=1)
    keep = torch.minimum(keep, candidates)
    chosen = torch.arange(best.indices.shape[1], device=ctx.x.device)[None, :] < keep[:, None]
    flat = (best.indices + torch.arange(n_rows, device=ctx.x.device)[:, None] * seq_len)[chosen]
    write_rows(ctx, rows, flat, drawn[flat])
    ctx.steps += 1
    ctx.settle_rows()
    return True
