"""Lay out a batch of generation requests as one padded batch (batch contract of megadfm/data/batch.py).

Row b is ``prompt_b + [mask] * n_b + suffix_b`` followed by right padding, one document per row.
Prompts, suffixes and the number of new tokens n_b may differ across rows (``max_new_tokens`` is
one int for all rows or one per row). Each row is its own ``cu_seqlens`` segment, so rows never
attend to one another and a sampler may run the model on any subset of rows
(:meth:`GenerationLayout.rows_batch`): that is how a row that has finished stops costing compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch

from megadfm.data.batch import batch_from_documents
from megadfm.dfm.shift import predictable_positions, segment_starts


@dataclass
class GenerationLayout:
    batch: Dict[str, torch.Tensor]  # input_ids hold the mask at every new position
    generate: torch.Tensor  # bool [B, L]: the new positions
    gen_start: torch.Tensor  # long [B]: column of the first new position
    new_tokens: torch.Tensor  # long [B]: number of new positions n_b
    segment_start: torch.Tensor  # bool [B, L] from cu_seqlens (for the shift)

    @property
    def max_new_tokens(self) -> int:
        return int(self.new_tokens.max())

    def offset(self) -> torch.Tensor:
        """long [B, L]: column minus the row's first new column (0 at the first new position)."""
        cols = torch.arange(self.generate.shape[1], device=self.gen_start.device)
        return cols[None, :] - self.gen_start[:, None]

    def rows_batch(self, rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """position_ids, cu_seqlens and max_seqlen of the sub-batch of ``rows`` (sorted distinct row indices).

        cu_seqlens is rebuilt from the rows' segment starts (every row start is one), so the
        sub-batch satisfies the batch contract of megadfm/data/batch.py on its own.
        """
        bsz, seq_len = self.generate.shape
        if rows.numel() == bsz:  # sorted and distinct: all rows, the batch as built
            return {k: self.batch[k] for k in ("position_ids", "cu_seqlens", "max_seqlen")}
        starts = self.segment_start.index_select(0, rows).reshape(-1).nonzero(as_tuple=True)[0]
        end = torch.tensor([rows.numel() * seq_len], dtype=starts.dtype, device=starts.device)
        cu = torch.cat([starts, end]).to(self.batch["cu_seqlens"].dtype)
        return {"position_ids": self.batch["position_ids"].index_select(0, rows), "cu_seqlens": cu,
                "max_seqlen": int((cu[1:] - cu[:-1]).max())}


def build_layout(prompts: Sequence[Sequence[int]], max_new_tokens: Union[int, Sequence[int]], mask_token_id: int,
                 pad_token_id: int, shift: bool, suffixes: Optional[Sequence[Sequence[int]]] = None,
                 device: Optional[torch.device] = None) -> GenerationLayout:
    """The padded batch for ``prompts`` (+ optional infill ``suffixes``), new positions masked."""
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    counts = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
    if len(counts) != len(prompts):
        raise ValueError(f"{len(counts)} max_new_tokens for {len(prompts)} prompts")
    if min(counts) <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {counts}")
    if suffixes is not None and len(suffixes) != len(prompts):
        raise ValueError(f"{len(suffixes)} suffixes for {len(prompts)} prompts")
    docs = []
    for b, prompt in enumerate(prompts):
        prompt = [int(x) for x in prompt]
        if mask_token_id in prompt:
            raise ValueError(f"prompt {b} contains the mask token {mask_token_id}")
        if shift and not prompt:
            raise ValueError(f"prompt {b} is empty: with shift_logits on the first token of a document cannot be "
                             "predicted, so generation needs a prompt of at least one token (e.g. <|endoftext|> as BOS)")
        suffix = [int(x) for x in suffixes[b]] if suffixes is not None else []
        if mask_token_id in suffix:
            raise ValueError(f"suffix {b} contains the mask token {mask_token_id}")
        docs.append(prompt + [mask_token_id] * counts[b] + suffix)
    batch = batch_from_documents(docs, pad_token_id=pad_token_id)
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    bsz, seq_len = batch["input_ids"].shape
    gen_start = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=batch["input_ids"].device)
    new_tokens = torch.tensor(counts, dtype=torch.long, device=gen_start.device)
    cols = torch.arange(seq_len, device=gen_start.device)[None, :]
    generate = (cols >= gen_start[:, None]) & (cols < (gen_start + new_tokens)[:, None])
    starts = segment_starts(batch["cu_seqlens"], bsz, seq_len)
    if bool((generate & ~predictable_positions(starts, shift)).any()):
        raise ValueError("a new position cannot be predicted under the shift convention")
    return GenerationLayout(batch, generate, gen_start, new_tokens, starts)
