"""The batch contract between data, DFM objective, model and engine (see docs/INTERFACES.md).

A batch is a dict:

- ``input_ids``    LongTensor [B, L]: clean tokens x_1; padding positions hold the pad id.
- ``position_ids`` LongTensor [B, L]: restart at 0 at every document start (padding: 0, 1, ...).
- ``cu_seqlens``   IntTensor [N+1] (int32): segment boundaries over the *flattened* B*L tokens, as
                   flash-attn varlen expects. Every document piece of every sample is a segment, each
                   run of padding is a segment of its own, every sample start b*L is a boundary,
                   cu_seqlens[0] = 0 and cu_seqlens[-1] = B*L.
- ``max_seqlen``   int: longest segment.
- ``loss_mask``    BoolTensor [B, L]: True on real tokens, False on padding.
- ``sample_index`` LongTensor [B]: identity of each sample (global index in the blended dataset), so a
                   batch can be replayed; ``dataset_index`` / ``dataset_sample_index`` (optional) name the
                   blend source and the sample within it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from megadfm.tokens import PAD_TOKEN_ID


def segments_to_cu_seqlens(segment_lengths: Sequence[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Per-sample segment lengths (each summing to seq_len) -> flattened int32 cu_seqlens."""
    bounds = [0]
    for b, lengths in enumerate(segment_lengths):
        if sum(lengths) != seq_len or any(n <= 0 for n in lengths):
            raise ValueError(f"sample {b}: segment lengths {list(lengths)} must be positive and sum to seq_len={seq_len}")
        for n in lengths:
            bounds.append(bounds[-1] + n)
    return torch.tensor(bounds, dtype=torch.int32)


def position_ids_from_segments(segment_lengths: Sequence[Sequence[int]]) -> torch.Tensor:
    rows = [torch.cat([torch.arange(n) for n in lengths]) for lengths in segment_lengths]
    return torch.stack(rows).long()


def batch_from_documents(documents: Sequence[Sequence[int]], seq_len: Optional[int] = None, pad_token_id: int = PAD_TOKEN_ID,
                         sample_index: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """One document per row, right-padded to ``seq_len`` (default: the longest). For tests and sampling."""
    if not documents:
        raise ValueError("batch_from_documents needs at least one document")
    seq_len = seq_len or max(len(d) for d in documents)
    ids = torch.full((len(documents), seq_len), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(documents), seq_len), dtype=torch.bool)
    segments: List[List[int]] = []
    for b, doc in enumerate(documents):
        if not 0 < len(doc) <= seq_len:
            raise ValueError(f"document {b} has length {len(doc)}, must be in [1, {seq_len}]")
        ids[b, : len(doc)] = torch.as_tensor(list(doc), dtype=torch.long)
        mask[b, : len(doc)] = True
        segments.append([len(doc)] + ([seq_len - len(doc)] if len(doc) < seq_len else []))
    cu = segments_to_cu_seqlens(segments, seq_len)
    return {
        "input_ids": ids,
        "position_ids": position_ids_from_segments(segments),
        "cu_seqlens": cu,
        "max_seqlen": int((cu[1:] - cu[:-1]).max()),
        "loss_mask": mask,
        "sample_index": torch.as_tensor(list(sample_index) if sample_index is not None else range(len(documents)), dtype=torch.long),
    }
