"""What a sampler method works on: :class:`SamplingContext` (state, settings, forward, active rows).

A row is *active* until its output can no longer change. With a mask source a decoded position
is never rewritten, so that happens when every new position is decoded, or when the row has
decoded an EOS and every position before it: the output is cut before the first EOS, so nothing
after it matters. :meth:`SamplingContext.settle_rows` retires such rows and the methods run the
model only on active rows (indexing the batch, not masking a result), so an early EOS saves
compute. With a uniform or mixture source a decoded token can jump again, so rows stay active.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Tuple

import torch

from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.sampling.forward import Block, ModelForward, block_bounds
from megadfm.dfm.schedulers import Scheduler

if TYPE_CHECKING:  # sampler_config imports the methods (for its allowed values), so not at run time
    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.sampler_config import SamplerConfig


@dataclass
class SamplingContext:
    model: torch.nn.Module
    x: torch.Tensor  # long [B, L]: the state, decoded in place (only where layout.generate)
    layout: GenerationLayout
    cfg: "SamplerConfig"
    dfm: "DFMConfig"
    scheduler: Scheduler
    mask_id: int
    generator: torch.Generator
    forward: ModelForward  # the model seam (megadfm/dfm/sampling/forward.py)
    steps: int = 0  # steps that evaluated the model
    active: torch.Tensor = field(init=False)  # bool [B]: rows still decoding
    offset: torch.Tensor = field(init=False)  # long [B, L]: layout.offset(), computed once

    def __post_init__(self) -> None:
        self.active = torch.ones(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        self.offset = self.layout.offset()

    def masked(self) -> torch.Tensor:
        """bool [B, L]: new positions still holding the mask."""
        return self.layout.generate & (self.x == self.mask_id)

    def settle_rows(self) -> None:
        """Retire every row whose output is final (module docstring); called after each step."""
        if self.dfm.source != "mask":
            return
        masked = self.masked()
        settled = ~masked.any(dim=1)
        eos = self.cfg.eos_token_id
        if eos is not None:
            never = self.x.shape[1]  # an offset no new position has
            first_masked = torch.where(masked, self.offset, never).min(dim=1).values
            first_eos = torch.where(self.layout.generate & (self.x == eos), self.offset, never).min(dim=1).values
            settled |= first_eos < first_masked
        self.active &= ~settled

    def any_active(self) -> bool:
        return bool(self.active.any())

    def block_plan(self) -> Tuple[List[Block], torch.Tensor]:
        """The semi-AR blocks of the confidence and threshold methods, left to right, and how many hold new
        positions of each row (long [B]).

        Full DFM: ``cfg.block_length`` offsets of every row's new positions (0: one block), ints.
        Block diffusion (``dfm.mode: block``): the model's own blocks, columns [k * block_size, (k + 1) *
        block_size) of every row, given as per-row offsets (long [B, 1] tensors) so that the same
        comparisons with :attr:`offset` select them; a prompt may end inside one.
        """
        new_tokens = self.layout.new_tokens
        if self.dfm.mode != "block":
            size = self.cfg.block_length or self.layout.max_new_tokens
            return block_bounds(self.layout.max_new_tokens, size), (new_tokens + size - 1) // size
        size = self.dfm.block_size
        start = self.layout.gen_start
        first, last = start // size, (start + new_tokens - 1) // size
        shift = start[:, None]
        blocks = [(k * size - shift, (k + 1) * size - shift) for k in range(int(first.min()), int(last.max()) + 1)]
        return blocks, last - first + 1
