"""The sampler's forward for a block-diffusion model (``dfm.mode: block``): blocks decoded left to right,
earlier blocks clean, with an EXACT K/V cache (docs/BLOCK_DIFFUSION.md "Sampling").

Blocks are the model's: block k is the columns ``[k * block_size, (k + 1) * block_size)`` of every row
(one document per row, starting at column 0 with the prompt), so a prompt may end inside the first
block that has new positions, and the rows of a batch decode their block k together
(:meth:`megadfm.dfm.sampling.context.SamplingContext.block_plan`).

- ``cache: none`` (:class:`BlockCausalForward`): every evaluation is the training forward itself, the
  two-stream ``[x ‖ x]`` over the whole row: the noisy copy at the step's t, the clean copy at t = 1,
  the pattern of megadfm/dfm/block_diffusion.py (``nfe_full``). The reference.
- ``cache: prefix`` (:class:`BlockCacheForward`): the clean stream of the blocks before the current one
  is computed once: the first evaluation runs one prefill pass over the blocks before it, block-causal
  at t = 1 (``nfe_full``); moving on to block k + 1 commits block k, one block-only pass at t = 1 that
  appends its keys and values (``nfe_block``); every step runs only block k's columns at the step's t
  over that cache (``nfe_block``). This is exactly what the uncached forward computes, since nothing in
  blocks <= k ever attends to a later block and the clean stream never sees a noisy token: the cache
  is never stale (tests/dfm/test_block_sampling.py checks token equality).

The output that predicts column i is :func:`megadfm.dfm.block_diffusion.prediction_sources`'s: with
shift_logits, a block's first column is predicted by the clean stream at the column before it (the
last column of the previous block, kept from its commit or the prefill).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from megadfm.dfm.block_diffusion import prediction_sources
from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.sampling.forward import Block, ForwardCounts
from megadfm.model.kernels.attention_pattern import TwoStreamBlockPattern
from megadfm.model.kv_cache import KVCache


def column_blocks(layout: GenerationLayout, block_size: int) -> torch.Tensor:
    """long [B, L]: the model block of every column (one document per row, from column 0)."""
    columns = torch.arange(layout.generate.shape[1], device=layout.generate.device)
    return (columns // block_size)[None, :].expand_as(layout.generate)


def block_index(layout: GenerationLayout, block: Block, block_size: int) -> int:
    """The absolute block k of a block-mode ``block`` (per-row offsets [B, 1], see SamplingContext.block_plan)."""
    start = block[0]
    if not torch.is_tensor(start):
        raise TypeError("a block-diffusion forward needs the model-aligned blocks of SamplingContext.block_plan")
    return int(start[0, 0] + layout.gen_start[0]) // block_size


class BlockCausalForward:
    """``cache: none`` in block mode: the two-stream training forward at every evaluation (module docstring)."""

    def __init__(self, model: torch.nn.Module, layout: GenerationLayout, shift: bool, block_size: int):
        self.model, self.layout, self.shift, self.block_size = model, layout, shift, block_size
        self.counts = ForwardCounts()
        self.blocks = column_blocks(layout, block_size)
        # padding is its own segment (no real token attends to it, as in training)
        self.segments = (~layout.batch["loss_mask"].bool()).long()

    def hidden_for(self, x: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   block: Block) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [N, H] predicting ``targets`` (bool [R, L] over ``x[rows]``) and their flat indices [N]."""
        del block  # every column is recomputed
        sub = x.index_select(0, rows)
        R, L = sub.shape
        positions = torch.arange(L, device=sub.device)[None, :].expand(R, L)
        blocks = self.blocks.index_select(0, rows)
        times = torch.cat([t.to(torch.float32)[:, None].expand(R, L), torch.ones(R, L, device=sub.device)], dim=1)
        pattern = TwoStreamBlockPattern(self.segments.index_select(0, rows), blocks)
        # (a model without time conditioning ignores t)
        hidden = self.model(torch.cat([sub, sub], dim=1), t=times, position_ids=torch.cat([positions, positions], dim=1),
                            attention_pattern=pattern)
        self.counts.nfe_full += 1
        self.counts.rows += R
        source, target = prediction_sources(targets, blocks, self.layout.segment_start.index_select(0, rows), self.shift)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, source), target


class BlockCacheForward:
    """``cache: prefix`` in block mode: the exact clean-stream cache of the finished blocks (module docstring)."""

    def __init__(self, model: torch.nn.Module, layout: GenerationLayout, shift: bool, block_size: int):
        for name in ("forward_with_cache", "forward_block"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"block-mode cache: prefix needs a model with {name} (megadfm's Qwen3DFM); use cache: none")
        self.model, self.layout, self.shift, self.block_size = model, layout, shift, block_size
        self.counts = ForwardCounts()
        self.blocks = column_blocks(layout, block_size)
        self.valid = layout.batch["loss_mask"].bool()
        self.cache: Optional[KVCache] = None  # clean stream of columns [0, committed * block_size), every row
        self.committed = 0  # blocks in the cache
        self.last_clean: Optional[torch.Tensor] = None  # [B, H]: clean output at the cache's last column

    def _advance(self, x: torch.Tensor, k: int) -> None:
        """Bring the cache up to block k (columns < k * block_size): one prefill pass, then one commit per block."""
        B, L = x.shape
        clean_t = torch.ones(B, device=x.device)  # (a model without time conditioning ignores t)
        if self.cache is None and k > 0:
            end = min(k * self.block_size, L)
            hidden, cache = self.model.forward_with_cache(x[:, :end], clean_t,
                                                          attention_mask=self.valid[:, :end], block_size=self.block_size)
            self.counts.nfe_full += 1
            self.counts.rows += B
            # the cache's seq_len must cover every column a later block forward places
            self.cache = KVCache(cache.keys, cache.values, cache.positions, cache.key_valid, L, cache.t)
            self.committed, self.last_clean = k, hidden[:, end - 1]
        while self.committed < k:  # commit finished blocks (clean tokens, t = 1), appending their K/V
            lo, hi = self.committed * self.block_size, min((self.committed + 1) * self.block_size, L)
            hidden, self.cache = self.model.forward_block(x[:, lo:hi], clean_t, range(lo, hi),
                                                          self.cache, attention_mask=self.valid[:, lo:hi], append=True)
            self.counts.nfe_block += 1
            self.counts.rows += B
            self.committed, self.last_clean = self.committed + 1, hidden[:, -1]

    def hidden_for(self, x: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   block: Block) -> Tuple[torch.Tensor, torch.Tensor]:
        """As BlockCausalForward.hidden_for, from block k's columns over the cache of the blocks before it."""
        k = block_index(self.layout, block, self.block_size)
        if k < self.committed:
            raise ValueError(f"block {k} was already committed to the cache (blocks are decoded left to right)")
        self._advance(x, k)
        L = x.shape[1]
        lo, hi = k * self.block_size, min((k + 1) * self.block_size, L)
        sub = x.index_select(0, rows)
        valid = self.valid.index_select(0, rows)[:, lo:hi]
        if self.cache is None:  # block 0: nothing before it, the block's columns alone
            hidden = self.model(sub[:, lo:hi], t=t, attention_mask=valid)
        else:
            cache = self.cache if rows.numel() == x.shape[0] else _rows(self.cache, rows)
            hidden = self.model.forward_block(sub[:, lo:hi], t, range(lo, hi), cache, attention_mask=valid)
        self.counts.nfe_block += 1
        self.counts.rows += int(rows.numel())
        source, target = prediction_sources(targets, self.blocks.index_select(0, rows),
                                            self.layout.segment_start.index_select(0, rows), self.shift)
        row, col = source // (2 * L), source % (2 * L)
        if bool(((col < L) & ((col < lo) | (col >= hi))).any()) or bool(((col >= L) & (col - L != lo - 1)).any()):
            raise ValueError(f"a target is predicted from outside block {k}'s columns [{lo}, {hi}); the block samplers "
                             "only ask for positions of the current block")
        noisy = col < L
        out = hidden.new_empty((source.numel(), hidden.shape[-1]))
        out[noisy] = hidden[row[noisy], col[noisy] - lo]
        if bool((~noisy).any()):
            out[~noisy] = self.last_clean.index_select(0, rows.index_select(0, row[~noisy]))
        return out, target


def _rows(cache: KVCache, rows: torch.Tensor) -> KVCache:
    return KVCache([k.index_select(0, rows) for k in cache.keys], [v.index_select(0, rows) for v in cache.values],
                   cache.positions, cache.key_valid.index_select(0, rows), cache.seq_len,
                   None if cache.t is None else cache.t.index_select(0, rows))
