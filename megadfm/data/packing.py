"""Document-aware packing of one split of an indexed dataset into fixed-length samples.

Megatron GPT style (see README.md in this folder for a worked example), with two deliberate
differences, both so that *every token of the split is seen exactly once per epoch*:

- each epoch is its own permutation of the split's documents (Megatron shuffles the E-times tiled
  list as a whole, so one "epoch" of samples may hold a document twice and miss another), and the
  sample shuffle permutes samples within the epoch;
- the last sample of an epoch is right-padded instead of dropped (padding is its own segment,
  with ``loss_mask`` False), and samples do not overlap by one token: the DFM objective needs no
  next-token labels, ``input_ids`` are the clean tokens.

Epoch e's arrays come from one ``numpy.random.RandomState(seed)`` drawn epoch after epoch
(document permutation, then sample permutation), so they do not depend on how many epochs are
built: asking for more samples later never changes the samples already seen.

Arrays per epoch (cached on disk, see index_cache.py):
``documents[e]`` the document ids in epoch order; ``samples[e, i] = (p, o)``: sample i starts at
token o of document ``documents[e, p]``; ``shuffle[e]`` the order samples are served in.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from megadfm.data.index_cache import cached_arrays, file_sha256
from megadfm.data.indexed import IndexedDataset, idx_path

SPLIT_NAMES = ("train", "valid", "test")
INDEX_VERSION = 1  # bump when the arrays' meaning changes: old caches then miss instead of misleading


class DataError(ValueError):
    """The data configuration cannot be served (empty split, exhausted source, bad position)."""


def split_ranges(num_documents: int, split: Sequence[float]) -> List[Tuple[int, int]]:
    """Contiguous [start, end) document ranges of train/valid/test (Megatron's rounding rule)."""
    total = float(sum(split))
    bounds = [0]
    for fraction in split:
        bounds.append(bounds[-1] + int(round(fraction / total * num_documents)))
    diff = bounds[-1] - num_documents  # rounding may over/undershoot: shift every bound but the first
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(len(split))]


def build_epochs(lengths: np.ndarray, first_document: int, seq_len: int, seed: int, num_epochs: int) -> Dict[str, np.ndarray]:
    """Document order, sample starts and sample shuffle of ``num_epochs`` epochs (vectorized, O(tokens/seq_len))."""
    num_docs = len(lengths)
    tokens = int(lengths.sum())
    n = math.ceil(tokens / seq_len)
    rng = np.random.RandomState(seed)
    documents = np.empty((num_epochs, num_docs), dtype=np.int64)
    samples = np.empty((num_epochs, n, 2), dtype=np.int64)
    shuffle = np.empty((num_epochs, n), dtype=np.int64)
    for e in range(num_epochs):
        order = rng.permutation(num_docs)
        starts = np.zeros(num_docs + 1, dtype=np.int64)
        np.cumsum(lengths[order], out=starts[1:])
        sample_starts = np.arange(n, dtype=np.int64) * seq_len
        # the last document starting at or before the sample start: never an empty one, since
        # side="right" skips past documents whose start equals the next one's
        pos = np.searchsorted(starts, sample_starts, side="right") - 1
        documents[e] = order + first_document
        samples[e, :, 0] = pos
        samples[e, :, 1] = sample_starts - starts[pos]
        shuffle[e] = rng.permutation(n)
    return {"documents": documents, "samples": samples, "shuffle": shuffle}


class PackedDataset:
    """Fixed-length samples cut from the shuffled documents of one split, epoch after epoch.

    ``ds[k]`` is sample k (epoch ``k // samples_per_epoch``) as a dict: ``tokens`` int64 [seq_len]
    (padded with ``pad_token_id``), ``num_tokens`` (real tokens; the rest is padding),
    ``segment_lengths`` (each document piece, then the padding run if any; sums to seq_len),
    ``documents`` and ``offsets`` (document id and start offset of each real piece).
    """

    def __init__(self, indexed: IndexedDataset, split: str, document_range: Tuple[int, int], seq_len: int, seed: int,
                 num_epochs: int, cache_dir: str, pad_token_id: int):
        self.indexed, self.split, self.seq_len, self.pad_token_id = indexed, split, seq_len, pad_token_id
        self.document_range = document_range
        self.num_epochs = num_epochs
        starts = indexed.document_token_starts()
        self._doc_starts, self._doc_lengths = starts[:-1], np.diff(starts)
        first, end = document_range
        self.num_documents = end - first
        self.tokens_per_epoch = int(self._doc_lengths[first:end].sum())
        if self.tokens_per_epoch == 0:
            raise DataError(f"{indexed.prefix}: the {split} split (documents [{first}, {end}) of {indexed.num_documents}) "
                            "has no tokens; change data.split or add data")
        self.samples_per_epoch = math.ceil(self.tokens_per_epoch / seq_len)
        description = {"version": INDEX_VERSION, "idx_sha256": file_sha256(idx_path(indexed.prefix)), "split": split,
                       "documents": [first, end], "seq_len": seq_len, "seed": seed, "num_epochs": num_epochs}
        arrays = cached_arrays(cache_dir, "packed", description, ["documents", "samples", "shuffle"],
                               lambda: build_epochs(self._doc_lengths[first:end], first, seq_len, seed, num_epochs))
        self._documents, self._samples, self._shuffle = arrays["documents"], arrays["samples"], arrays["shuffle"]

    def __len__(self) -> int:
        return self.num_epochs * self.samples_per_epoch

    def __getitem__(self, k: int) -> Dict[str, object]:
        if not 0 <= k < len(self):
            raise IndexError(f"{self.indexed.prefix} ({self.split}): sample {k} out of range [0, {len(self)}) "
                             f"({self.num_epochs} epoch(s) of {self.samples_per_epoch} samples built)")
        epoch, j = divmod(k, self.samples_per_epoch)
        i = int(self._shuffle[epoch, j])
        position, offset = (int(x) for x in self._samples[epoch, i])
        order = self._documents[epoch]
        tokens = np.full(self.seq_len, self.pad_token_id, dtype=np.int64)
        segments: List[int] = []
        documents: List[int] = []
        offsets: List[int] = []
        filled = 0
        # walk documents from the sample start until seq_len tokens are taken or the epoch ends
        while filled < self.seq_len and position < len(order):
            doc = int(order[position])
            take = min(int(self._doc_lengths[doc]) - offset, self.seq_len - filled)
            if take > 0:
                tokens[filled:filled + take] = self.indexed.tokens(int(self._doc_starts[doc]) + offset, take)
                segments.append(take)
                documents.append(doc)
                offsets.append(offset)
                filled += take
            position, offset = position + 1, 0
        if filled < self.seq_len:
            segments.append(self.seq_len - filled)
        return {"tokens": tokens, "num_tokens": filled, "segment_lengths": segments, "documents": documents,
                "offsets": offsets}
