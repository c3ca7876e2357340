"""Per-bucket sums of the micro-batches since the last reduction, in one flat float64 vector.

Every statistic is a sum (see buckets.py), so micro-batches, steps and ranks combine by addition and
the whole state crosses ranks in one all-reduce. The accumulator never talks to other ranks itself:
:meth:`reduce` calls the function it was given (``reduce.all_reduce_sum`` in training).
"""

from __future__ import annotations

from typing import Optional

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.training.telemetry.buckets import Buckets, per_sequence_rows
from megadfm.training.telemetry.response_lengths import add as add_response_lengths
from megadfm.training.telemetry.reduce import ReduceFn, local_sum


class BucketAccumulator:
    def __init__(self, buckets: Buckets, reduce: ReduceFn = local_sum):
        self.buckets = buckets
        self._reduce = reduce
        self._pending: Optional[torch.Tensor] = None
        self.num_reductions = 0
        """All-reduces so far (tests check the communication budget with it)."""

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    def add(self, out: DFMLossOutput, response_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Add one micro-batch's per-sequence statistics (and, for an SFT batch, its examples' response
        lengths); returns each sequence's bucket index. No communication."""
        b = out.per_seq_weighted_sum.numel()
        for name in ("mask_ratio", "t", "weight", "per_seq_unweighted_sum", "per_seq_masked_count"):
            n = getattr(out, name).numel()
            if n != b:
                raise ValueError(f"DFMLossOutput.{name} has {n} elements, per_seq_weighted_sum has {b} (one value per sequence)")
        device = out.per_seq_weighted_sum.device
        if self._pending is None:
            self._pending = self.buckets.zeros(device)
        rows = per_sequence_rows(out.mask_ratio, out.t, out.weight, out.per_seq_weighted_sum, out.per_seq_unweighted_sum,
                                 out.per_seq_masked_count)
        index = self.buckets.index(out.mask_ratio.reshape(-1))
        self.buckets.table(self._pending).index_add_(0, index.to(device), rows.to(device))
        extras = self.buckets.extras(self._pending)
        extras[0] += torch.as_tensor(out.normalizer, dtype=torch.float64, device=device).sum()
        extras[1] += 1
        if response_lengths is not None:
            add_response_lengths(self.buckets.response_slot(self._pending), response_lengths)
        return index

    def reduce(self) -> torch.Tensor:
        """Sum the pending vector over ranks (one collective, also when nothing is pending) and start afresh."""
        vec = self._pending if self._pending is not None else self.buckets.zeros("cpu")
        vec = self._reduce(vec)
        self.num_reductions += 1
        self._pending = None
        return vec.to("cpu")
