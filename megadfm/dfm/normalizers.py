"""Loss normalisers: what the weighted CE sum of a micro-batch is divided by, one function per
``dfm.loss_normalizer`` value (docs/FORMATS.md §4).

    normalizer(loss_mask [B, L] bool, scored [B, L] bool) -> count (0-d tensor or number)

``loss_mask`` is the batch as given, before the CoDA strategies (truncation turns a row's tail
into padding but, as in CoDA, does not change the normaliser); ``scored`` marks the positions
whose CE is in the sum. ``dfm_loss`` converts the count to float32 and clamps it to >= 1 (a
micro-batch with nothing to count divides by 1). Adding one is one function plus its
``@LOSS_NORMALIZERS.register("name")``.

Like megadfm/dfm/weighting.py, this module must stay importable without torch (config imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from megadfm.registry import Registry

if TYPE_CHECKING:
    import torch

Count = Union["torch.Tensor", int]

LOSS_NORMALIZERS = Registry("dfm.loss_normalizer")


@LOSS_NORMALIZERS.register("tokens")
def real_tokens(loss_mask: torch.Tensor, scored: torch.Tensor) -> Count:
    """The real (non-padding) tokens of the batch: B*L for packed pre-training batches (CoDA, LLaDA)."""
    return loss_mask.sum()


@LOSS_NORMALIZERS.register("masked")
def scored_tokens(loss_mask: torch.Tensor, scored: torch.Tensor) -> Count:
    """The scored (masked) positions: the mean CE per masked token."""
    return scored.sum()


@LOSS_NORMALIZERS.register("all_positions")
def all_positions(loss_mask: torch.Tensor, scored: torch.Tensor) -> Count:
    """B*L, every position of the batch tensor, padding included: CoDA divides by
    ``input_ids.shape[0] * input_ids.shape[1]`` whether or not some are padding."""
    return loss_mask.numel()
