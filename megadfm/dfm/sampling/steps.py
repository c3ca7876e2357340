"""What every sampler method shares: the time grid and one decoding step (docs/FORMATS.md §4).

Hidden states come from the context's forward (megadfm/dfm/sampling/forward.py), which picks them
with :func:`megadfm.dfm.shift.gather_predictions`, the same function the loss uses, so sampling
reads the model's outputs exactly as training scored them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch

from megadfm.dfm.logits_processing import confidence_scores, greedy_with_confidence, sample_from_logits
from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.forward import Block
from megadfm.dfm.schedulers import Scheduler

if TYPE_CHECKING:  # sampler_config imports the methods (for its allowed values), so not at run time
    from megadfm.dfm.sampler_config import SamplerConfig


def time_grid(steps: int, kind: str, scheduler: Scheduler) -> torch.Tensor:
    """[steps + 1] float64 times from 0 to 1: uniform in t, or uniform in kappa (``scheduler``)."""
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return u
    if kind == "scheduler":
        grid = scheduler.t_for_kappa(u)
        grid[0], grid[-1] = 0.0, 1.0
        return grid
    raise ValueError(f"unknown time_grid {kind!r}; expected uniform or scheduler")


LOGITS_BUDGET = 1 << 24
"""fp32 logits held at once while decoding (64 MiB): positions are decoded in chunks of
LOGITS_BUDGET // vocab rows, so a large batch x block never materializes [N, 151936] logits."""


def predict_tokens(ctx: SamplingContext, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, block: Block,
                   confidence: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Draw a token for every ``targets`` position (bool [R, L] over ``ctx.x[rows]``) at times ``t`` [R].

    Returns (flat target indices [N] into the [R * L] sub-batch, tokens [N], confidence scores [N]
    or None). One model evaluation through ``ctx.forward`` (the cache seam, ``block`` is passed on);
    the head, the filters and the draw run in chunks (:data:`LOGITS_BUDGET`).
    """
    hidden_sel, target = ctx.forward.hidden_for(ctx.x, rows, t, targets, block)
    token, score = draw_tokens(ctx.model, hidden_sel, ctx.cfg, ctx.generator, confidence)
    return target, token, score


def draw_tokens(model: torch.nn.Module, hidden: torch.Tensor, cfg: SamplerConfig, generator: torch.Generator,
                confidence: Optional[str] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Tokens [N] (and confidence scores [N] if ``confidence``) drawn from the head on ``hidden`` [N, H].

    Ids above the mask are Qwen3's never-trained padding rows (docs/DESIGN.md §3) and, like the
    mask, are never drawn.
    """
    chunk = max(1, LOGITS_BUDGET // model.cfg.vocab_size)
    plain_greedy = cfg.temperature == 0.0 and cfg.top_k == 0 and cfg.top_p == 1.0
    tokens, scores = [], []
    for lo in range(0, hidden.shape[0], chunk):
        logits = model.logits(hidden[lo: lo + chunk]).float()
        logits[:, model.cfg.mask_token_id + 1:] = float("-inf")
        if plain_greedy:  # no [N, V] softmax (greedy_with_confidence)
            drawn, score = greedy_with_confidence(logits, confidence)
        else:
            drawn, probs = sample_from_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
            score = None if confidence is None else confidence_scores(probs, drawn, confidence)
        tokens.append(drawn)
        if score is not None:
            scores.append(score)
    token = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long, device=hidden.device)
    if confidence is None:
        return token, None
    return token, torch.cat(scores) if scores else hidden.new_zeros(0, dtype=torch.float32)


def write_rows(ctx: SamplingContext, rows: torch.Tensor, flat_index: torch.Tensor, tokens: torch.Tensor) -> None:
    """Write ``tokens`` at flat positions ``flat_index`` of the [R * L] sub-batch ``ctx.x[rows]`` (in place)."""
    sub = ctx.x.index_select(0, rows)
    sub.view(-1).index_copy_(0, flat_index, tokens.to(sub.dtype))
    ctx.x.index_copy_(0, rows, sub)
