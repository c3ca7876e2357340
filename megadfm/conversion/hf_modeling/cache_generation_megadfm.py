"""Fast-dLLM's block-wise K/V caches (``cache="prefix" | "dual"``) of a full-DFM model in ``model.diffusion_generate``.

Copied into every HF export next to generation_megadfm.py, which imports it (split out to keep that file
readable). Imports only torch: the folder has no megadfm. The rules are megadfm's
(megadfm/dfm/sampling/cached_forward.py); tests/conversion/test_diffusion_generate.py replays every call
against the in-tree forward.
"""

import torch


def gather_predictions(hidden, targets, shift):
    """With shift the output at column i - 1 predicts column i (a prompt of >= 1 token keeps i - 1 in the row)."""
    target = targets.reshape(-1).nonzero(as_tuple=True)[0]
    source = target - 1 if shift else target
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, source), target


class CachedForward:
    """Fast-dLLM's block-wise K/V cache, with megadfm's rules (megadfm/dfm/sampling/cached_forward.py):

    - row r's block [a, b) covers columns [s, e), s = gen_start + a, e = gen_start + min(b, n_r);
    - a row's FIRST evaluation in a block is one full forward over its whole row at that step's t
      (``nfe_full``), shared by every row evaluated for the first time in that step; it gives the
      step's predictions and stores every layer's K/V of those rows;
    - every later evaluation in the block runs only the columns [p, q), p = s - 1 with shift_logits
      (the output at s - 1 predicts s) else s; q = L (prefix) or e (dual), attending to the stored
      K/V of the columns < p (prefix) or outside [p, q) (dual), at the step's t;
    - rows whose first full forward was shared and that have equal (p, q) form a group, and each
      group's later evaluations are one call (``nfe_block``); the cache is never refreshed inside a block.

    The stored K/V are those of the block's first step, so later steps are an APPROXIMATION."""

    def __init__(self, model, layout, shift, kind):
        self.model, self.layout, self.shift, self.kind = model, layout, shift, kind
        self.nfe_full = self.nfe_block = self.rows = 0
        self.block = None  # the block the caches were built for
        self.groups = []  # dicts: rows (sorted global indices), lo, hi, kv (per layer (k, v) [G, Hkv, L, D]), real [G, L]
        self.cached = torch.zeros(layout.generate.shape[0], dtype=torch.bool, device=layout.generate.device)

    def hidden_for(self, x, rows, t, targets, block):
        if block != self.block:  # a new block: every cache is stale
            self.block, self.groups = block, []
            self.cached.zero_()
        L = x.shape[1]
        target = targets.reshape(-1).nonzero(as_tuple=True)[0]
        source = target - 1 if self.shift else target
        local, col = source // L, source % L  # sub-batch row and column of each predicting output
        fresh = ~self.cached.index_select(0, rows)  # decided before this call builds any cache
        parts = []
        for group in self.groups:  # groups in the order they were built, then the full forward
            member = torch.isin(rows, group["rows"]) & ~fresh
            if bool(member.any()):
                parts.append(self._columns(x, rows, t, member.nonzero(as_tuple=True)[0], group, local, col))
        if bool(fresh.any()):
            parts.append(self._full(x, rows, t, fresh.nonzero(as_tuple=True)[0], targets, block, local))
        hidden = None
        for which, values in parts:
            if hidden is None:
                hidden = values.new_empty((source.numel(), values.shape[-1]))
            hidden[which] = values
        return hidden, target

    def _full(self, x, rows, t, sub, targets, block, local):
        grows = rows.index_select(0, sub)
        real = self.layout.real.index_select(0, grows)
        hidden, kv = self.model.model.forward_with_kv(x.index_select(0, grows), t.index_select(0, sub), real)
        self.nfe_full += 1
        self.rows += int(grows.numel())
        a, b = block
        start = self.layout.gen_start.index_select(0, grows)
        lo = start + a - (1 if self.shift else 0)
        hi = (torch.full_like(lo, x.shape[1]) if self.kind == "prefix"
              else start + torch.clamp(self.layout.new_tokens.index_select(0, grows), max=b))
        members = {}  # (lo, hi) -> positions in grows, in row order (dicts keep insertion order)
        for i, key in enumerate(zip(lo.tolist(), hi.tolist())):
            members.setdefault(key, []).append(i)
        for (g_lo, g_hi), index in members.items():
            index = torch.tensor(index, dtype=torch.long, device=grows.device)
            self.groups.append({"rows": grows.index_select(0, index), "lo": g_lo, "hi": g_hi,
                                "kv": [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv],
                                "real": real.index_select(0, index)})
        self.cached.index_fill_(0, grows, True)
        which = torch.isin(local, sub)  # sub is sorted and sources are row-major: the order lines up
        picked, _ = gather_predictions(hidden, targets.index_select(0, sub), self.shift)
        return which, picked

    def _columns(self, x, rows, t, sub, group, local, col):
        grows = rows.index_select(0, sub)
        at = torch.searchsorted(group["rows"], grows)  # a group row not run this step keeps its cache
        lo, hi = group["lo"], group["hi"]
        columns = torch.arange(lo, hi, device=x.device)
        hidden = self.model.model.forward_columns(
            x.index_select(0, grows)[:, lo:hi], t.index_select(0, sub), columns,
            [(k.index_select(0, at), v.index_select(0, at)) for k, v in group["kv"]], group["real"].index_select(0, at))
        self.nfe_block += 1
        self.rows += int(grows.numel())
        where = torch.full((rows.numel(),), -1, dtype=torch.long, device=rows.device)
        where[sub] = torch.arange(sub.numel(), device=rows.device)
        which = where[local] >= 0
        cols = col[which] - lo
        if bool(((cols < 0) | (cols >= hi - lo)).any()):
            raise ValueError(f"cache: a target of block {self.block} is predicted from outside the recomputed columns "
                             f"[{lo}, {hi}); the block methods only ask for positions of the current block")
        return which, hidden[where[local[which]], cols]
