"""The data module's entry points for the engine: blended packed datasets and per-rank batch iterators.

Position and rank assignment (Megatron's ``MegatronPretrainingSampler``): the only position is
``consumed_samples``, the number of blended samples the whole job has consumed (all ranks, all
micro-batches). Each micro-step takes the next ``micro_batch_size * world_size`` samples and
rank r gets the contiguous slice ``[start + r*mbs, start + (r+1)*mbs)``. A global batch of
``mbs * grad_accum * world_size`` samples is ``grad_accum`` such micro-steps, so sample s of
global batch g lives on rank ``(s % (mbs*world_size)) // mbs``. The sample *sequence* does not
depend on world size or accumulation, so resuming at step k with
``consumed_samples = k * global_batch_size`` (any factorization of the global batch) continues
exactly with the samples an uninterrupted run would have seen.

Engine usage::

    train = make_train_iterator(cfg.data, rank, world_size, micro_batch_size,
                                consumed_samples=step * global_batch_size,
                                num_samples=train_steps * global_batch_size)
    batch = next(train)            # megadfm/data/batch.py contract, micro_batch_size rows
    valid = build_blended_dataset(cfg.data, "valid")             # once
    for batch in batches(valid, rank, world_size, micro_batch_size): ...   # one validation pass

Every rank must call the builders (collective when torch.distributed is initialized: rank 0
builds missing index caches while the others wait).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from megadfm.data.batch import position_ids_from_segments, segments_to_cu_seqlens
from megadfm.data.blending import (BlendedDataset, cached_blend_index, effective_mix, epochs_needed, log_mix,
                                   normalize_weights, samples_per_source)
from megadfm.data.config import DataConfig
from megadfm.data.indexed import IndexedDataset
from megadfm.data.packing import SPLIT_NAMES, DataError, PackedDataset, split_ranges
from megadfm.data.sft import SFTDataset, build_sft_rows

logger = logging.getLogger(__name__)


def collate_samples(samples: Sequence[Dict[str, object]]) -> Dict[str, torch.Tensor]:
    """Packed (or SFT) samples -> the batch contract of megadfm/data/batch.py; SFT samples add
    ``prompt_mask`` [B, L] bool, ``response_lengths`` [examples in the batch] int64 and, with an EOS
    loss weight, ``loss_weights`` [B, L] float32."""
    seq_len = len(samples[0]["tokens"])
    segments = [s["segment_lengths"] for s in samples]
    cu_seqlens = segments_to_cu_seqlens(segments, seq_len)
    num_tokens = torch.tensor([s["num_tokens"] for s in samples], dtype=torch.long)
    batch = {
        "input_ids": torch.from_numpy(np.stack([s["tokens"] for s in samples])).long(),
        "position_ids": position_ids_from_segments(segments),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
        "loss_mask": torch.arange(seq_len)[None, :] < num_tokens[:, None],
        "sample_index": torch.tensor([s["sample_index"] for s in samples], dtype=torch.long),
        "dataset_index": torch.tensor([s["dataset_index"] for s in samples], dtype=torch.long),
        "dataset_sample_index": torch.tensor([s["dataset_sample_index"] for s in samples], dtype=torch.long),
    }
    for key in ("prompt_mask", "loss_weights"):  # SFT samples (megadfm/data/sft.py)
        if key in samples[0]:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    if "response_lengths" in samples[0]:  # every example of the micro-batch, row by row (telemetry)
        batch["response_lengths"] = torch.tensor([n for s in samples for n in s["response_lengths"]], dtype=torch.long)
    return batch


def resolve_cache_dir(cfg: DataConfig) -> str:
    if cfg.cache_dir:
        return cfg.cache_dir
    if not cfg.blend:
        raise DataError("data.blend is empty: name at least one indexed dataset prefix")
    return os.path.join(os.path.dirname(os.path.abspath(cfg.blend[0].prefix)), ".megadfm_cache")


def build_blended_dataset(cfg: DataConfig, split: str, num_samples: Optional[int] = None) -> BlendedDataset:
    """The blend of ``split`` ("train", "valid" or "test") over ``num_samples`` samples.

    ``num_samples=None`` means the largest number the blend can draw without repeating any
    source (one validation pass). The effective mix is logged and kept as ``dataset.mix``.
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
    if not cfg.blend:
        raise DataError("data.blend is empty: name at least one indexed dataset prefix")
    cache_dir = resolve_cache_dir(cfg)
    weights = [source.weight for source in cfg.blend]
    indexed = [IndexedDataset(source.prefix) for source in cfg.blend]
    ranges = [split_ranges(ix.num_documents, cfg.split)[SPLIT_NAMES.index(split)] for ix in indexed]
    per_epoch = []
    sft_rows = []  # data.format: sft, the grouping of each source's examples into rows (megadfm/data/sft.py)
    for ix, (a, b) in zip(indexed, ranges):
        if cfg.format == "sft":
            sft_rows.append(build_sft_rows(ix, split, (a, b), cfg, cache_dir))
            per_epoch.append(sft_rows[-1].samples_per_epoch)
            continue
        tokens = int(ix.document_lengths()[a:b].sum())
        if tokens == 0:
            raise DataError(f"{ix.prefix}: the {split} split (documents [{a}, {b}) of {ix.num_documents}, "
                            f"data.split={cfg.split}) has no tokens")
        per_epoch.append(math.ceil(tokens / cfg.seq_len))
    index = _blend_index(weights, per_epoch, num_samples, cache_dir)
    drawn = samples_per_source(index["dataset_index"], len(indexed))
    epochs = []
    for ix, n, asked, w in zip(indexed, per_epoch, drawn.tolist(), normalize_weights(weights)):
        epochs.append(epochs_needed(asked, n))
        if asked > n:
            message = (f"{ix.prefix}: the blend draws {asked} {split} samples (weight {w:.4f} of {len(index['dataset_index'])}) "
                       f"but one epoch holds {n} samples of {cfg.seq_len} tokens")
            if cfg.on_exhausted == "error":
                raise DataError(message + "; set data.on_exhausted: repeat, lower its weight or add data")
            logger.warning("%s: repeating it for %d epochs (data.on_exhausted: repeat)", message, epochs[-1])
    if cfg.format == "sft":
        datasets = [SFTDataset(rows, e, cfg, cache_dir) for rows, e in zip(sft_rows, epochs)]
    else:
        datasets = [PackedDataset(ix, split, r, cfg.seq_len, cfg.seed, e, cache_dir, cfg.pad_token_id)
                    for ix, r, e in zip(indexed, ranges, epochs)]
    blended = BlendedDataset(datasets, index)
    blended.mix = effective_mix(datasets, weights, index["dataset_index"])
    log_mix(blended.mix, len(blended), cfg.seq_len)
    return blended


def _blend_index(weights: List[float], per_epoch: List[int], num_samples: Optional[int], cache_dir: str) -> Dict[str, np.ndarray]:
    if num_samples is not None:
        if num_samples <= 0:
            raise DataError(f"num_samples must be positive, got {num_samples}")
        return cached_blend_index(weights, num_samples, cache_dir)
    # one pass without repeats: each source is within one sample of w_d * s, so start from the
    # bound min_d n_d / w_d and cut at the first sample that would start a second epoch
    w = normalize_weights(weights)
    bound = max(1, int(min(n / x for n, x in zip(per_epoch, w))))
    index = cached_blend_index(weights, bound, cache_dir)
    over = index["dataset_sample_index"] >= np.asarray(per_epoch)[index["dataset_index"]]
    if over.any():
        end = int(np.argmax(over))
        index = {k: v[:end] for k, v in index.items()}
    return index


class RankBatches:
    """Batch sampler: the global sample ids of this rank's micro-batches from ``consumed_samples`` on."""

    def __init__(self, total: int, rank: int, world_size: int, micro_batch_size: int, consumed_samples: int):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside [0, world_size={world_size})")
        if micro_batch_size <= 0:
            raise DataError(f"micro_batch_size must be positive, got {micro_batch_size}")
        step = micro_batch_size * world_size
        if consumed_samples < 0 or consumed_samples % step:
            raise DataError(f"consumed_samples={consumed_samples} must be a non-negative multiple of "
                            f"micro_batch_size*world_size={step}")
        if consumed_samples > total:
            raise DataError(f"consumed_samples={consumed_samples} is past the {total} samples of the dataset")
        self.total, self.rank, self.mbs, self.step, self.consumed = total, rank, micro_batch_size, step, consumed_samples

    def __iter__(self) -> Iterator[List[int]]:
        for start in range(self.consumed, self.total - self.step + 1, self.step):
            first = start + self.rank * self.mbs
            yield list(range(first, first + self.mbs))

    def __len__(self) -> int:
        return (self.total - self.consumed) // self.step


def batches(dataset: BlendedDataset, rank: int, world_size: int, micro_batch_size: int, consumed_samples: int = 0,
            num_workers: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
    """This rank's micro-batches of ``dataset`` from ``consumed_samples`` on (a trailing partial step is dropped)."""
    sampler = RankBatches(len(dataset), rank, world_size, micro_batch_size, consumed_samples)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                                         num_workers=num_workers)
    return iter(loader)


def make_train_iterator(cfg: DataConfig, rank: int, world_size: int, micro_batch_size: int, consumed_samples: int,
                        num_samples: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Micro-batches for data-parallel ``rank`` of the train blend, resuming at ``consumed_samples``.

    ``num_samples`` is the run's total (train_steps * global_batch_size): it sizes the index
    arrays and decides up front whether a source must repeat (``data.on_exhausted``). The iterator
    stops after the last full micro-step within ``num_samples``.
    """
    dataset = build_blended_dataset(cfg, "train", num_samples)
    return batches(dataset, rank, world_size, micro_batch_size, consumed_samples, cfg.num_workers)
