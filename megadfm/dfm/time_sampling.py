"""Draw one t per sequence, restricted to mask ratios r in [eps, 1] (docs/DESIGN.md §3 "Corruption").

t is drawn uniformly on [0, t_max] where t_max = t_for_mask_ratio(eps): near r = 0 the weight
kappa'/(1 - kappa) explodes (1/r for the linear scheduler), so those times are left out. With the
linear scheduler this is CoDA's sigma ~ U[eps, 1] in distribution.

``stratified`` (default) lowers the variance of the loss estimate of a global batch: the unit
interval is cut into G equal strata, G = global batch size, and every stratum receives exactly one
sample: u_j = (perm[j] + U_j) / G, with perm a random permutation and U_j uniform jitter. Every
rank draws the *same* length-G vector from a seed shared for the step (:func:`step_seed`) and takes
its own slice ``[rank_offset, rank_offset + n)``, so no communication is needed and the union over
ranks is exactly stratified. The permutation makes a rank's slice an unbiased sample (without it
rank 0 would always get the smallest t).
"""

from __future__ import annotations

from typing import Optional

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.schedulers import Scheduler

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive steps across the seed space


def step_seed(base_seed: int, step: int, micro_step: int = 0) -> int:
    """A seed shared by every rank for one (optimizer step, micro step): pass it to :func:`sample_times`."""
    x = (int(base_seed) * _SEED_MIX + int(step) * 1_000_003 + int(micro_step)) & 0xFFFF_FFFF_FFFF_FFFF
    x ^= x >> 31
    return int(x & 0x7FFF_FFFF_FFFF_FFFF)


def max_time(cfg: DFMConfig, scheduler: Scheduler) -> float:
    """Largest t sampled: the time whose mask ratio is ``cfg.mask_ratio_eps``."""
    return float(scheduler.t_for_mask_ratio(torch.tensor(cfg.mask_ratio_eps, dtype=torch.float64)))


def stratified_uniforms(global_batch_size: int, seed: int) -> torch.Tensor:
    """[G] float64 in [0, 1), exactly one value in each stratum [k/G, (k+1)/G), in random order."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    perm = torch.randperm(global_batch_size, generator=gen, dtype=torch.float64)
    jitter = torch.rand(global_batch_size, generator=gen, dtype=torch.float64)
    # (k + jitter) / G can round up to (k + 1) / G in floating point; keep it inside stratum k.
    u = (perm + jitter) / global_batch_size
    upper = torch.nextafter((perm + 1) / global_batch_size, torch.zeros_like(u))
    return torch.minimum(u, upper)


def sample_times(num_samples: int, cfg: DFMConfig, scheduler: Scheduler, *,
                 generator: Optional[torch.Generator] = None, global_batch_size: Optional[int] = None,
                 rank_offset: int = 0, seed: Optional[int] = None,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """t [num_samples] float32 in [0, t_max] for this rank's sequences (r = 1 - kappa(t) in [eps, 1]).

    uniform: i.i.d. from ``generator`` (per-rank). stratified: this rank's slice
    ``[rank_offset, rank_offset + num_samples)`` of the global stratified vector drawn from the
    step's shared ``seed``; ``global_batch_size`` defaults to ``num_samples`` (one process). With
    more than one rank both ``seed`` and ``global_batch_size`` are required; with one process and no
    ``seed``, the seed is drawn from ``generator``.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    t_max = max_time(cfg, scheduler)
    if cfg.time_sampling == "uniform":
        gen_device = generator.device if generator is not None else None
        u = torch.rand(num_samples, generator=generator, dtype=torch.float64, device=gen_device).cpu()
    elif cfg.time_sampling == "stratified":
        g = num_samples if global_batch_size is None else int(global_batch_size)
        if not 0 <= rank_offset <= g - num_samples:
            raise ValueError(f"rank_offset {rank_offset} + num_samples {num_samples} exceeds global_batch_size {g}")
        if seed is None:
            if g != num_samples:
                raise ValueError("stratified time sampling across ranks needs the step's shared seed (see step_seed)")
            gen_device = generator.device if generator is not None else None
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
        u = stratified_uniforms(g, seed)[rank_offset: rank_offset + num_samples]
    else:
        raise ValueError(f"dfm.time_sampling: unknown mode {cfg.time_sampling!r}; expected uniform or stratified")
    return (u * t_max).to(dtype=torch.float32, device=device)
