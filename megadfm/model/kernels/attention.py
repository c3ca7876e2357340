"""Varlen attention over a [B, L] batch of packed documents (bidirectional or causal).

Who attends to whom is one :class:`AttentionLayout`, built once per forward and shared by every
layer: query i sees key j iff they are in the same row and the same segment of ``cu_seqlens``
(flattened over B*L, as flash-attn varlen), key j is not padding (``attention_mask``), and, when
causal, j <= i. Padding is never attended to by a real token.

``attention(q, k, v, layout)``: q [B, Hq, L, D], k/v [B, Hkv, L, D] (GQA: Hkv divides Hq) ->
[B, L, Hq, D]. Outputs at padding positions are finite but meaningless (never in the loss).

Reference (torch), in one of two forms that compute the same function, chosen per batch by
:func:`per_segment_is_cheaper`:

- per segment: one ``F.scaled_dot_product_attention`` call per segment on [1, H, n, D] views, with
  no mask when every key of the segment is valid (a small [n, n] mask otherwise). It computes only
  the sum of n^2 query-key pairs of the segments; a block-diagonal mask computes all L^2 of each row
  and throws most away (SDPA's CPU kernel skips no masked block). Measured on CPU at 2 x 512
  tokens, 3 documents a row, 8/4 heads x 64: 31 ms instead of 65 ms per layer, forward + backward.
- dense mask: one SDPA call with a [B, 1, L, L] boolean block-diagonal mask; cheaper when the
  segments are so many and short that the per-call overhead outweighs the pairs saved.

In both, a query with no visible key (a padding position masked by ``attention_mask``) is let to
see itself, so its softmax row is never all -inf (which gives NaN, and NaN gradients).
Fused (CUDA only; attention_fused.py): PyTorch's ``torch.nn.attention.varlen.varlen_attn`` on the
unpadded tokens by default, flash-attn's ``flash_attn_varlen_func`` when named in model.kernel_impls.
"""

from __future__ import annotations

import itertools
import logging
from typing import List, Optional

import torch
import torch.nn.functional as F

from megadfm.model.kernels import attention_fused
from megadfm.model.kernels.backend import Impl, first_available

logger = logging.getLogger("megadfm.model.kernels")

SEGMENT_CALL_PAIRS = 2048
"""What one extra SDPA call costs, in query-key pairs of a masked dense SDPA computed in the same
time. Measured on CPU, fp32, forward + backward, 8/4 heads x 64: about 0.2-0.26 ms per call against
1.0-1.2e-4 ms per pair, at L = 512 and 2048 (257 segments of ~4 tokens in 2 x 512 tie). Wider heads
make a pair dearer and the call relatively cheaper, so the rule is conservative for them."""

_LOGGED_FORMS = set()  # torch forms already logged in this process (True: per segment, False: dense)


class AttentionLayout:
    """Segments, key padding and causality of one batch, in the form the chosen kernel needs.

    Args:
        batch_size, seq_len: the [B, L] shape of the batch.
        causal: attend to keys j <= i only (AR parity / warm-up) instead of bidirectionally.
        future_visible: bool [B, L, L], with causal: future keys (j > i) that are visible too
            (attention annealing; forces the dense torch form).
        allowed: bool [B, L, L] (query x key), without causal: an explicit pattern, ANDed with the
            segment and key-padding rules (block diffusion's two-stream mask; forces the dense torch form).
        cu_seqlens: int [N+1] boundaries over the flattened B*L tokens (documents and padding runs
            are segments; every row start b*L must be a boundary). None: one segment per row.
        max_seqlen: longest segment (computed when None).
        attention_mask: bool [B, L], False on padding keys. None: every token is a valid key.
        varlen: build the unpadded flash-attn form instead of a torch form.
        per_segment: torch form: per-segment SDPA calls (True) or the dense block-diagonal mask
            (False); None: :func:`per_segment_is_cheaper` decides. Forcing one is for tests.

    Exactly one of ``dense_mask`` / ``segment_lengths`` describes a torch form; both are None when
    the rows are plain (no packing inside a row, no padding: SDPA's is_causal or no mask is exact).
    """

    def __init__(self, batch_size: int, seq_len: int, device: torch.device, causal: bool,
                 cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None,
                 attention_mask: Optional[torch.Tensor] = None, varlen: bool = False,
                 per_segment: Optional[bool] = None, future_visible: Optional[torch.Tensor] = None,
                 allowed: Optional[torch.Tensor] = None, flex_mask=None):
        self.batch_size, self.seq_len, self.causal = batch_size, seq_len, causal
        # a FlexAttention BlockMask (attention_pattern.py): the whole pattern, no torch form
        self.flex_mask = flex_mask
        if allowed is not None:
            if causal or varlen or future_visible is not None or tuple(allowed.shape) != (batch_size, seq_len, seq_len):
                raise ValueError("allowed (an explicit attention pattern) needs causal=False, varlen=False, no "
                                 f"future_visible and shape [B, L, L] = [{batch_size}, {seq_len}, {seq_len}], got "
                                 f"{tuple(allowed.shape)}")
            per_segment = False
        self.allowed = None if allowed is None else allowed.to(device=device, dtype=torch.bool)
        if future_visible is not None:  # attention annealing: an explicit mask, so the dense torch form
            if not causal or varlen or tuple(future_visible.shape) != (batch_size, seq_len, seq_len):
                raise ValueError("future_visible (attention annealing) needs causal=True, varlen=False and shape "
                                 f"[B, L, L] = [{batch_size}, {seq_len}, {seq_len}], got {tuple(future_visible.shape)}")
            per_segment = False
        self.future_visible = future_visible
        total = batch_size * seq_len
        if cu_seqlens is not None:
            cu_seqlens = _check_cu_seqlens(cu_seqlens, batch_size, seq_len).to(device)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (batch_size, seq_len):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected [B, L] = [{batch_size}, {seq_len}]")
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
        self.cu_seqlens = cu_seqlens
        self.key_valid = attention_mask
        # segment id of every token; None when each row is one segment
        self.segment_ids = None
        if cu_seqlens is not None:
            self.segment_ids = segment_ids(cu_seqlens, batch_size, seq_len)
        self.dense_mask: Optional[torch.Tensor] = None
        self.segment_lengths: Optional[List[int]] = None  # over the flattened B*L tokens
        self.segment_masks: Optional[List[Optional[torch.Tensor]]] = None
        self.varlen = self._varlen(device, max_seqlen) if varlen else None
        if not varlen and flex_mask is None:
            self._torch_form(device, per_segment)

    def _torch_form(self, device: torch.device, per_segment: Optional[bool]) -> None:
        """Pick and build the torch form (plain, per-segment or dense mask); log each choice once."""
        B, L = self.batch_size, self.seq_len
        lengths = [L] * B if self.cu_seqlens is None else (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()
        if len(lengths) == B and self.key_valid is None and self.future_visible is None and self.allowed is None:
            return  # plain rows (cu_seqlens, if any, are just the row starts)
        if per_segment is None:
            per_segment = per_segment_is_cheaper(lengths, B, L)
            _log_form_once(per_segment, lengths, B, L)
        if per_segment:
            self.segment_lengths = lengths
            self.segment_masks = self._segment_masks(lengths, device)
        else:
            self.dense_mask = self._dense_mask(device)

    def _segment_masks(self, lengths: List[int], device: torch.device) -> List[Optional[torch.Tensor]]:
        """Per segment: None when all its keys are valid (SDPA then needs no mask: plain or is_causal),
        else bool [1, 1, n, n], the segment's block of :meth:`_dense_mask` (same rule, same self-visibility)."""
        if self.key_valid is None:
            return [None] * len(lengths)
        valid = self.key_valid.flatten()
        bounds = [0] + list(itertools.accumulate(lengths))
        # valid keys per segment from one cumulative sum: one host transfer, not one per segment
        seen = F.pad(valid.long().cumsum(0), (1, 0))[torch.tensor(bounds, device=device)]
        counts = (seen[1:] - seen[:-1]).tolist()
        masks: List[Optional[torch.Tensor]] = []
        for start, end, count in zip(bounds[:-1], bounds[1:], counts):
            n = end - start
            if count == n:
                masks.append(None)
                continue
            allowed = valid[start:end][None, :].expand(n, n)
            if self.causal:
                allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=device).tril()
            masks.append((allowed | torch.eye(n, dtype=torch.bool, device=device))[None, None])
        return masks

    def segment_positions(self) -> torch.Tensor:
        """Position ids restarting at 0 at every segment start (the batch contract's position_ids)."""
        total = self.batch_size * self.seq_len
        flat = torch.arange(total, device=self.cu_seqlens.device)
        return (flat - self.cu_seqlens.long()[self.segment_ids.flatten()]).view(self.batch_size, self.seq_len)

    def _dense_mask(self, device: torch.device) -> torch.Tensor:
        """bool [B, 1, L, L]: same segment, valid key, (causal) j <= i; and always i sees i."""
        L = self.seq_len
        if self.segment_ids is not None:
            allowed = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        else:
            allowed = torch.ones(self.batch_size, L, L, dtype=torch.bool, device=device)
        if self.key_valid is not None:
            allowed = allowed & self.key_valid[:, None, :]
        if self.allowed is not None:
            allowed = allowed & self.allowed
        if self.causal:
            visible = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            if self.future_visible is not None:  # annealing: some future keys too (megadfm/model/attention_anneal.py)
                visible = visible | self.future_visible
            allowed = allowed & visible
        # a query with no visible key (padding under attention_mask) sees itself instead of NaN
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=device)
        return allowed[:, None]

    def _varlen(self, device: torch.device, max_seqlen: Optional[int]):
        B, L = self.batch_size, self.seq_len
        cu = self.cu_seqlens if self.cu_seqlens is not None else torch.arange(0, B * L + 1, L, dtype=torch.int32, device=device)
        if self.key_valid is None:
            if max_seqlen is None:
                max_seqlen = int((cu[1:] - cu[:-1]).max())
            return cu.to(torch.int32), int(max_seqlen), None
        # Unpad: keep valid tokens (order preserved, so causality within a segment is kept), and
        # re-segment them; segments with no valid token disappear.
        seg = self.segment_ids.flatten() if self.segment_ids is not None else torch.arange(B, device=device).repeat_interleave(L)
        valid = self.key_valid.flatten()
        index = valid.nonzero().squeeze(1)
        counts = torch.bincount(seg[index], minlength=int(cu.numel()) - 1)
        counts = counts[counts > 0]
        new_cu = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
        return new_cu, int(counts.max()) if counts.numel() else 0, index


def segment_ids(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """long [B, L]: the segment (document or padding run) of each token of a batch with these ``cu_seqlens``."""
    flat = torch.arange(batch_size * seq_len, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:], flat, right=True).view(batch_size, seq_len)


def _check_cu_seqlens(cu: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    total = batch_size * seq_len
    if cu.dim() != 1 or cu.numel() < 2 or cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor of N+1 >= 2 boundaries, got shape "
                         f"{tuple(cu.shape)} dtype {cu.dtype}")
    c = cu.detach().to("cpu", torch.int64)
    problems = []
    if int(c[0]) != 0 or int(c[-1]) != total:
        problems.append(f"must start at 0 and end at B*L={total} (got {int(c[0])} ... {int(c[-1])})")
    if bool((c[1:] <= c[:-1]).any()):
        problems.append("must be strictly increasing (every segment non-empty)")
    missing = sorted(set(range(0, total, seq_len)) - set(c.tolist()))
    if missing:
        problems.append(f"every sample start b*L must be a boundary; missing {missing[:5]}")
    if problems:
        raise ValueError("cu_seqlens " + "; ".join(problems))
    return cu


def per_segment_is_cheaper(lengths: List[int], batch_size: int, seq_len: int) -> bool:
    """The torch form rule: per-segment SDPA calls (sum of n^2 pairs, plus a fixed cost per call)
    against one dense-mask call (B * L^2 pairs). Rows with padding but no packing tie, and keep the
    single dense call; with hundreds of tiny documents (~4 tokens each at 2 x 512) the per-call cost
    dominates and the dense mask wins."""
    pairs = sum(n * n for n in lengths)
    return pairs + SEGMENT_CALL_PAIRS * len(lengths) < batch_size * seq_len * seq_len


def _log_form_once(per_segment: bool, lengths: List[int], batch_size: int, seq_len: int) -> None:
    """Say which torch form the rule chose, the first time it chooses it in this process."""
    if per_segment in _LOGGED_FORMS:
        return
    _LOGGED_FORMS.add(per_segment)
    form = "SDPA per segment" if per_segment else "SDPA + dense block-diagonal mask"
    logger.info("kernels: attention layout -> %s (%d segments in %d x %d: %d query-key pairs + %d per call %s %d "
                "of the dense mask; logged once per form)", form, len(lengths), batch_size, seq_len,
                sum(n * n for n in lengths), SEGMENT_CALL_PAIRS, "<" if per_segment else ">=",
                batch_size * seq_len * seq_len)


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    if layout.segment_lengths is not None:
        return _attention_per_segment(q, k, v, layout)
    mask = layout.dense_mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=layout.causal and mask is None,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)


def _attention_per_segment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """One SDPA call per segment of ``layout.segment_lengths`` -> [B, L, Hq, D] (contiguous)."""
    B, Hq, L, D = q.shape
    gqa = Hq != k.shape[1]
    # [B, H, L, D] -> [B*L, H, D] is a view for the model's q/k/v (laid out [B, L, H, D] by the
    # projections), and split/cat have cheap backwards (no full-size zero gradient per segment)
    pieces = [x.transpose(1, 2).reshape(B * L, x.shape[1], D).split(layout.segment_lengths) for x in (q, k, v)]
    outs = []
    for qs, ks, vs, mask in zip(*pieces, layout.segment_masks):
        qs, ks, vs = (x.transpose(0, 1)[None] for x in (qs, ks, vs))  # [1, H, n, D] views
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=layout.causal and mask is None,
                                             enable_gqa=gqa)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs).view(B, L, Hq, D)


TORCH = Impl("torch (SDPA per segment, or + block-diagonal mask for many short segments)",
             {"attention": attention_torch, "varlen": False})


FUSED = {"torch_varlen": attention_fused.torch_varlen, "flash_attn": attention_fused.flash_attn}
DEFAULT = ("torch_varlen",)


def fused(device_type: str, name: Optional[str] = None) -> Impl:
    return first_available("attention", FUSED, DEFAULT, device_type, name)


# ---- a query subset over given keys (block-wise KV caching; megadfm/model/block_forward.py) ------------
# Torch reference only: the block path is for sampling, where the query block is short; a fused
# (flash-attn with a KV cache) path can come later with the same signatures.


def query_key_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, key_valid: Optional[torch.Tensor],
                   causal: bool, block_size: Optional[int] = None) -> Optional[torch.Tensor]:
    """Who-sees-whom for queries at ``query_positions`` [Lq] over keys at ``key_positions`` [Lk].

    Positions are absolute columns of one row (the same for every row of the batch). Query p sees
    key q iff the key is valid (``key_valid`` [B, Lk], False on padding; None: all valid) and, when
    causal, q <= p; with ``block_size`` (block diffusion's clean stream), block-causally: q's block
    (q // block_size) <= p's. As in :class:`AttentionLayout`, a query always sees its own position's
    key, so a padding query's softmax row is never all -inf; that key must be among the keys (each
    position at most once). Returns bool [B or 1, 1, Lq, Lk], or None when every query sees every key.
    """
    if key_valid is None and not causal and block_size is None:
        return None
    same = key_positions[None, :] == query_positions[:, None]  # [Lq, Lk]
    allowed = torch.ones_like(same)[None] if key_valid is None else key_valid.to(torch.bool)[:, None, :]
    if causal:
        allowed = allowed & (key_positions[None, :] <= query_positions[:, None])[None]
    if block_size is not None:
        allowed = allowed & ((key_positions // block_size)[None, :] <= (query_positions // block_size)[:, None])[None]
    return (allowed | same[None])[:, None]


def attention_over_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """q [B, Hq, Lq, D] over k/v [B, Hkv, Lk, D] (GQA as :func:`attention_torch`: query head h uses kv head
    h // (Hq / Hkv)) under ``mask`` from :func:`query_key_mask` -> [B, Lq, Hq, D]."""
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)
