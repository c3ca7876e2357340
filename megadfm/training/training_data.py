"""The engine's view of the data module: this rank's train micro-batches from a consumed-samples
counter, validation passes, and a manifest of what was trained on (saved with each checkpoint)."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List

import torch

from megadfm.config import MegaDFMConfig
from megadfm.data.loader import build_blended_dataset, batches, make_train_iterator


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class TrainingData:
    def __init__(self, cfg: MegaDFMConfig, rank: int, world_size: int, consumed_samples: int):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        tcfg = cfg.training
        global_batch = tcfg.micro_batch_size * tcfg.grad_accum_steps * world_size
        self.train = make_train_iterator(cfg.data, rank, world_size, tcfg.micro_batch_size, consumed_samples,
                                         num_samples=tcfg.train_steps * global_batch)
        self._valid = None

    def next_train_batch(self, device: torch.device) -> Dict[str, Any]:
        return to_device(next(self.train), device)

    def valid_batches(self, device: torch.device, max_batches: int) -> Iterator[Dict[str, Any]]:
        if self._valid is None:
            self._valid = build_blended_dataset(self.cfg.data, "valid")
        for i, batch in enumerate(batches(self._valid, self.rank, self.world_size, self.cfg.training.micro_batch_size)):
            if i >= max_batches:
                break
            yield to_device(batch, device)

    def manifest(self) -> Dict[str, Any]:
        sources: List[Dict[str, Any]] = []
        for src in self.cfg.data.blend:
            entry: Dict[str, Any] = {"prefix": os.path.abspath(src.prefix), "weight": src.weight}
            for ext in ("idx", "bin"):
                path = f"{src.prefix}.{ext}"
                entry[f"{ext}_bytes"] = os.path.getsize(path) if os.path.isfile(path) else None
            # tools/preprocess_data.py writes {output_prefix}_summary.json next to {output_prefix}_{key}_document
            base = src.prefix.rsplit("_", 2)[0] if src.prefix.endswith("_document") else src.prefix
            summary = f"{base}_summary.json"
            entry["summary"] = summary if os.path.isfile(summary) else None
            sources.append(entry)
        return {"sources": sources, "seq_len": self.cfg.data.seq_len, "seed": self.cfg.data.seed, "split": self.cfg.data.split}
