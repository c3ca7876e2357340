"""Generation with a DFM model: :func:`generate`, with the method ``SamplerConfig.method`` selects.

Every method integrates from t = 0 (every new position masked) to t = 1 (clean) and never touches
a prompt or suffix position: only the new positions of
:class:`~megadfm.dfm.layout.GenerationLayout` are ever written. The methods are registered, one
file each, in megadfm/dfm/sampling/ (``euler``: the exact-rate Euler DFM solver; ``confidence``:
confidence-based unmasking, optionally in semi-AR blocks; ``threshold``: Fast-dLLM's
confidence-threshold parallel decoding in blocks); docs/FORMATS.md §4 has the mathematics.

Every method reaches the model through one forward object, built here from ``cfg.cache``:
``none`` (megadfm/dfm/sampling/forward.py, the exact sampler) or the approximate ``prefix`` /
``dual`` block caches (megadfm/dfm/sampling/cached_forward.py, whose docstring has the rules).
A row that has decoded an EOS (and everything before it) stops being run. The result's throughput counts new tokens only (prompt, suffix, EOS
and what follows it excluded) and splits forward passes into full-sequence and block-only ones.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.layout import GenerationLayout, build_layout
from megadfm.dfm.sampler_config import BLOCK_METHODS, SampleResult, SamplerConfig
from megadfm.dfm.sampling import SAMPLER_METHODS
from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.block_causal_forward import BlockCacheForward, BlockCausalForward
from megadfm.dfm.sampling.cached_forward import CachedForward
from megadfm.dfm.sampling.forward import FullSequenceForward, ModelForward
from megadfm.dfm.sampling.steps import time_grid
from megadfm.dfm.schedulers import Scheduler, make_scheduler
from megadfm.tokens import PAD_TOKEN_ID

__all__ = ["generate", "time_grid"]


def _initial_state(layout: GenerationLayout, dfm: DFMConfig, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    x = layout.batch["input_ids"].clone()
    if dfm.source == "mask":
        return x
    # Non-mask sources start the new positions from a source draw (uniform real token or mask).
    fraction = 1.0 if dfm.source == "uniform" else dfm.mixture_uniform_fraction
    noise = torch.randint(0, mask_id, x.shape, generator=generator, device=x.device)
    use_uniform = torch.rand(x.shape, generator=generator, device=x.device) < fraction
    return torch.where(layout.generate & use_uniform, noise, x)


def make_forward(model: torch.nn.Module, layout: GenerationLayout, dfm: DFMConfig, cache: str,
                 method: str, block_length: int = 0) -> ModelForward:
    """The model seam of ``SamplerConfig.cache``: none (exact, full forwards) or the prefix / dual block caches;
    for a block-diffusion model (``dfm.mode: block``) the two-stream forward, or its exact prefix cache."""
    shift = dfm.shift_logits
    if dfm.mode == "block":
        if block_length not in (0, dfm.block_size):
            raise ValueError(f"block_length: a block-diffusion model decodes in its own blocks of dfm.block_size = "
                             f"{dfm.block_size}; leave block_length 0 (or {dfm.block_size}), got {block_length}")
        if method not in BLOCK_METHODS:
            raise ValueError(f"method: {method} decodes every new position at once; a block-diffusion model "
                             f"(dfm.mode: block) decodes block by block: use one of {', '.join(BLOCK_METHODS)}")
        if cache == "dual":
            raise ValueError("cache: dual caches what follows the block, which a block-diffusion model never attends "
                             "to; use cache: prefix (exact in block mode) or none")
        forward = BlockCacheForward if cache == "prefix" else BlockCausalForward
        return forward(model, layout, shift, dfm.block_size)
    if cache == "none":
        return FullSequenceForward(model, layout, shift)
    return CachedForward(model, layout, shift, cache)


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: Union[int, Sequence[int]],
             cfg: SamplerConfig,
             dfm: DFMConfig, scheduler: Optional[Scheduler] = None, *,
             suffixes: Optional[Sequence[Sequence[int]]] = None, mask_token_id: Optional[int] = None,
             pad_token_id: int = PAD_TOKEN_ID, generator: Optional[torch.Generator] = None) -> SampleResult:
    """Generate ``max_new_tokens`` (one int, or one per row) after each prompt (before each suffix, for infill).

    ``dfm`` must be the training run's DFMConfig (shift convention, scheduler, source).
    ``mask_token_id`` defaults to ``model.cfg.mask_token_id``. Deterministic given ``generator``
    (default: seeded from ``cfg.seed`` on the model's device).
    """
    method = SAMPLER_METHODS.get(cfg.method)
    scheduler = scheduler or make_scheduler(dfm)
    mask_id = int(model.cfg.mask_token_id) if mask_token_id is None else int(mask_token_id)
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    layout = build_layout(prompts, max_new_tokens, mask_id, pad_token_id, dfm.shift_logits, suffixes, device)
    x = _initial_state(layout, dfm, mask_id, generator)

    ctx = SamplingContext(model, x, layout, cfg, dfm, scheduler, mask_id, generator,
                          forward=make_forward(model, layout, dfm, cfg.cache, cfg.method, cfg.block_length))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    method(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    # Only an early EOS stop leaves masks (after the EOS); they become EOS so no mask is returned.
    decoded = int((layout.generate & (x != mask_id)).sum())
    fill = cfg.eos_token_id if cfg.eos_token_id is not None else pad_token_id
    x = torch.where(layout.generate & (x == mask_id), torch.full_like(x, fill), x)
    tokens, finished = [], []
    for b in range(x.shape[0]):
        start_col = int(layout.gen_start[b])
        row = x[b, start_col: start_col + int(layout.new_tokens[b])].tolist()
        ended = cfg.eos_token_id is not None and cfg.eos_token_id in row
        tokens.append(row[: row.index(cfg.eos_token_id)] if ended else row)
        finished.append(ended)
    new_tokens = sum(len(row) for row in tokens)
    counts = ctx.forward.counts
    return SampleResult(tokens=tokens, sequences=x.cpu(), finished=finished, steps=ctx.steps, nfe_full=counts.nfe_full,
                        nfe_block=counts.nfe_block, forward_rows=counts.rows, new_tokens=new_tokens,
                        decoded_positions=decoded, seconds=seconds, tokens_per_second=new_tokens / max(seconds, 1e-9))
