"""Loss weightings w(t): one function per ``dfm.loss_weighting`` value (docs/FORMATS.md §4).

A weighting maps the batch's times and mask ratios to one weight per sequence::

    weighting(t [B] float64, mask_ratio [B] float64, scheduler) -> w [B]

(``dfm_loss`` casts the result to float32). Adding one is one function plus its
``@LOSS_WEIGHTINGS.register("name")``; the value is then accepted by ``DFMConfig.loss_weighting``.
A weighting that must come with a particular normaliser (as CoDA's does) is a preset:
megadfm/dfm/loss_presets.py.

This module must not import torch or the model: ``megadfm.dfm.config`` imports it to learn the
allowed values, and config modules stay light. The functions only call tensor methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from megadfm.registry import Registry

if TYPE_CHECKING:
    import torch

    from megadfm.dfm.schedulers import Scheduler

LOSS_WEIGHTINGS = Registry("dfm.loss_weighting")


@LOSS_WEIGHTINGS.register("kl")
def kl(t: torch.Tensor, mask_ratio: torch.Tensor, scheduler: Scheduler) -> torch.Tensor:
    """The generalized-KL weight of a mask source, kappa'(t) / (1 - kappa(t)) (1/r for linear)."""
    return scheduler.weight(t)


@LOSS_WEIGHTINGS.register("inverse_mask_ratio")
def inverse_mask_ratio(t: torch.Tensor, mask_ratio: torch.Tensor, scheduler: Scheduler) -> torch.Tensor:
    """1/r, whatever the scheduler: CoDA's 1/sigma (sigma is the mask ratio). Equals kl for linear."""
    return 1.0 / mask_ratio


@LOSS_WEIGHTINGS.register("none")
def unweighted(t: torch.Tensor, mask_ratio: torch.Tensor, scheduler: Scheduler) -> torch.Tensor:
    """w = 1: plain masked cross-entropy."""
    return t.new_ones(t.shape)
