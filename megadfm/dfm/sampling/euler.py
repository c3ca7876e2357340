"""``method: euler``: the exact-rate Euler DFM solver (docs/FORMATS.md §4).

For a time grid 0 = t_0 < ... < t_S = 1: at step k each still-masked position is unmasked with
probability (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k)) and gets a token drawn from the
model's posterior at time t_k. That is the exact probability that a token masked at t_k is clean
at t_{k+1} under the mask-source path (the first-order h kappa'/(1 - kappa) undershoots for large
h); at the last step it is 1, so nothing stays masked. With a uniform/mixture source every new
position jumps with that probability to a posterior draw.
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


@SAMPLER_METHODS.register("euler")
def euler(model: torch.nn.Module, x: torch.Tensor, layout: GenerationLayout, cfg: SamplerConfig, dfm: DFMConfig,
          scheduler: Scheduler, mask_id: int, generator: torch.Generator) -> int:
    grid = time_grid(cfg.steps, cfg.time_grid, scheduler)
    kappa = scheduler.kappa(grid)
    bsz = x.shape[0]
    evals = 0
    for k in range(cfg.steps):
        candidates = layout.generate & (x == mask_id) if dfm.source == "mask" else layout.generate
        if k == cfg.steps - 1:
            jump = candidates
        else:
            p_unmask = float((kappa[k + 1] - kappa[k]) / (1.0 - kappa[k]))
            jump = candidates & (torch.rand(x.shape, generator=generator, device=x.device) < p_unmask)
        # Whether a position jumps is independent of the token it would draw, so deciding first and
        # computing logits only where it jumps has the same distribution and costs one head
        # evaluation per new token over the whole run; a step where nothing jumps costs nothing.
        if not bool(jump.any()):
            continue
        t = torch.full((bsz,), float(grid[k]), dtype=torch.float32, device=x.device)
        target, tokens, _ = predict_tokens(model, x, t, layout, jump, dfm.shift_logits, cfg, generator)
        evals += 1
        write_tokens(x, target, tokens)
    return evals
