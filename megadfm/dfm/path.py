"""The probability path: x_t from clean x_1 and t (docs/DESIGN.md §3 "Corruption", docs/FORMATS.md §4).

Each *maskable* token is independently corrupted with probability r = 1 - kappa(t) (or in blocks,
same marginal, see :mod:`megadfm.dfm.masking`); a corrupted token is replaced by a draw from the
source:

- ``mask``: the ``<|mask|>`` token. The positions to score are exactly the masked ones (a
  visible token is known to be clean).
- ``uniform``: a token drawn uniformly from the real vocabulary ``[0, mask_token_id)`` (the
  tokenizer's entries; the mask and Qwen3's padding rows are never drawn).
- ``mixture``: uniform with probability ``mixture_uniform_fraction``, else the mask.

With a uniform or mixture source a corrupted token can look clean, so the model cannot be told
which positions are noise: every maskable position is scored (x_1-prediction cross-entropy, the
training loss of Gat et al.'s discrete flow matching). The kl weight is exact for the mask source
only; with other sources prefer ``loss_weighting: none``.

Maskable = real token (``loss_mask``) and not a prompt/source token (optional batch key
``prompt_mask``, SFT) and not a CoDA unmaskable prefix and, with the shift on, not the first token
of a segment (nothing can predict it: :func:`megadfm.dfm.shift.predictable_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.masking import corruption_pattern
from megadfm.dfm.shift import predictable_positions


@dataclass
class Corruption:
    """x_t and which positions it corrupted / scores."""

    x_t: torch.Tensor  # long [B, L]
    corrupted: torch.Tensor  # bool [B, L]: replaced by a source draw
    scored: torch.Tensor  # bool [B, L]: positions whose clean token enters the loss


def maskable_positions(loss_mask: torch.Tensor, segment_start: torch.Tensor, shift: bool,
                       prompt_mask: Optional[torch.Tensor] = None,
                       unmaskable_prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool [B, L]: positions the path may corrupt (see the module docstring)."""
    maskable = loss_mask.bool() & predictable_positions(segment_start, shift)
    if prompt_mask is not None:
        maskable = maskable & ~prompt_mask.bool()
    if unmaskable_prefix is not None:
        maskable = maskable & ~unmaskable_prefix
    return maskable


def corrupt(x1: torch.Tensor, maskable: torch.Tensor, mask_ratio: torch.Tensor, cfg: DFMConfig,
            generator: torch.Generator, mask_token_id: int, block_rows: Optional[torch.Tensor] = None) -> Corruption:
    """Sample x_t ~ p_t(. | x_1): corrupt maskable positions with per-row probability ``mask_ratio`` [B]
    (or per-token [B, L]: block diffusion's one t per block; the same random draws either way)."""
    if mask_ratio.shape not in ((x1.shape[0],), tuple(x1.shape)):
        raise ValueError(f"mask_ratio must have shape [B]={x1.shape[0]} or [B, L]={list(x1.shape)}, "
                         f"got {tuple(mask_ratio.shape)}")
    if mask_ratio.dim() == 2 and block_rows is not None and bool(block_rows.any()):
        raise ValueError("CoDA's block masking draws one ratio per row; it cannot take a per-token mask_ratio")
    if block_rows is None:
        block_rows = torch.zeros(x1.shape[0], dtype=torch.bool, device=x1.device)
    corrupted = corruption_pattern(mask_ratio, x1.shape, block_rows, cfg.block_mask_size, generator) & maskable
    if cfg.source == "mask":
        x_t = x1.masked_fill(corrupted, mask_token_id)
        return Corruption(x_t, corrupted, corrupted)
    uniform_fraction = 1.0 if cfg.source == "uniform" else cfg.mixture_uniform_fraction
    noise = torch.randint(0, mask_token_id, x1.shape, generator=generator, device=x1.device)
    use_uniform = torch.rand(x1.shape, generator=generator, device=x1.device) < uniform_fraction
    source_draw = torch.where(use_uniform, noise, torch.full_like(x1, mask_token_id))
    x_t = torch.where(corrupted, source_draw, x1)
    return Corruption(x_t, corrupted, maskable.clone())
