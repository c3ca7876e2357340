"""Per-layer keys/values of a set of positions, kept for block-wise sampling (Fast-dLLM's caches).

A semi-autoregressive DFM sampler fills a sequence block by block. Between steps inside a block
the tokens outside it do not change, and Fast-dLLM observes that their keys/values change little,
so they are computed once per block (a full forward, :func:`block_forward.forward_with_cache`)
and reused by every step (:func:`block_forward.forward_block`, which runs only the block):

- prefix cache: keep the positions before the block (``cache.prefix(s)``);
- dual cache: keep every position outside the block (``cache.outside(s, e)``, or the whole cache:
  forward_block always replaces cached positions that it recomputes by their fresh K/V).

This is an APPROXIMATION for a bidirectional model: a cached K/V is the one of the sequence (and
of the time t) it was built from. Once the block's tokens change, the true K/V of the positions
outside the block change too (they attend to the block), and with AdaLN(t) they also depend on t,
which moves every step; the cache keeps the stale ones until it is rebuilt. It is exact only when
nothing a cached position depends on has changed, e.g. for a causal model's prefix (a prefix never
attends to later positions) at the same t or with time_conditioning none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

Positions = Union[torch.Tensor, range, Sequence[int]]


@dataclass
class KVCache:
    """Keys and values of every layer at ``positions`` of a [B, seq_len] batch.

    Attributes:
        keys, values: one tensor per layer, [B, kv_heads, L_cached, head_dim]; keys after the
            per-head k RMSNorm and rotary (at the absolute positions), as attention consumes them.
        positions: long [L_cached], strictly increasing columns of the row (shared by all rows).
        key_valid: bool [B, L_cached], False on padding (never attended to).
        seq_len: L of the batch the cache was built from (positions lie in [0, seq_len)).
        t: the [B] times the cache was built at (None without time conditioning); for the record:
            the K/V depend on t through AdaLN and are NOT recomputed when the sampler's t moves.
    """

    keys: List[torch.Tensor]
    values: List[torch.Tensor]
    positions: torch.Tensor
    key_valid: torch.Tensor
    seq_len: int
    t: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(f"keys and values must be non-empty lists of the same length (one per layer), "
                             f"got {len(self.keys)} and {len(self.values)}")
        if self.positions.dim() != 1 or self.positions.dtype != torch.long:
            raise ValueError(f"positions must be a 1-D long tensor, got shape {tuple(self.positions.shape)} dtype {self.positions.dtype}")
        n = self.positions.numel()
        if n and (bool((self.positions[1:] <= self.positions[:-1]).any()) or int(self.positions[0]) < 0
                  or int(self.positions[-1]) >= self.seq_len):
            raise ValueError(f"positions must be strictly increasing within [0, seq_len={self.seq_len}), got {self.positions.tolist()}")
        shape = tuple(self.keys[0].shape)
        if len(shape) != 4 or shape[2] != n:
            raise ValueError(f"keys[0] must be [B, kv_heads, L_cached={n}, head_dim], got {shape}")
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if tuple(k.shape) != shape or tuple(v.shape) != shape:
                raise ValueError(f"layer {i}: keys {tuple(k.shape)} and values {tuple(v.shape)} must both be {shape}")
        if tuple(self.key_valid.shape) != (shape[0], n) or self.key_valid.dtype != torch.bool:
            raise ValueError(f"key_valid must be bool [B, L_cached] = [{shape[0]}, {n}], got {tuple(self.key_valid.shape)} "
                             f"{self.key_valid.dtype}")

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def __len__(self) -> int:
        """Number of cached positions."""
        return self.positions.numel()

    def select(self, positions: Positions) -> "KVCache":
        """A new cache of ``positions`` only (any order; each must be cached). Tensors are copied, not shared."""
        wanted = torch.unique(as_positions(positions, self.positions.device, "positions"))  # sorted
        missing = wanted[~torch.isin(wanted, self.positions)]
        if missing.numel():
            raise ValueError(f"positions {missing.tolist()[:8]} are not in the cache "
                             f"(it holds {len(self)} positions of seq_len {self.seq_len})")
        return self._take(torch.searchsorted(self.positions, wanted))

    def prefix(self, end: int) -> "KVCache":
        """Positions < end: Fast-dLLM's prefix cache for a block starting at ``end``."""
        return self._take((self.positions < end).nonzero().squeeze(1))

    def outside(self, start: int, end: int) -> "KVCache":
        """Positions outside [start, end): Fast-dLLM's dual cache (prefix and suffix) for that block."""
        return self._take(((self.positions < start) | (self.positions >= end)).nonzero().squeeze(1))

    def _take(self, index: torch.Tensor) -> "KVCache":
        return KVCache([k.index_select(2, index) for k in self.keys], [v.index_select(2, index) for v in self.values],
                       self.positions[index], self.key_valid[:, index], self.seq_len, self.t)


def as_positions(positions: Positions, device: torch.device, name: str) -> torch.Tensor:
    """A 1-D long tensor on ``device`` from a tensor, a range or a sequence of ints."""
    if isinstance(positions, torch.Tensor):
        if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got shape {tuple(positions.shape)} dtype {positions.dtype}")
        return positions.to(device=device, dtype=torch.long)
    return torch.tensor(list(positions), dtype=torch.long, device=device)
