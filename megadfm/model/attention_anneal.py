"""Attention annealing, causal -> bidirectional (DiffuLLaMA's recipe for adapting an AR model).

While a run anneals (``dfm.attention_anneal_steps: N``), a model whose ``attention_mode`` is
bidirectional attends, at optimizer step s (counted from 1), with fraction f = (s - 1) / N:

- every key at or before the query in its document (the causal part, always visible);
- each key *after* the query in the same document independently with probability f, drawn once per
  forward from a seeded generator (the same pattern in every layer of that forward);
- never a padding key nor a key of another document: the pattern is intersected with the batch's
  segments and key mask, exactly as the causal and bidirectional masks are.

f = 0 at step 1 is the causal model (the AR checkpoint's own function); from step N + 1 on the
model attends bidirectionally and the annealing is off. The seed depends on the step, the rank and
the micro-batch, so a resumed run draws the same patterns. Only the full-sequence forward anneals
(the KV-cached block forward of sampling never runs during an anneal); the pattern needs an explicit
mask, so annealing forwards use torch's SDPA with a dense mask whatever the kernel choice (logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class AttentionAnneal:
    """The annealing state of one forward: ``fraction`` in [0, 1) of future keys visible, drawn from ``seed``."""

    fraction: float
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"AttentionAnneal.fraction must be in [0, 1) (1 is bidirectional: no annealing), "
                             f"got {self.fraction}")

    def future_visible(self, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
        """bool [B, L, L]: which (query i, key j > i) pairs are visible; False on and below the diagonal."""
        gen = torch.Generator(device=device).manual_seed(self.seed)
        draws = torch.rand(batch_size, seq_len, seq_len, generator=gen, device=device)
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(diagonal=1)
        return (draws < self.fraction) & future


def anneal_fraction(step: int, anneal_steps: int) -> Optional[float]:
    """f for optimizer step ``step`` (from 1) of an ``anneal_steps`` anneal; None once it is over (or off)."""
    if anneal_steps <= 0:
        return None
    fraction = (step - 1) / anneal_steps
    return fraction if fraction < 1.0 else None


def anneal_seed(base_seed: int, step: int, rank: int, micro: int) -> int:
    """A distinct, reproducible pattern per step, rank and micro-batch."""
    return (base_seed * 1_000_003 + step * 10_007 + rank * 101 + micro) % (2 ** 63)
