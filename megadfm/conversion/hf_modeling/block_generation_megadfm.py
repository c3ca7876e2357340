"""Block diffusion in ``model.diffusion_generate`` (``config.dfm_mode == "block"``), self-contained.

Copied into every HF export next to generation_megadfm.py, which imports it. Imports only torch: the
folder has no megadfm. It re-implements megadfm's block-mode sampling (megadfm/dfm/block_diffusion.py,
megadfm/dfm/sampling/block_causal_forward.py, SamplingContext.block_plan in
megadfm/dfm/sampling/context.py) so that the same seed and settings give the SAME tokens;
tests/conversion/test_block_diffusion_export.py checks it against the in-tree sampler.

A block-diffusion model is bidirectional inside blocks of ``config.block_size`` tokens and causal across
them. Block k is the columns ``[k * block_size, (k + 1) * block_size)`` of every row (one document per
row, the prompt from column 0), so a prompt may end inside a block, and the rows of a batch decode their
block k together, left to right. Only the confidence and threshold methods decode block by block;
euler (every position at once), ``cache="dual"`` (a block model never attends past its block) and a
``block_length`` other than 0 or the block size are refused.

- ``cache="none"`` (:class:`BlockCausalForward`): every evaluation is the training forward, the row twice
  over ``[x ‖ x]``: the noisy copy at the step's t, the clean copy at t = 1, under the two-stream pattern
  (:func:`two_stream_attention`). The reference (``nfe_full``).
- ``cache="prefix"`` (:class:`BlockCacheForward`): EXACT, since nothing in blocks <= k attends to a later
  block and the clean stream never sees a noisy token. The first evaluation runs one prefill pass over the
  blocks before the current one, block-causal at t = 1 (``nfe_full``); moving to block k + 1 commits block
  k, one block-only pass at t = 1 appending its keys and values (``nfe_block``); every step runs only the
  current block's columns at the step's t over that cache (``nfe_block``).

Which output predicts column i (:func:`prediction_sources`): without shift_logits the noisy stream at i;
with it, the noisy stream at i - 1 when i - 1 is in the same block, else (i opens a block) the clean
stream at i - 1, which has seen exactly the clean row before i.
"""

import torch


def model_block_size(config, sampler_defaults):
    """config.json's block size for a block-diffusion model (``dfm_mode`` block), None for full mode (also a folder
    exported before block diffusion, which has no ``dfm_mode``); generation_config's ``dfm_sampler`` copy must agree."""
    mode = getattr(config, "dfm_mode", "full")
    size = getattr(config, "block_size", None) if mode == "block" else None
    recorded = (sampler_defaults.get("mode", mode), sampler_defaults.get("block_size", size))
    if recorded != (mode, size):
        raise ValueError(f"generation_config dfm_sampler mode / block_size {recorded} disagree with config.json's "
                         f"dfm_mode / block_size {(mode, size)}: the folder was edited by hand?")
    return size


def check_block_settings(s, block_size, block_methods):
    """megadfm's refusals for a block model (megadfm/dfm/sampler.py make_forward), each naming its argument;
    ``block_methods``: the methods that decode block by block (generation_megadfm.BLOCK_METHODS)."""
    if s["block_length"] not in (0, block_size):
        raise ValueError(f"block_length: a block-diffusion model decodes in its own blocks of config.block_size = "
                         f"{block_size}; leave block_length 0 (or {block_size}), got {s['block_length']}")
    if s["method"] not in block_methods:
        raise ValueError(f"method: {s['method']} decodes every new position at once; a block-diffusion model "
                         f"(config.dfm_mode: block) decodes block by block: use one of {', '.join(block_methods)}")
    if s["cache"] == "dual":
        raise ValueError("cache: dual caches what follows the block, which a block-diffusion model never attends "
                         "to; use cache prefix (exact in block mode) or none")


def block_plan(layout, block_size):
    """The model's blocks holding new positions, left to right, as per-row offsets ((long [B, 1], long [B, 1]),
    compared with ``layout.offset`` like the semi-AR blocks' ints), and how many of them hold new positions
    of each row (long [B], the confidence method's per-row step split)."""
    start, new_tokens = layout.gen_start, layout.new_tokens
    first, last = start // block_size, (start + new_tokens - 1) // block_size
    shift = start[:, None]
    blocks = [(k * block_size - shift, (k + 1) * block_size - shift)
              for k in range(int(first.min()), int(last.max()) + 1)]
    return blocks, last - first + 1


def block_index(layout, block, block_size):
    """The absolute block k of a :func:`block_plan` block (its offsets are column k * block_size - gen_start)."""
    return int(block[0][0, 0] + layout.gen_start[0]) // block_size


def two_stream_attention(segment, block):
    """bool [B, 2L, 2L] (query x key) over ``[x_t ‖ x_0]``: a noisy token of block k sees the noisy tokens of
    block k and the clean tokens of blocks < k; a clean token of block k the clean tokens of blocks <= k;
    a clean token never a noisy one; never across ``segment`` [B, L] (padding is its own segment)."""
    same = segment[:, :, None] == segment[:, None, :]
    query_block, key_block = block[:, :, None], block[:, None, :]
    top = torch.cat([same & (key_block == query_block), same & (key_block < query_block)], dim=2)
    clean = same & (key_block <= query_block)
    bottom = torch.cat([torch.zeros_like(clean), clean], dim=2)
    return torch.cat([top, bottom], dim=1)


def prediction_sources(targets, block, shift):
    """Flat ``(source, target)``: the two-stream output at ``source`` (into [R * 2L]) predicts the token at
    ``target`` (into [R * L]), for every True of ``targets`` [R, L], row-major (the module docstring's rule)."""
    n_rows, seq_len = targets.shape
    if shift and bool(targets[:, 0].any()):
        raise ValueError("with shift_logits the first token of a row cannot be predicted; it must never be decoded")
    target = targets.reshape(-1).nonzero(as_tuple=True)[0]
    row, col = target // seq_len, target % seq_len
    if not shift:
        source_col = col
    else:
        flat_block = block.reshape(-1)
        opens_block = flat_block.index_select(0, target - 1) != flat_block.index_select(0, target)
        source_col = torch.where(opens_block, seq_len + col - 1, col - 1)
    return row * 2 * seq_len + source_col, target


def _times(model, t):
    """t as the backbone takes it: None for a model without time conditioning (it ignores t)."""
    return t if model.model.time_embedding is not None else None


class BlockCausalForward:
    """``cache="none"``: the two-stream training forward over whole rows at every evaluation (``nfe_full``)."""

    def __init__(self, model, layout, shift, block_size):
        self.model, self.layout, self.shift, self.block_size = model, layout, shift, block_size
        self.nfe_full = self.nfe_block = self.rows = 0
        L = layout.input_ids.shape[1]
        self.columns = torch.arange(L, device=layout.input_ids.device)
        self.blocks = (self.columns // block_size)[None, :].expand_as(layout.input_ids)
        self.segments = (~layout.real).long()  # padding is its own segment: no real token attends to it

    def hidden_for(self, x, rows, t, targets, block):
        """Hidden states [N, H] predicting ``targets`` (bool [R, L] over ``x[rows]``) and their flat indices [N]."""
        sub = x.index_select(0, rows)
        R, L = sub.shape
        positions = self.columns[None, :].expand(R, L)
        blocks = self.blocks.index_select(0, rows)
        times = torch.cat([t.to(torch.float32)[:, None].expand(R, L), torch.ones(R, L, device=sub.device)], dim=1)
        allowed = two_stream_attention(self.segments.index_select(0, rows), blocks)
        hidden = self.model.model(torch.cat([sub, sub], dim=1), t=_times(self.model, times),
                                  position_ids=torch.cat([positions, positions], dim=1),
                                  attention_allowed=allowed).last_hidden_state
        self.nfe_full += 1
        self.rows += R
        source, target = prediction_sources(targets, blocks, self.shift)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, source), target


class KVCache:
    """The clean stream's per-layer (k, v) [B, Hkv, P, D] (after k-norm and rotary) of columns ``positions``
    [P] (0..P-1: whole blocks), and which of them are real (``valid`` [B, P])."""

    def __init__(self, kv, positions, valid):
        self.kv, self.positions, self.valid = kv, positions, valid

    def rows(self, rows):
        return KVCache([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv], self.positions,
                       self.valid.index_select(0, rows))


class BlockCacheForward:
    """``cache="prefix"``: the exact clean-stream cache of the finished blocks (module docstring)."""

    def __init__(self, model, layout, shift, block_size):
        self.model, self.layout, self.shift, self.block_size = model, layout, shift, block_size
        self.nfe_full = self.nfe_block = self.rows = 0
        self.cache = None  # clean stream of columns [0, committed * block_size), every row
        self.committed = 0  # blocks in the cache
        self.last_clean = None  # [B, H]: the clean output at the cache's last column (predicts the next block's first)

    def _columns(self, ids, t, positions, cache, valid):
        """hidden [B, C, H] and fresh per-layer (k, v) of ``ids`` [B, C] at ``positions`` [C] (after every cached
        column), attending to ``cache`` (None: to themselves only) and to each other bidirectionally."""
        past = None if cache is None else cache.kv
        key_positions = positions if cache is None else torch.cat([cache.positions, positions])
        key_valid = valid if cache is None else torch.cat([cache.valid, valid], dim=1)
        return self.model.model.forward_over_keys(ids, _times(self.model, t), positions, past, key_positions,
                                                  None if bool(key_valid.all()) else key_valid)

    def _advance(self, x, k):
        """Bring the cache up to block k (columns < k * block_size): one prefill pass, then one commit per block."""
        B, L = x.shape
        ones = torch.ones(B, device=x.device)
        if self.cache is None and k > 0:
            end = min(k * self.block_size, L)
            positions = torch.arange(end, device=x.device)
            valid = self.layout.real[:, :end]
            # the prefill attends block-causally: each clean block sees the blocks before it and itself
            hidden, kv = self.model.model.forward_over_keys(x[:, :end], _times(self.model, ones), positions, None,
                                                            positions, valid, self.block_size)
            self.nfe_full += 1
            self.rows += B
            self.cache, self.committed, self.last_clean = KVCache(kv, positions, valid), k, hidden[:, end - 1]
        while self.committed < k:  # commit finished blocks (clean tokens, t = 1), appending their K/V
            lo, hi = self.committed * self.block_size, min((self.committed + 1) * self.block_size, L)
            positions = torch.arange(lo, hi, device=x.device)
            valid = self.layout.real[:, lo:hi]
            hidden, kv = self._columns(x[:, lo:hi], ones, positions, self.cache, valid)
            self.nfe_block += 1
            self.rows += B
            self.cache = KVCache([(torch.cat([pk, k_], 2), torch.cat([pv, v_], 2))
                                  for (pk, pv), (k_, v_) in zip(self.cache.kv, kv)],
                                 torch.cat([self.cache.positions, positions]), torch.cat([self.cache.valid, valid], dim=1))
            self.committed, self.last_clean = self.committed + 1, hidden[:, -1]

    def hidden_for(self, x, rows, t, targets, block):
        """As BlockCausalForward.hidden_for, from block k's columns over the cache of the blocks before it."""
        k = block_index(self.layout, block, self.block_size)
        if k < self.committed:
            raise ValueError(f"block {k} was already committed to the cache (blocks are decoded left to right)")
        self._advance(x, k)
        L = x.shape[1]
        lo, hi = k * self.block_size, min((k + 1) * self.block_size, L)
        sub = x.index_select(0, rows)
        valid = self.layout.real.index_select(0, rows)[:, lo:hi]
        if self.cache is None:  # block 0: nothing before it, the block's columns alone (megadfm's plain forward)
            hidden = self.model.model(sub[:, lo:hi], t=_times(self.model, t), attention_mask=valid).last_hidden_state
        else:
            cache = self.cache if rows.numel() == x.shape[0] else self.cache.rows(rows)
            hidden, _ = self._columns(sub[:, lo:hi], t, torch.arange(lo, hi, device=x.device), cache, valid)
        self.nfe_block += 1
        self.rows += int(rows.numel())
        blocks = (torch.arange(L, device=x.device) // self.block_size)[None, :].expand(rows.numel(), L)
        source, target = prediction_sources(targets, blocks, self.shift)
        row, col = source // (2 * L), source % (2 * L)
        if bool(((col < L) & ((col < lo) | (col >= hi))).any()) or bool(((col >= L) & (col - L != lo - 1)).any()):
            raise ValueError(f"cache: a target is predicted from outside block {k}'s columns [{lo}, {hi}); the block "
                             "methods only ask for positions of the current block")
        noisy = col < L
        out = hidden.new_empty((source.numel(), hidden.shape[-1]))
        out[noisy] = hidden[row[noisy], col[noisy] - lo]
        if bool((~noisy).any()):
            out[~noisy] = self.last_clean.index_select(0, rows.index_select(0, row[~noisy]))
        return out, target


def make_block_forward(model, layout, shift, block_size, cache):
    return (BlockCacheForward if cache == "prefix" else BlockCausalForward)(model, layout, shift, block_size)
