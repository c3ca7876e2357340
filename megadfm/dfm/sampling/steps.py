"""What every sampler method shares: the time grid and one decoding step (docs/FORMATS.md §4).

Hidden states are picked by :func:`megadfm.dfm.shift.gather_predictions`, the same function the
loss uses, so sampling reads the model's outputs exactly as training scored them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch

from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.logits_processing import confidence_scores, sample_from_logits
from megadfm.dfm.schedulers import Scheduler
from megadfm.dfm.shift import gather_predictions

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


def predict_tokens(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, layout: GenerationLayout,
                   targets: torch.Tensor, shift: bool, cfg: SamplerConfig, generator: torch.Generator,
                   confidence: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Draw a token for every ``targets`` [B, L] position of ``x`` at times ``t`` [B].

    Returns (flat target indices [N], tokens [N], confidence scores [N] or None). One model forward;
    the head, the filters and the draw run in chunks (:data:`LOGITS_BUDGET`). Ids above the mask
    are Qwen3's never-trained padding rows (docs/DESIGN.md §3) and, like the mask, are never drawn.
    """
    batch = layout.batch
    hidden = model(x, t=t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
    hidden_sel, target = gather_predictions(hidden, targets, layout.segment_start, shift)
    chunk = max(1, LOGITS_BUDGET // model.cfg.vocab_size)
    tokens, scores = [], []
    for lo in range(0, hidden_sel.shape[0], chunk):
        logits = model.logits(hidden_sel[lo: lo + chunk]).float()
        logits[:, model.cfg.mask_token_id + 1:] = float("-inf")
        drawn, probs = sample_from_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
        tokens.append(drawn)
        if confidence is not None:
            scores.append(confidence_scores(probs, drawn, confidence))
    token = torch.cat(tokens) if tokens else target.new_zeros(0)
    score = (torch.cat(scores) if scores else hidden_sel.new_zeros(0)) if confidence is not None else None
    return target, token, score


def write_tokens(x: torch.Tensor, flat_index: torch.Tensor, tokens: torch.Tensor) -> None:
    """Write ``tokens`` into ``x`` at flat positions ``flat_index`` (in place)."""
    x.view(-1).index_copy_(0, flat_index, tokens.to(x.dtype))
