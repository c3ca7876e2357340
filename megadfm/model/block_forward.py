"""Block-wise forward with a K/V cache: run the model on a subset of positions only (Fast-dLLM).

Two entry points, also methods of :class:`Qwen3DFM` (``model.forward_with_cache``, ``model.forward_block``):

- :func:`forward_with_cache` (input_ids [B, L]) -> (hidden [B, L, H], :class:`KVCache`): the full
  forward, keeping every layer's K/V (after k-norm and rotary) of ``cache_positions`` (default all).
- :func:`forward_block` (ids [B, Lb] at ``positions`` [Lb]) -> hidden [B, Lb, H]: embedding and every
  layer for those positions only; each layer's queries (the block) attend to the cached K/V of
  every cached position NOT in the block plus the block's own fresh K/V. Cached positions that
  are also in the block are ignored (the fresh ones win), so one cache built over the whole
  sequence serves as a dual cache for any block.

Rules, as in the full forward: rotary at the absolute positions (column index in the row, the
full forward's default position_ids without cu_seqlens); GQA; AdaLN(t) with the given t;
bidirectional, or causal when ``attention_mode`` is causal (a query sees positions <= its own);
padding keys (attention_mask False) are never attended to, and a query always sees itself.
Batches are one document per row (right padding + attention_mask): packed multi-document rows
(cu_seqlens with boundaries inside a row) are refused, since a cache has no segment structure.

Exactness: forward_block equals the full forward at the block positions (up to float rounding)
whenever the cache was built from the same input_ids and t, and covers every position the block
attends to outside itself. Once the block's tokens (or t) change, the cached K/V of a bidirectional
model are stale (they attended to the old block, at the old t): an approximation, see
megadfm/model/kv_cache.py. Plain torch (SDPA with a dense mask); the attention is the torch
reference even under ``kernels: fused``, the other ops follow the model's kernel set.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from megadfm.model.kernels.attention import attention_over_keys, query_key_mask
from megadfm.model.kernels.rotary import rotary_cos_sin
from megadfm.model.kv_cache import KVCache, Positions, as_positions

KV = Tuple[torch.Tensor, torch.Tensor]


def forward_with_cache(model, input_ids: torch.Tensor, t: Optional[torch.Tensor] = None,
                       attention_mask: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                       cache_positions: Optional[Positions] = None,
                       block_size: Optional[int] = None) -> Tuple[torch.Tensor, KVCache]:
    """Full forward of input_ids [B, L] (t [B]; attention_mask bool [B, L], False on padding) returning the
    hidden states [B, L, H] after the final norm and a KVCache of ``cache_positions`` (default: all L).

    ``cu_seqlens`` may only be None or the row starts [0, L, 2L, ..., B*L] (one document per row).
    The hidden states come from this file's path over all L positions (torch SDPA attention), equal to
    ``model(input_ids, t, attention_mask=...)`` up to float rounding (model.forward may use flash-attn).
    ``block_size``: attend block-causally (block diffusion's clean stream: the prompt prefill of
    megadfm/dfm/sampling/block_causal_forward.py).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    _check_one_document_per_row(cu_seqlens, B, L)
    positions = torch.arange(L, device=input_ids.device)
    key_valid = _valid(attention_mask, B, L, input_ids.device, "attention_mask")
    mask = query_key_mask(positions, positions, None if attention_mask is None else key_valid, _causal(model), block_size)
    hidden, fresh = _run(model, input_ids, t, positions, None, mask)
    cache = KVCache([k for k, _ in fresh], [v for _, v in fresh], positions, key_valid, L,
                    None if t is None else t.detach().clone())
    return hidden, (cache if cache_positions is None else cache.select(cache_positions))


def forward_block(model, input_ids: torch.Tensor, t: Optional[torch.Tensor], positions: Positions, cache: KVCache,
                  attention_mask: Optional[torch.Tensor] = None, append: bool = False):
    """hidden [B, Lb, H] (after the final norm) of input_ids [B, Lb] placed at ``positions``; with ``append``,
    (hidden, the cache with the block's fresh K/V appended): block diffusion commits a finished block so
    (``positions`` must then come after every cached position; the K/V are those of this call's t).

    positions: Lb distinct columns in [0, cache.seq_len), any order, not necessarily contiguous (a
        1-D int tensor, a range or a list), shared by every row; ``input_ids[:, j]`` is the token at
        ``positions[j]`` and ``hidden[:, j]`` its output. With shift_logits a block of new tokens
        [s, e) is predicted by the outputs at [s-1, e-1): pass ``range(s - 1, e)`` and slice.
    t: [B] times, as in the full forward (the cache keeps the K/V of the t it was built at).
    cache: from :func:`forward_with_cache` (or a ``prefix``/``outside``/``select`` of one).
    attention_mask: bool [B, Lb] for the block's own positions (False: padding); None: all valid.
        The cached positions carry their own validity from when the cache was built.
    """
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache (from forward_with_cache), got {type(cache).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, Lb], got shape {tuple(input_ids.shape)}")
    B, Lb = input_ids.shape
    device = input_ids.device
    positions = as_positions(positions, device, "positions")
    if positions.numel() != Lb or Lb == 0:
        raise ValueError(f"positions has {positions.numel()} entries; input_ids has Lb={Lb} columns (need Lb >= 1, one position each)")
    if torch.unique(positions).numel() != Lb:
        raise ValueError(f"positions must be distinct, got {positions.tolist()}")
    if int(positions.min()) < 0 or int(positions.max()) >= cache.seq_len:
        raise ValueError(f"positions must lie in [0, cache.seq_len={cache.seq_len}), got {int(positions.min())}..{int(positions.max())}")
    if cache.batch_size != B:
        raise ValueError(f"cache was built for batch size {cache.batch_size}, input_ids has B={B}")
    if cache.num_layers != len(model.layers):
        raise ValueError(f"cache has {cache.num_layers} layers, the model {len(model.layers)}")
    if cache.positions.device != device:
        raise ValueError(f"cache is on {cache.positions.device}, input_ids on {device}")
    block_valid = _valid(attention_mask, B, Lb, device, "attention_mask")
    # Keys: the cached positions the block does not recompute, then the block's fresh ones.
    keep = (~torch.isin(cache.positions, positions)).nonzero().squeeze(1)
    key_positions = torch.cat([cache.positions[keep], positions])
    key_valid = torch.cat([cache.key_valid[:, keep], block_valid], dim=1)
    mask = query_key_mask(positions, key_positions, None if bool(key_valid.all()) else key_valid, _causal(model))
    if keep.numel() == len(cache):  # a prefix/outside cache: nothing to drop, so no copy of every layer's K/V per step
        past = list(zip(cache.keys, cache.values))
    else:
        past = [(k.index_select(2, keep), v.index_select(2, keep)) for k, v in zip(cache.keys, cache.values)]
    hidden, fresh = _run(model, input_ids, t, positions, past, mask)
    if append:
        after = len(cache) == 0 or int(positions.min()) > int(cache.positions.max())
        if not after or bool((positions[1:] <= positions[:-1]).any()):
            raise ValueError(f"append needs increasing positions after every cached one, got {positions.tolist()[:8]} "
                             f"after a cache of {len(cache)} positions")
        grown = KVCache([torch.cat([pk, k], 2) for pk, (k, _) in zip(cache.keys, fresh)],
                        [torch.cat([pv, v], 2) for pv, (_, v) in zip(cache.values, fresh)],
                        torch.cat([cache.positions, positions]), torch.cat([cache.key_valid, block_valid], dim=1),
                        cache.seq_len, cache.t)
        return hidden, grown
    return hidden


def _run(model, input_ids: torch.Tensor, t: Optional[torch.Tensor], positions: torch.Tensor,
         past: Optional[List[KV]], mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, List[KV]]:
    """The model's forward for queries at ``positions`` over [past K/V ; fresh K/V]; returns (hidden, fresh K/V per layer)."""
    cfg = model.cfg
    B, L = input_ids.shape
    if int(positions.max()) >= cfg.max_position_embeddings:
        raise ValueError(f"position {int(positions.max())} exceeds model.max_position_embeddings={cfg.max_position_embeddings}")
    kernels = model.kernels_for(input_ids.device)
    x = model.embed_tokens(input_ids)
    cos, sin = rotary_cos_sin(positions.expand(B, L), cfg.resolved_head_dim, cfg.rope_theta, x.dtype)
    if t is not None and t.dim() != 1:
        raise ValueError(f"the cached forward takes one t per row (t [B] = [{B}]), got shape {tuple(t.shape)}")
    cond = model._time_condition(t, B, L)
    fresh: List[KV] = []
    for i, layer in enumerate(model.layers):
        x, kv = _layer(layer, x, cos, sin, kernels, cond, None if past is None else past[i], mask)
        fresh.append(kv)
    return model.norm(x, kernels), fresh


def _layer(layer, x, cos, sin, kernels, cond, past: Optional[KV], mask) -> Tuple[torch.Tensor, KV]:
    """Block.forward (qwen3_dfm.py) step for step, with the attention over [past ; fresh] keys; the
    equality tests against the full forward (tests/model/test_kv_cache.py) keep the two in step."""
    if cond is None:
        attn, kv = _attention(layer.self_attn, layer.input_layernorm(x, kernels), cos, sin, kernels, past, mask)
        x = x + attn
        return x + layer.mlp(layer.post_attention_layernorm(x, kernels)), kv
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = layer.adaln(cond).unbind(1)
    h = layer.input_layernorm(x, kernels, shift_a, scale_a)
    attn, kv = _attention(layer.self_attn, h, cos, sin, kernels, past, mask)
    x = kernels.gated_residual(x, attn, gate_a)
    h = layer.post_attention_layernorm(x, kernels, shift_m, scale_m)
    return kernels.gated_residual(x, layer.mlp(h), gate_m), kv


def _attention(attn, x, cos, sin, kernels, past: Optional[KV], mask) -> Tuple[torch.Tensor, KV]:
    """Attention.forward (qwen3_dfm.py) with keys/values [past ; fresh]; returns (output, fresh (k, v))."""
    B, L, _ = x.shape
    q = attn.q_norm(attn.q_proj(x).view(B, L, attn.n_heads, attn.head_dim), kernels).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, L, attn.n_kv_heads, attn.head_dim), kernels).transpose(1, 2)
    v = attn.v_proj(x).view(B, L, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = kernels.rotary(q, k, cos, sin)
    keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
    out = attention_over_keys(q, keys, values, mask)  # [B, L, Hq, D]
    return attn.o_proj(out.reshape(B, L, attn.n_heads * attn.head_dim)), (k, v)


def _causal(model) -> bool:
    return model.cfg.attention_mode == "causal"


def _valid(attention_mask: Optional[torch.Tensor], B: int, L: int, device: torch.device, name: str) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(B, L, dtype=torch.bool, device=device)
    if tuple(attention_mask.shape) != (B, L):
        raise ValueError(f"{name} has shape {tuple(attention_mask.shape)}, expected [{B}, {L}] (the input_ids it goes with)")
    return attention_mask.to(device=device, dtype=torch.bool)


def _check_one_document_per_row(cu_seqlens: Optional[torch.Tensor], B: int, L: int) -> None:
    if cu_seqlens is None:
        return
    rows = torch.arange(0, B * L + 1, L, dtype=torch.long)
    got = cu_seqlens.detach().to("cpu", torch.long).flatten()
    if got.numel() != rows.numel() or not torch.equal(got, rows):
        raise ValueError(f"cu_seqlens {got.tolist()[:10]}: the KV cache supports one document per row only (cu_seqlens None "
                         f"or the row starts {rows.tolist()[:10]}), not packed multi-document rows; for generation put one "
                         "document per row, pad on the right and pass attention_mask")
