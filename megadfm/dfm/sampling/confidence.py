"""``method: confidence``: confidence-based unmasking, optionally in semi-AR blocks (mask source only).

Each step draws a token at every masked position of the current block and keeps the k most
confident (probability, margin or negative entropy), k chosen so that after step s a fraction
r(t_{s+1}) of the block is still masked (deterministic counts on the same time grid as Euler).
The schedule is row-local so that a row decodes in a batch exactly as it would alone: row b has
ceil(n_b / block_length) blocks and max(1, steps // that many) steps in each. A row leaves the
batch (stops costing forward rows) once it has decoded an EOS and everything before it, or all
of its new positions (megadfm/dfm/sampling/context.py).
"""

from __future__ import annotations

import torch

from megadfm.dfm.sampling.blocks import block_masked, block_step, in_block
from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.registry import SAMPLER_METHODS
from megadfm.dfm.sampling.steps import time_grid


@SAMPLER_METHODS.register("confidence")
def confidence(ctx: SamplingContext) -> None:
    # Keeping "the most confident" presumes a masked position is known to be noise: a mask source.
    if ctx.dfm.source != "mask":
        raise ValueError("the confidence sampler needs a mask source (dfm.source: mask); use method: euler")
    layout = ctx.layout
    blocks, blocks_per_row = ctx.block_plan()
    ratio_after = _ratio_after(ctx, blocks_per_row)  # [B, S_max]
    for block in blocks:
        block_size = (layout.generate & in_block(ctx, block)).sum(dim=1).double()
        for s in range(ratio_after.shape[1]):
            still = block_masked(ctx, block).sum(dim=1)
            keep_masked = torch.round(block_size * ratio_after[:, s]).long()
            block_step(ctx, block, counts=(still - keep_masked).clamp(min=0))
        if not ctx.any_active():
            break


def _ratio_after(ctx: SamplingContext, blocks_per_row: torch.Tensor) -> torch.Tensor:
    """float64 [B, S_max]: the block's mask ratio row b must reach after step s (0 from its last step on)."""
    new_tokens = ctx.layout.new_tokens
    row_steps = (ctx.cfg.steps // blocks_per_row).clamp(min=1)
    table = torch.zeros(new_tokens.shape[0], int(row_steps.max()), dtype=torch.float64, device=new_tokens.device)
    for n in sorted(set(row_steps.tolist())):
        ratio = ctx.scheduler.mask_ratio(time_grid(n, ctx.cfg.time_grid, ctx.scheduler))[1:].to(table.device)
        ratio[-1] = 0.0
        table[row_steps == n, :n] = ratio
    return table
