"""Loss normalisers: what the weighted CE sum of a micro-batch is divided by, one function per
``dfm.loss_normalizer`` value (docs/FORMATS.md §4).

    normalizer(loss_mask [B, L] bool, scored [B, L] bool, prompt_mask [B, L] bool or None)
        -> count (0-d tensor or number), or per-row counts [B]

``loss_mask`` is the batch as given, before the CoDA strategies (truncation turns a row's tail
into padding but, as in CoDA, does not change the normaliser); ``scored`` marks the positions
whose CE is in the sum; ``prompt_mask`` is the SFT batch key (None for pre-training batches).
``dfm_loss`` converts the count to float32 and clamps it to >= 1 (a micro-batch, or a row, with
nothing to count divides by 1); a [B] count divides each row's weighted sum by its own entry.
Adding one is one function plus its ``@LOSS_NORMALIZERS.register("name")``.

Like megadfm/dfm/weighting.py, this module must stay importable without torch (config imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from megadfm.registry import Registry

if TYPE_CHECKING:
    import torch

Count = Union["torch.Tensor", int]

LOSS_NORMALIZERS = Registry("dfm.loss_normalizer")


@LOSS_NORMALIZERS.register("tokens")
def real_tokens(loss_mask: torch.Tensor, scored: torch.Tensor, prompt_mask: Optional[torch.Tensor]) -> Count:
    """The real (non-padding) tokens of the batch: B*L for packed pre-training batches (CoDA, LLaDA)."""
    return loss_mask.sum()


@LOSS_NORMALIZERS.register("masked")
def scored_tokens(loss_mask: torch.Tensor, scored: torch.Tensor, prompt_mask: Optional[torch.Tensor]) -> Count:
    """The scored (masked) positions: the mean CE per masked token."""
    return scored.sum()


@LOSS_NORMALIZERS.register("all_positions")
def all_positions(loss_mask: torch.Tensor, scored: torch.Tensor, prompt_mask: Optional[torch.Tensor]) -> Count:
    """B*L, every position of the batch tensor, padding included: CoDA divides by
    ``input_ids.shape[0] * input_ids.shape[1]`` whether or not some are padding."""
    return loss_mask.numel()


@LOSS_NORMALIZERS.register("response_length")
def response_length(loss_mask: torch.Tensor, scored: torch.Tensor, prompt_mask: Optional[torch.Tensor]) -> Count:
    """Per row, B times the row's response tokens (real tokens not in ``prompt_mask``, the EOS tail of
    ``eos_train`` included): the loss is then the mean over rows of each row's weighted sum divided by
    its response length, LLaDA's SFT loss. With packing, a row's response length is that of all its
    examples together. SFT batches only: without ``prompt_mask`` there is no response to count."""
    if prompt_mask is None:
        raise ValueError("dfm.loss_normalizer: response_length needs batches with prompt_mask (data.format: sft)")
    response = loss_mask.bool() & ~prompt_mask.bool()
    return response.sum(dim=1) * loss_mask.shape[0]
