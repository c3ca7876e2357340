"""Feed Telemetry the typed objects the trainer feeds it, from plain per-sequence tensors."""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.training.telemetry.identities import IDENTITY_FIELDS

_STATS = ("per_seq_weighted_sum", "per_seq_unweighted_sum", "per_seq_masked_count", "t", "mask_ratio", "weight")


def loss_output(sums: Mapping[str, torch.Tensor]) -> DFMLossOutput:
    """A DFMLossOutput carrying ``sums`` (per-sequence tensors plus a float ``normalizer``)."""
    b = sums["per_seq_weighted_sum"].numel()
    return DFMLossOutput(loss=torch.tensor(0.0), normalizer=torch.as_tensor(float(sums["normalizer"]), dtype=torch.float64),
                         x_t=torch.zeros(b, 0, dtype=torch.long), masked=torch.zeros(b, 0, dtype=torch.bool),
                         truncated_rows=torch.zeros(b, dtype=torch.bool), **{k: sums[k] for k in _STATS})


def record(tel, sums: Mapping[str, torch.Tensor], replay: Optional[dict] = None) -> None:
    """tel.record(out, batch) for per-sequence sums that also carry the batch's identity fields."""
    tel.record(loss_output(sums), {k: sums[k] for k in IDENTITY_FIELDS if k in sums}, replay)
