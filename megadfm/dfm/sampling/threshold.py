"""``method: threshold``: confidence-aware parallel decoding (Fast-dLLM), in semi-AR blocks (mask source only).

Inside the current block (``block_length``; 0 = all new positions are one block) each step draws
a token and a confidence at every masked position, exactly as the confidence sampler does
(:func:`megadfm.dfm.sampling.blocks.block_step`, ``confidence`` kind), and unmasks, per row:

- ``threshold_mode: fixed``: every position whose confidence c >= ``threshold``;
- ``threshold_mode: factor``: with c_1 >= c_2 >= ... the row's sorted confidences, the largest n
  such that c_m >= 1 - ``threshold_factor`` / (m + 1) for every m <= n, i.e.
  (m + 1)(1 - c_m) <= factor (Fast-dLLM's factor rule; the left side grows with m, so the
  passing m are a prefix). Fast-dLLM also unmasks the whole block when only its last candidate
  fails; here that candidate stays masked.

and always at least the most confident position, so every step makes progress. The confidence
is put on [0, 1] before the comparison: probability p(token) and margin p1 - p2 already are;
entropy uses exp(-H), 1 for a certain prediction (the same order as the confidence sampler's -H).
``steps`` is an upper bound per block: a block ends as soon as it has no mask left, and its
``steps``-th evaluation unmasks whatever is still masked. A row leaves the batch once it has
decoded an EOS and everything before it (megadfm/dfm/sampling/context.py).
"""

from __future__ import annotations

import torch

from megadfm.dfm.sampling.blocks import CountRule, block_step
from megadfm.dfm.sampling.context import SamplingContext
from megadfm.dfm.sampling.registry import SAMPLER_METHODS


@SAMPLER_METHODS.register("threshold")
def threshold(ctx: SamplingContext) -> None:
    if ctx.dfm.source != "mask":
        raise ValueError("the threshold sampler needs a mask source (dfm.source: mask); use method: euler")
    cfg = ctx.cfg
    rule = count_rule(cfg.threshold_mode, cfg.threshold, cfg.threshold_factor, cfg.confidence)
    for block in ctx.block_plan()[0]:
        for s in range(cfg.steps):
            last = s == cfg.steps - 1
            if not block_step(ctx, block, rule=_everything if last else rule):
                break  # no active row has a mask left in this block
        if not ctx.any_active():
            break


def unit_confidence(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """The confidence sampler's scores on [0, 1] (-inf, no candidate, maps to 0 or below)."""
    return scores.exp() if kind == "entropy" else scores


def _everything(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return candidates


def count_rule(mode: str, threshold: float, factor: float, kind: str) -> CountRule:
    """How many of a row's sorted confidences to unmask (module docstring), as a block_step rule."""
    def fixed(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        c = unit_confidence(values, kind)
        return (c >= threshold).sum(dim=1).clamp(min=1)  # sorted: the passing positions are the top ones

    def by_factor(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        c = unit_confidence(values, kind)
        m = torch.arange(1, c.shape[1] + 1, device=c.device, dtype=c.dtype)
        passes = c >= 1.0 - factor / (m + 1.0)
        passes[:, 0] = True  # the most confident always goes
        passes &= m[None, :] <= candidates[:, None]
        return passes.long().cumprod(dim=1).sum(dim=1)

    if mode == "fixed":
        return fixed
    if mode == "factor":
        return by_factor
    raise ValueError(f"threshold_mode: unknown value {mode!r}; expected fixed or factor")
