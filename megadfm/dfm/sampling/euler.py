"""``method: euler``: the exact-rate Euler DFM solver (docs/FORMATS.md §4).

For a time grid 0 = t_0 < ... < t_S = 1: at step k each still-masked position is unmasked with
probability (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k)) and gets a token drawn from the
model's posterior at time t_k. That is the exact probability that a token masked at t_k is clean
at t_{k+1} under the mask-source path (the first-order h kappa'/(1 - kappa) undershoots for large
h); at the last step it is 1, so nothing stays masked. With a uniform/mixture source every new
position jumps with that probability to a posterior draw. Only rows with a jump are run; with a
mask source a row leaves for good once it has decoded an EOS and everything before it
(megadfm/dfm/sampling/context.py).
"""

from __future__ import annotations

import torch

from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.registry import SAMPLER_METHODS
from megadfm.dfm.sampling.steps import predict_tokens, time_grid, write_rows


@SAMPLER_METHODS.register("euler")
def euler(ctx: SamplingContext) -> None:
    cfg, layout, x = ctx.cfg, ctx.layout, ctx.x
    grid = time_grid(cfg.steps, cfg.time_grid, ctx.scheduler)
    kappa = ctx.scheduler.kappa(grid)
    whole = (0, layout.max_new_tokens)
    for k in range(cfg.steps):
        candidates = ctx.masked() if ctx.dfm.source == "mask" else layout.generate
        if k == cfg.steps - 1:
            jump = candidates
        else:
            p_unmask = float((kappa[k + 1] - kappa[k]) / (1.0 - kappa[k]))
            # drawn for every row, retired or not, so the random stream does not depend on who is left
            jump = candidates & (torch.rand(x.shape, generator=ctx.generator, device=x.device) < p_unmask)
        # Whether a position jumps is independent of the token it would draw, so deciding first and
        # computing logits only where it jumps has the same distribution and costs one head
        # evaluation per new token over the whole run; a row (a step) where nothing jumps costs nothing.
        jump &= ctx.active[:, None]
        rows = jump.any(dim=1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        t = torch.full((rows.numel(),), float(grid[k]), dtype=torch.float32, device=x.device)
        target, tokens, _ = predict_tokens(ctx, rows, t, jump.index_select(0, rows), whole)
        write_rows(ctx, rows, target, tokens)
        ctx.steps += 1
        ctx.settle_rows()
        if not ctx.any_active():
            break
