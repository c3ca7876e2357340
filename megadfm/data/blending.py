"""Weighted blending of several packed datasets, Megatron's deterministic rule.

Blend weights are fractions of **samples drawn**, not of corpus size: with weights 0.7 / 0.3, 70 %
of training samples come from source 0 however big each corpus is; a small source with a large
weight is repeated (``data.on_exhausted: repeat``, logged) or refused (``error``). The effective
mix in samples, tokens and epochs is logged at start-up so nobody has to guess (README.md).

Output sample s goes to the source with the largest shortfall ``w_d * max(s, 1) - count_d``
(ties to the lower index), exactly as megatron-core's ``build_blending_indices``: after any
prefix of s samples every source is within one sample of ``w_d * s``. The rule is online, so the
first s samples are the same whatever the total: a longer run extends, never reorders.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence

import numpy as np

from megadfm.data.index_cache import cached_arrays
from megadfm.data.packing import PackedDataset

logger = logging.getLogger(__name__)


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w <= 0).any():
        raise ValueError(f"blend weights must be a non-empty list of positive numbers, got {list(weights)}")
    return w / w.sum()


def build_blend_index(weights: Sequence[float], num_samples: int) -> Dict[str, np.ndarray]:
    """``dataset_index[s]`` (source of output sample s) and ``dataset_sample_index[s]`` (its sample in that source)."""
    w = normalize_weights(weights).tolist()
    if len(w) == 1:
        return {"dataset_index": np.zeros(num_samples, dtype=np.int16),
                "dataset_sample_index": np.arange(num_samples, dtype=np.int64)}
    counts = [0] * len(w)
    sources = range(1, len(w))
    chosen: List[int] = []
    within: List[int] = []
    for s in range(num_samples):
        x = float(max(s, 1))
        best, best_error = 0, w[0] * x - counts[0]
        for d in sources:
            error = w[d] * x - counts[d]
            if error > best_error:
                best, best_error = d, error
        chosen.append(best)
        within.append(counts[best])
        counts[best] += 1
    return {"dataset_index": np.asarray(chosen, dtype=np.int16), "dataset_sample_index": np.asarray(within, dtype=np.int64)}


def cached_blend_index(weights: Sequence[float], num_samples: int, cache_dir: str) -> Dict[str, np.ndarray]:
    """:func:`build_blend_index` through the on-disk cache (a long run needs it once, every rank reads it)."""
    w = normalize_weights(weights)
    if len(w) == 1:  # trivial; nothing worth caching
        return build_blend_index(weights, num_samples)
    description = {"weights": [float(x) for x in w], "num_samples": int(num_samples)}
    return cached_arrays(cache_dir, "blend", description, ["dataset_index", "dataset_sample_index"],
                         lambda: build_blend_index(weights, num_samples))


def samples_per_source(dataset_index: np.ndarray, num_sources: int) -> np.ndarray:
    return np.bincount(np.asarray(dataset_index), minlength=num_sources)[:num_sources]


class BlendedDataset:
    """``ds[s]``: output sample s of the blend, a packed sample plus ``sample_index``,
    ``dataset_index`` and ``dataset_sample_index`` (which source, which of its samples)."""

    def __init__(self, datasets: Sequence[PackedDataset], index: Dict[str, np.ndarray]):
        self.datasets = list(datasets)
        self.dataset_index = index["dataset_index"]
        self.dataset_sample_index = index["dataset_sample_index"]
        self.mix: List[Dict[str, object]] = []  # filled by the builder: see effective_mix

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, s: int) -> Dict[str, object]:
        if not 0 <= s < len(self):
            raise IndexError(f"blended sample {s} out of range [0, {len(self)})")
        d, k = int(self.dataset_index[s]), int(self.dataset_sample_index[s])
        sample = self.datasets[d][k]
        sample.update(sample_index=s, dataset_index=d, dataset_sample_index=k)
        return sample


def effective_mix(datasets: Sequence[PackedDataset], weights: Sequence[float], dataset_index: np.ndarray) -> List[Dict[str, object]]:
    """Per source: requested weight, samples and (real, unpadded) tokens drawn, epochs, share of the corpora."""
    w = normalize_weights(weights)
    drawn = samples_per_source(dataset_index, len(datasets))
    total_tokens = sum(ds.tokens_per_epoch for ds in datasets)
    mix = []
    for d, ds in enumerate(datasets):
        mix.append({
            "prefix": ds.indexed.prefix, "split": ds.split, "weight": float(w[d]), "samples": int(drawn[d]),
            "sample_share": float(drawn[d] / max(len(dataset_index), 1)),
            # real tokens, padding excluded: the samples of an epoch hold tokens_per_epoch tokens
            "tokens": round(int(drawn[d]) * ds.tokens_per_epoch / ds.samples_per_epoch),
            "epochs": float(drawn[d] / ds.samples_per_epoch), "samples_per_epoch": ds.samples_per_epoch,
            "corpus_token_share": ds.tokens_per_epoch / total_tokens})
    return mix


def log_mix(mix: Sequence[Dict[str, object]], num_samples: int, seq_len: int) -> None:
    logger.info("data mix (%s): %d samples x %d tokens; weights are fractions of samples drawn, not of corpus size",
                mix[0]["split"], num_samples, seq_len)
    for m in mix:
        logger.info("  %-50s weight %.4f -> %d samples (%.2f%%), %d tokens, %.3f epochs (corpus share %.2f%%)",
                    m["prefix"], m["weight"], m["samples"], 100 * m["sample_share"], m["tokens"], m["epochs"],
                    100 * m["corpus_token_share"])


def epochs_needed(samples: int, samples_per_epoch: int) -> int:
    return max(1, math.ceil(samples / samples_per_epoch))
