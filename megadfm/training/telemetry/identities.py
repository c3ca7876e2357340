"""Which sequences a step saw, kept per micro-batch until the step is judged, so a spike event can
name every sequence (rank, sample index, dataset, t, mask ratio, losses) and the batch can be replayed."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.training.telemetry.reduce import GatherFn, local_gather
from megadfm.training.telemetry.sinks import json_safe

IDENTITY_FIELDS = ("sample_index", "dataset_index", "dataset_sample_index")
"""Batch keys that identify a sequence in the data (sample_index is required, the blend ones optional)."""
SEQUENCE_FIELDS = {"t": "t", "mask_ratio": "mask_ratio", "weight": "weight", "weighted_sum": "per_seq_weighted_sum",
                   "unweighted_sum": "per_seq_unweighted_sum", "masked_tokens": "per_seq_masked_count"}
"""Event field -> DFMLossOutput attribute."""


class SequenceLog:
    def __init__(self, rank: int = 0, gather: GatherFn = local_gather):
        self.rank = rank
        self._gather = gather
        self._micro: List[Dict[str, Any]] = []

    def add(self, out: DFMLossOutput, batch: Mapping[str, torch.Tensor], bucket: torch.Tensor,
            replay: Optional[dict] = None) -> None:
        if "sample_index" not in batch:
            raise KeyError("telemetry needs batch['sample_index'] to identify sequences (the data loader sets it)")
        entry: Dict[str, Any] = {"micro_batch": len(self._micro), "bucket": bucket.detach()}
        b = out.per_seq_weighted_sum.numel()
        for name in IDENTITY_FIELDS:
            value = batch.get(name)
            if value is not None:
                if value.numel() != b:
                    raise ValueError(f"batch['{name}'] has {value.numel()} elements for {b} sequences")
                entry[name] = value.detach().reshape(-1)
        for name, attr in SEQUENCE_FIELDS.items():
            entry[name] = getattr(out, attr).detach().reshape(-1)
        if replay:
            entry["replay"] = dict(replay)
        self._micro.append(entry)

    def stamp(self, step: int) -> None:
        """Give the entries recorded so far their step (a logging window spans several)."""
        for entry in self._micro:
            entry.setdefault("step", step)

    def clear(self) -> None:
        self._micro = []

    def gather(self) -> Tuple[List[dict], List[dict]]:
        """(one row per sequence, one replay entry per micro-batch) of every rank: a collective."""
        seqs, replay = [], []
        for entry in self._micro:
            cols = {k: v.tolist() for k, v in entry.items() if torch.is_tensor(v)}
            for j in range(len(cols["sample_index"])):
                row = {"step": entry.get("step"), "rank": self.rank, "micro_batch": entry["micro_batch"], "row": j}
                for k in IDENTITY_FIELDS + tuple(SEQUENCE_FIELDS) + ("bucket",):
                    if k in cols:
                        row[k] = cols[k][j]
                seqs.append(row)
            if "replay" in entry:
                replay.append({"step": entry.get("step"), "rank": self.rank, "micro_batch": entry["micro_batch"], **entry["replay"]})
        parts = self._gather((seqs, replay))
        return json_safe([r for s, _ in parts for r in s]), json_safe([r for _, p in parts for r in p])
