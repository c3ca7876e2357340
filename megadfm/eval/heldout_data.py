"""The held-out token documents that likelihood is measured on: the validation split of an indexed
dataset (the same split rule training uses), one document per row, cut to ``seq_len`` tokens, so a
DFM bound and an AR NLL are computed on exactly the same tokens."""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import torch

from megadfm.data.batch import batch_from_documents
from megadfm.data.indexed import IndexedDataset
from megadfm.data.packing import split_ranges

SPLITS = ("train", "valid", "test")


def heldout_documents(prefix: str, split: Sequence[float], which: str = "valid", seq_len: int = 128,
                      max_documents: int = 32, min_tokens: int = 8) -> List[List[int]]:
    """The first ``max_documents`` documents (of at least ``min_tokens`` tokens) of split ``which``."""
    if which not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
    ds = IndexedDataset(prefix)
    first, end = split_ranges(ds.num_documents, split)[SPLITS.index(which)]
    docs: List[List[int]] = []
    for j in range(first, end):
        tokens = ds.document(j)[:seq_len].tolist()
        if len(tokens) >= min_tokens:
            docs.append(tokens)
        if len(docs) == max_documents:
            break
    if not docs:
        raise ValueError(f"{prefix}: the {which} split (documents {first}..{end - 1}) has no document of >= {min_tokens} tokens")
    return docs


def document_batches(docs: Sequence[Sequence[int]], batch_size: int, pad_token_id: int) -> Iterator[Dict[str, torch.Tensor]]:
    for i in range(0, len(docs), batch_size):
        chunk = docs[i:i + batch_size]
        yield batch_from_documents(chunk, max(len(d) for d in chunk), pad_token_id, sample_index=range(i, i + len(chunk)))
