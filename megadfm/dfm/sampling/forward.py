"""The one place a sampler step runs the model: the seam a KV cache plugs into.

Every step of every method asks its forward for the hidden states that predict some target
positions of some rows, and names the block ``[start, end)`` (offsets into each row's new
positions, as :meth:`GenerationLayout.offset`) the targets lie in::

    hidden, target = forward.hidden_for(x, rows, t, targets, block)

:class:`FullSequenceForward` runs the model over the whole of those rows (prompt, every new
position, suffix) and counts one ``nfe_full``. The cached forward
(megadfm/dfm/sampling/cached_forward.py, ``cache: prefix | dual``, over megadfm/model/kv_cache.py)
is another class with the same method and counters: it runs the full sequence once per block to
build the cache (``nfe_full``) and then only the block's columns (``nfe_block``). The methods and :func:`megadfm.dfm.sampling.blocks.block_step` do not change;
:func:`megadfm.dfm.sampler.generate` picks the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Protocol, Tuple, Union

import torch

from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.shift import gather_predictions

Block = Tuple[Union[int, torch.Tensor], Union[int, torch.Tensor]]
"""[start, end) offsets into every row's new positions: ints, or per-row long [B, 1] tensors (block diffusion's
model-aligned blocks, SamplingContext.block_plan)."""


def block_bounds(n_max: int, block_length: int) -> List[Block]:
    """[start, end) offsets of the blocks covering ``n_max`` new positions (block_length 0: one block)."""
    size = block_length or n_max
    return [(a, min(a + size, n_max)) for a in range(0, n_max, size)]


@dataclass
class ForwardCounts:
    """What the model was asked to do, for honest throughput numbers (SampleResult)."""

    nfe_full: int = 0  # forward passes over whole rows
    nfe_block: int = 0  # forward passes over only a block's positions (a cached forward; 0 without a cache)
    rows: int = 0  # rows passed to the model, summed over forward passes (a row stopped at EOS adds nothing)


class ModelForward(Protocol):
    """What a step needs from the model; FullSequenceForward and CachedForward (cached_forward.py) provide it."""

    counts: ForwardCounts

    def hidden_for(self, x: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   block: Block) -> Tuple[torch.Tensor, torch.Tensor]: ...


class FullSequenceForward:
    """The model over whole rows, no cache: every call is one ``nfe_full``."""

    def __init__(self, model: torch.nn.Module, layout: GenerationLayout, shift: bool):
        self.model = model
        self.layout = layout
        self.shift = shift
        self.counts = ForwardCounts()

    def hidden_for(self, x: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   block: Block) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [N, H] predicting the ``targets`` (bool [R, L] over ``x[rows]``) at times ``t`` [R].

        ``rows``: sorted distinct row indices of ``x`` [B, L]; only they are run. Returns the hidden
        states and the flat indices [N] of their targets in the [R * L] sub-batch. ``block`` is
        unused here (every position is recomputed); a cached forward needs it.
        """
        del block
        batch = self.layout.rows_batch(rows)
        hidden = self.model(x.index_select(0, rows), t=t, position_ids=batch["position_ids"],
                            cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
        self.counts.nfe_full += 1
        self.counts.rows += int(rows.numel())
        return gather_predictions(hidden, targets, self.layout.segment_start.index_select(0, rows), self.shift)
