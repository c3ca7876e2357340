"""The DFM training objective (docs/DESIGN.md §3 "Loss", docs/FORMATS.md §4).

    loss = sum_b w(t_b) * sum_{i scored in b} CE_i / normalizer

CE_i = -log p_theta(x_1^i | x_t, t) at the scored positions (the masked ones for a mask source),
computed through ``model.token_losses`` on the gathered hidden states only: full
[B*L, vocab] logits are never built here. The hidden state that predicts position i is chosen by
:func:`megadfm.dfm.shift.gather_predictions` (the one place that knows the shift convention).

w(t) and the normalizer are registered functions selected by the config, not cases of this module:

- ``loss_weighting``: a weighting of megadfm/dfm/weighting.py (``kl``, the default,
  kappa'(t) / (1 - kappa(t)); ``inverse_mask_ratio``, 1/r; ``none``, w = 1) or a preset of
  megadfm/dfm/loss_presets.py that also fixes the normalizer.
- ``loss_normalizer``: a normalizer of megadfm/dfm/normalizers.py (``tokens``, the default: the
  real tokens of the batch as given, B*L for packed pre-training batches, CoDA truncation does not
  change it, as in CoDA; ``masked``: the scored positions; ``all_positions``: B*L, padding included).

The ``coda`` preset is CoDA's objective, reproduced exactly: w = 1/sigma with sigma = the mask
ratio r, and the sum divided by B*L, *all* positions of the batch tensor (CoDA divides by
``input_ids.shape[0] * input_ids.shape[1]`` whether or not some are padding)::

    loss = sum_{b, i} CE(logits[b, i-1], x_1[b, i]) * masked[b, i] / sigma_b  /  (B * L)

which is this module's formula with w = inverse_mask_ratio, shift on, normalizer all_positions.
(CoDA also masks the first token of a row but can never score it; megadfm never masks it, see
shift.py.)

SFT batches (megadfm/data/sft.py) may carry ``prompt_mask`` (never masked, never scored) and
``loss_weights`` [B, L], a per-token multiplier of CE_i by its target position (the one per-token
hook; SFT's EOS down-weighting uses it). The ``response_length`` normalizer divides row by row.

The unweighted sums and counts are always returned for telemetry (per-mask-ratio buckets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss_presets import resolve
from megadfm.dfm.masking import draw_strategies
from megadfm.dfm.normalizers import LOSS_NORMALIZERS
from megadfm.dfm.path import corrupt, maskable_positions
from megadfm.dfm.schedulers import Scheduler
from megadfm.dfm.shift import gather_predictions, segment_starts
from megadfm.dfm.weighting import LOSS_WEIGHTINGS
from megadfm.tokens import PAD_TOKEN_ID


@dataclass
class DFMLossOutput:
    """Loss and per-sequence statistics of one micro-batch (docs/INTERFACES.md)."""

    loss: torch.Tensor  # scalar, differentiable
    per_seq_weighted_sum: torch.Tensor  # [B] sum over scored positions of w(t) * CE (* loss_weights if given; detached)
    per_seq_unweighted_sum: torch.Tensor  # [B] sum over scored positions of CE (detached)
    per_seq_masked_count: torch.Tensor  # [B] long: scored positions
    t: torch.Tensor  # [B]
    mask_ratio: torch.Tensor  # [B] r = 1 - kappa(t)
    weight: torch.Tensor  # [B] w(t) as applied
    normalizer: torch.Tensor  # scalar float: sum(per_seq_weighted_sum) / normalizer is the loss (a per-row divisor such as
    # response_length's is folded into per_seq_weighted_sum, leaving B here)
    x_t: torch.Tensor  # [B, L] the corrupted input fed to the model (debugging)
    masked: torch.Tensor  # [B, L] bool: scored positions (debugging)
    truncated_rows: torch.Tensor  # [B] bool: rows shortened by the CoDA truncation strategy


def loss_weight(t: torch.Tensor, mask_ratio: torch.Tensor, cfg: DFMConfig, scheduler: Scheduler) -> torch.Tensor:
    """w(t) [B] of the weighting ``cfg.loss_weighting`` selects (directly or through its preset)."""
    weighting, _ = resolve(cfg.loss_weighting, cfg.loss_normalizer)
    return LOSS_WEIGHTINGS.get(weighting)(t, mask_ratio, scheduler)


def loss_normalizer(loss_mask: torch.Tensor, scored: torch.Tensor, cfg: DFMConfig,
                    prompt_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float32 divisor of the weighted sum, >= 1: a scalar, or [B] per-row divisors (``response_length``);
    see megadfm/dfm/normalizers.py."""
    _, normalizer = resolve(cfg.loss_weighting, cfg.loss_normalizer)
    count = LOSS_NORMALIZERS.get(normalizer)(loss_mask, scored, prompt_mask)
    return torch.as_tensor(count, dtype=torch.float32, device=scored.device).clamp(min=1.0)


def scored_token_losses(model: torch.nn.Module, hidden: torch.Tensor, x1: torch.Tensor, scored: torch.Tensor,
                        segment_start: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE [N] of the clean tokens at ``scored`` positions, and the row of each [N].

    Shared by the training loss and evaluation so both apply the shift identically.
    """
    hidden_sel, targets, target = _scored_predictions(hidden, x1, scored, segment_start, shift)
    row = target // x1.shape[1]
    if row.numel() == 0:  # nothing masked (possible for tiny r): no CE, not an error
        return hidden_sel.new_zeros(0, dtype=torch.float32), row
    return model.token_losses(hidden_sel, targets).float(), row


def _scored_predictions(hidden, x1, scored, segment_start, shift):
    """(hidden states that predict the scored tokens [N, H], those clean tokens [N], their flat positions [N])."""
    hidden_sel, target = gather_predictions(hidden, scored, segment_start, shift)
    return hidden_sel, x1.reshape(-1).index_select(0, target), target


def scored_weighted_loss(model: torch.nn.Module, hidden: torch.Tensor, x1: torch.Tensor, scored: torch.Tensor,
                         segment_start: torch.Tensor, shift: bool, row_weights: torch.Tensor,
                         position_weights: Optional[torch.Tensor] = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum over scored tokens of row_weights[row] * position_weights[position] * CE, per-token CE [N]
    detached, row [N]): the training form of :func:`scored_token_losses`, with the same gather (hence the
    same shift). ``position_weights`` [B, L] (optional batch key ``loss_weights``) is indexed by the
    *target* position; its scored entries are ``position_weights[scored]`` (row-major, the order of CE)."""
    hidden_sel, targets, target = _scored_predictions(hidden, x1, scored, segment_start, shift)
    return weighted_prediction_loss(model, hidden_sel, targets, target, x1.shape[1], row_weights, position_weights)


def weighted_prediction_loss(model: torch.nn.Module, hidden_sel: torch.Tensor, targets: torch.Tensor, target: torch.Tensor,
                             seq_len: int, row_weights: torch.Tensor, position_weights: Optional[torch.Tensor] = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`scored_weighted_loss` once the predicting hidden states [N, H], their clean tokens [N] and the flat
    target positions [N] (into [B * seq_len]) are known (block diffusion picks them from two streams)."""
    row = target // seq_len
    if row.numel() == 0:  # nothing masked (possible for tiny r): no CE, not an error
        return hidden_sel.new_zeros((), dtype=torch.float32), hidden_sel.new_zeros(0, dtype=torch.float32), row
    token_weights = row_weights.index_select(0, row)
    if position_weights is not None:
        token_weights = token_weights * position_weights.reshape(-1).to(token_weights.dtype).index_select(0, target)
    loss, ce = model.weighted_token_loss(hidden_sel, targets, token_weights)
    return loss, ce.float(), row


def check_loss_inputs(model: torch.nn.Module, t: torch.Tensor, bsz: int, mask_token_id: Optional[int]) -> int:
    """Refuse a t that is not one time in [0, 1] per row; return the mask id (default: the model's)."""
    if t.shape != (bsz,):
        raise ValueError(f"t must have shape [B]={bsz}, got {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must lie in [0, 1] (0 = all masked, 1 = clean)")
    return int(model.cfg.mask_token_id) if mask_token_id is None else int(mask_token_id)


def dfm_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], t: torch.Tensor, cfg: DFMConfig,
             scheduler: Scheduler, generator: torch.Generator, *, mask_token_id: Optional[int] = None,
             pad_token_id: int = PAD_TOKEN_ID) -> DFMLossOutput:
    """Corrupt ``batch`` at times ``t`` [B], run ``model`` and return the weighted masked CE.

    ``model`` follows docs/INTERFACES.md (``model(input_ids, t=..., position_ids=..., cu_seqlens=...,
    max_seqlen=...)`` and ``model.token_losses``). ``mask_token_id`` defaults to the model's
    ``cfg.mask_token_id``. Optional batch keys (SFT, megadfm/data/sft.py): ``prompt_mask`` [B, L] marks
    tokens never masked nor scored; ``loss_weights`` [B, L] float multiplies the CE of the token at each
    position (SFT's EOS down-weighting).
    All randomness comes from ``generator`` (on the batch's device).
    """
    x1_in = batch["input_ids"]
    bsz, seq_len = x1_in.shape
    mask_token_id = check_loss_inputs(model, t, bsz, mask_token_id)

    draw = draw_strategies(batch, cfg, generator, pad_token_id)
    work = draw.batch
    x1 = work["input_ids"]
    starts = segment_starts(work["cu_seqlens"], bsz, seq_len)
    maskable = maskable_positions(work["loss_mask"], starts, cfg.shift_logits, work.get("prompt_mask"), draw.unmaskable_prefix)
    mask_ratio = scheduler.mask_ratio(t.double()).to(torch.float32)
    path = corrupt(x1, maskable, mask_ratio, cfg, generator, mask_token_id, draw.block_rows)

    hidden = model(path.x_t, t=t, position_ids=work["position_ids"], cu_seqlens=work["cu_seqlens"],
                   max_seqlen=work["max_seqlen"])
    weight = loss_weight(t.double(), mask_ratio.double(), cfg, scheduler).to(torch.float32)
    # The batch as given, not work["loss_mask"]: CoDA truncation must not change the normalizer.
    normalizer = loss_normalizer(batch["loss_mask"], path.scored, cfg, batch.get("prompt_mask"))
    position_weights = work.get("loss_weights")
    # sum_b w(t_b) * sum_{i in b} CE_i / normalizer as one weighted sum over tokens: the head computes its
    # gradients in forward (model.weighted_token_loss), which needs each token's weight up front.
    weighted_ce, ce, row = scored_weighted_loss(model, hidden, x1, path.scored, starts, cfg.shift_logits, weight / normalizer,
                                                position_weights)
    unweighted = torch.zeros(bsz, dtype=torch.float32, device=x1.device).index_add(0, row, ce)
    # telemetry's weighted sums follow the loss: position weights included (scored entries in CE order)
    position_weighted = unweighted if position_weights is None else torch.zeros_like(unweighted).index_add(
        0, row, ce * position_weights[path.scored].float())
    weighted = weight * position_weighted
    if normalizer.dim() == 1:
        # A per-row divisor (response_length) is folded into each row's weighted sum, leaving the scalar B:
        # telemetry pools sum(weighted) / sum(normalizer) over rows, micro-batches and ranks, which then
        # equals the loss the optimiser sees (with [B] divisors it would be a different, pooled ratio).
        weighted = weighted * (bsz / normalizer)
        normalizer = torch.tensor(float(bsz), dtype=torch.float32, device=x1.device)
    count = path.scored.sum(dim=1)
    # hidden.sum() * 0 keeps every parameter in the graph when nothing is scored (a DDP/ZeRO
    # backward must still visit them); it adds exactly zero otherwise.
    loss = weighted_ce + hidden.sum() * 0.0
    return DFMLossOutput(
        loss=loss,
        per_seq_weighted_sum=weighted.detach(),
        per_seq_unweighted_sum=unweighted.detach(),
        per_seq_masked_count=count,
        t=t.detach(),
        mask_ratio=mask_ratio,
        weight=weight,
        normalizer=normalizer,
        x_t=path.x_t,
        masked=path.scored,
        truncated_rows=draw.truncated_rows,
    )
