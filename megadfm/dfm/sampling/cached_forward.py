"""``SamplerConfig.cache: prefix | dual``: the block samplers' forward with a per-block K/V cache (Fast-dLLM style).

APPROXIMATE for a bidirectional model: a cached K/V is the one of the sequence and the t it was
built from, and goes stale as soon as the block's tokens (or t) move (megadfm/model/kv_cache.py).
``cache: none`` (:class:`~megadfm.dfm.sampling.forward.FullSequenceForward`) is the exact sampler.

The semantics, exactly (the HF export's self-contained ``diffusion_generate`` implements the same
rules and must agree token for token; change both together):

- Blocks are the method's ``[a, b)`` offsets of the new positions. Row r's block covers columns
  ``[s, e)`` with ``s = gen_start_r + a`` and ``e = gen_start_r + min(b, n_r)``; the batch has
  ``L`` columns (right padding; padding is never attended to).
- A row's FIRST evaluation in a block is one FULL forward over its whole current sequence at that
  step's t (``model.forward_with_cache``, counted in ``nfe_full``): it gives that step's logits
  and builds the row's cache. Every row evaluated for the first time in this block in the same
  step shares that one full forward. (With the threshold method, and with the confidence method
  whenever each step unmasks something, this is the block's first step.)
- Every LATER evaluation of the row in the block is ``model.forward_block`` only (``nfe_block``),
  at that step's t and with the row's current tokens, over the columns
  ``[p, q)`` with ``p = s - 1`` under shift_logits (the hidden state at s - 1 predicts s), else ``p = s``, and

  - ``prefix``: ``q = L`` (the block and everything after it), attending to the cached K/V of the
    columns ``< p`` (``cache.prefix(p)``);
  - ``dual``: ``q = e`` (the block only), attending to the cached K/V of every column outside
    ``[p, q)`` (``cache.outside(p, q)``): the suffix and any infill suffix are cached too.

  The cache is never refreshed inside a block; the next block starts with a new full forward.
- ``forward_block`` takes one column set for all its rows, so rows are grouped by ``(p, q)``
  (ragged prompts start their blocks at different columns) and each group is one call (one
  ``nfe_block``). A row's result does not depend on the other rows: a ragged batch decodes as
  its rows would one by one. Rows that left (EOS, or nothing left to unmask) are not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from megadfm.dfm.layout import GenerationLayout
from megadfm.dfm.sampling.forward import Block, ForwardCounts
from megadfm.dfm.shift import gather_predictions, prediction_indices
from megadfm.model.kv_cache import KVCache

CACHE_MODES = ("none", "prefix", "dual")


@dataclass
class _Group:
    """Rows of one block that share the columns [lo, hi) of their block forward, and their cache."""

    rows: torch.Tensor  # long [G], sorted global row indices
    lo: int
    hi: int
    cache: KVCache  # [G] rows, the positions outside [lo, hi) that the mode keeps
    valid: torch.Tensor  # bool [G, hi - lo]: False on padding columns


class CachedForward:
    """The :class:`~megadfm.dfm.sampling.forward.ModelForward` of ``cache: prefix`` or ``dual`` (module docstring)."""

    def __init__(self, model: torch.nn.Module, layout: GenerationLayout, shift: bool, mode: str):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"cache: CachedForward is for prefix or dual, got {mode!r} (none is FullSequenceForward)")
        for name in ("forward_with_cache", "forward_block"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"cache: {mode} needs a model with {name} (megadfm's Qwen3DFM); "
                                f"{type(model).__name__} has none; use cache: none")
        self.model = model
        self.layout = layout
        self.shift = shift
        self.mode = mode
        self.counts = ForwardCounts()
        self.block: Optional[Block] = None
        self.groups: List[_Group] = []
        # bool [B]: the row's cache of the current block exists (its first evaluation has happened)
        self.cached = torch.zeros(layout.generate.shape[0], dtype=torch.bool, device=layout.generate.device)

    def hidden_for(self, x: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   block: Block) -> Tuple[torch.Tensor, torch.Tensor]:
        """As FullSequenceForward.hidden_for: hidden states [N, H] for the ``targets`` (bool [R, L] over
        ``x[rows]``) and their flat indices [N] in the [R * L] sub-batch, each row through its full
        forward (first evaluation in ``block``) or its group's block forward (later ones)."""
        if block != self.block:  # a new block: every cache is stale, drop them all
            self.block, self.groups = block, []
            self.cached.zero_()
        seq_len = x.shape[1]
        source, target = prediction_indices(targets, self.layout.segment_start.index_select(0, rows), self.shift)
        local, col = source // seq_len, source % seq_len  # sub-batch row and column of each predicting state
        hidden: Optional[torch.Tensor] = None
        fresh = ~self.cached.index_select(0, rows)  # decided before this call adds caches
        parts: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (which sources, their hidden states)

        for group in self.groups:
            member = torch.isin(rows, group.rows) & ~fresh
            if not bool(member.any()):
                continue
            sub = member.nonzero(as_tuple=True)[0]  # indices into rows
            parts.append(self._block_forward(x, rows, t, sub, group, local, col))
        if bool(fresh.any()):
            sub = fresh.nonzero(as_tuple=True)[0]
            parts.append(self._full_forward(x, rows, t, sub, targets, block, local))

        for which, values in parts:
            if hidden is None:
                hidden = values.new_empty((source.numel(), values.shape[-1]))
            hidden[which] = values
        if hidden is None:
            raise ValueError("hidden_for was asked for no rows")
        return hidden, target

    def _full_forward(self, x, rows, t, sub, targets, block, local) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first evaluation of rows[sub] in this block: one full forward, which also builds their caches."""
        global_rows = rows.index_select(0, sub)
        valid = self.layout.batch["loss_mask"].index_select(0, global_rows)  # the document's tokens
        hidden, cache = self.model.forward_with_cache(x.index_select(0, global_rows), t.index_select(0, sub),
                                                      attention_mask=valid)
        self.counts.nfe_full += 1
        self.counts.rows += int(global_rows.numel())
        self._add_groups(global_rows, cache, valid, block, x.shape[1])
        # sub is sorted and sources are row-major, so these rows' sources come out in the call's order
        which = torch.isin(local, sub)
        picked, _ = gather_predictions(hidden, targets.index_select(0, sub),
                                       self.layout.segment_start.index_select(0, global_rows), self.shift)
        return which, picked  # both in row-major order of the sources, so they line up

    def _add_groups(self, global_rows, cache: KVCache, valid, block: Block, seq_len: int) -> None:
        """Split the freshly built cache of ``global_rows`` into their (lo, hi) groups, keeping only what the mode uses."""
        a, b = block
        start = self.layout.gen_start.index_select(0, global_rows)
        s = start + a
        e = start + torch.clamp(self.layout.new_tokens.index_select(0, global_rows), max=b)
        lo = s - 1 if self.shift else s
        hi = torch.full_like(lo, seq_len) if self.mode == "prefix" else e
        keys: Dict[Tuple[int, int], List[int]] = {}
        for i, key in enumerate(zip(lo.tolist(), hi.tolist())):
            keys.setdefault(key, []).append(i)
        for (g_lo, g_hi), members in keys.items():
            index = torch.tensor(members, dtype=torch.long, device=global_rows.device)
            kept = cache.prefix(g_lo) if self.mode == "prefix" else cache.outside(g_lo, g_hi)
            self.groups.append(_Group(global_rows.index_select(0, index), g_lo, g_hi, select_rows(kept, index),
                                      valid.index_select(0, index)[:, g_lo:g_hi]))
        self.cached.index_fill_(0, global_rows, True)

    def _block_forward(self, x, rows, t, sub, group: _Group, local, col) -> Tuple[torch.Tensor, torch.Tensor]:
        """A later evaluation of rows[sub] (all of one group): the block forward over [lo, hi) on the group's cache."""
        global_rows = rows.index_select(0, sub)
        if global_rows.numel() == group.rows.numel():
            cache, valid = group.cache, group.valid
        else:  # some of the group's rows are not run this step (EOS, or nothing to unmask): their cache stays
            at = torch.searchsorted(group.rows, global_rows)
            cache, valid = select_rows(group.cache, at), group.valid.index_select(0, at)
        hidden = self.model.forward_block(x.index_select(0, global_rows)[:, group.lo:group.hi], t.index_select(0, sub),
                                          range(group.lo, group.hi), cache, attention_mask=valid)
        self.counts.nfe_block += 1
        self.counts.rows += int(global_rows.numel())
        where = torch.full((rows.numel(),), -1, dtype=torch.long, device=rows.device)
        where[sub] = torch.arange(sub.numel(), device=rows.device)
        which = where[local] >= 0
        cols = col[which] - group.lo
        if bool(((cols < 0) | (cols >= group.hi - group.lo)).any()):
            raise ValueError(f"a target of block {self.block} is predicted from outside the block forward's columns "
                             f"[{group.lo}, {group.hi}); the block samplers only ask for positions of the current block")
        return which, hidden[where[local[which]], cols]


def select_rows(cache: KVCache, index: torch.Tensor) -> KVCache:
    """The cache of rows ``index`` only (copies)."""
    return KVCache([k.index_select(0, index) for k in cache.keys], [v.index_select(0, index) for v in cache.values],
                   cache.positions, cache.key_valid.index_select(0, index), cache.seq_len,
                   None if cache.t is None else cache.t.index_select(0, index))
