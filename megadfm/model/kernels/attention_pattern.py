"""Block diffusion's two-stream attention pattern, as a dense mask for torch's SDPA or a FlexAttention block mask.

The pattern (megadfm/dfm/block_diffusion.py, docs/BLOCK_DIFFUSION.md) is over a row written twice,
``[x_t ‖ x_0]`` (2L tokens): within one segment (a document, or a run of padding),

- a noisy query of block k sees the noisy keys of block k and the clean keys of blocks < k;
- a clean query of block k sees the clean keys of blocks <= k;
- a clean query never sees a noisy key.

:meth:`TwoStreamBlockPattern.mask_mod` is the one implementation of that rule. The dense [B, 2L, 2L] mask
is the rule evaluated on every (query, key) pair. FlexAttention (``torch.nn.attention.flex_attention``,
stock PyTorch) evaluates it per tile and skips the tiles it masks out, instead of materialising 4L^2
scores. On CUDA :func:`flex` compiles it (Triton); on the CPU the tests run FlexAttention eagerly
against the dense SDPA reference. The model picks flex on CUDA unless ``model.kernels: torch``
(megadfm/model/qwen3_dfm.py), and falls back to the dense reference with a logged reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from megadfm.model.kernels.backend import KernelUnavailable


@dataclass
class TwoStreamBlockPattern:
    """The pattern of a [B, 2L] two-stream batch, from its first half's segments and blocks."""

    segment: torch.Tensor  # long [B, L]: segment of each token of x_t (x_0 is the same row)
    block: torch.Tensor  # long [B, L]: block index within the token's document

    @property
    def batch_size(self) -> int:
        return self.segment.shape[0]

    @property
    def length(self) -> int:
        """2L: the two-stream row length the pattern is for."""
        return 2 * self.segment.shape[1]

    def mask_mod(self) -> Callable:
        """FlexAttention's ``mask_mod(b, h, q, k) -> bool``; also works on broadcast index tensors (:meth:`dense`)."""
        seg = torch.cat([self.segment, self.segment], dim=1)
        blk = torch.cat([self.block, self.block], dim=1)
        half = self.segment.shape[1]

        def mask_mod(b, h, q, k):
            q_clean, k_clean = q >= half, k >= half
            same = seg[b, q] == seg[b, k]
            bq, bk = blk[b, q], blk[b, k]
            noisy_to_noisy = ~q_clean & ~k_clean & (bk == bq)
            noisy_to_clean = ~q_clean & k_clean & (bk < bq)
            clean_to_clean = q_clean & k_clean & (bk <= bq)
            return same & (noisy_to_noisy | noisy_to_clean | clean_to_clean)

        return mask_mod

    def dense(self) -> torch.Tensor:
        """bool [B, 2L, 2L] (query x key): :meth:`mask_mod` on every pair."""
        device = self.segment.device
        n = self.length
        b = torch.arange(self.batch_size, device=device)[:, None, None]
        q = torch.arange(n, device=device)[None, :, None]
        k = torch.arange(n, device=device)[None, None, :]
        return self.mask_mod()(b, None, q, k)


def flex_block_mask(pattern: TwoStreamBlockPattern):
    """FlexAttention's BlockMask of ``pattern`` (one per forward, shared by every layer and head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(pattern.mask_mod(), pattern.batch_size, None, pattern.length, pattern.length,
                             device=pattern.segment.device)


def attention_flex_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
    """q [B, Hq, L, D], k/v [B, Hkv, L, D] under ``layout.flex_mask`` -> [B, L, Hq, D], FlexAttention uncompiled
    (the CPU test of the CUDA path; slow: it materialises the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=layout.flex_mask, enable_gqa=q.shape[1] != k.shape[1]).transpose(1, 2)


attention_flex_eager.uses_flex_block_mask = True


def flex(device_type: str) -> Callable:
    """FlexAttention compiled by torch.compile (CUDA only); KernelUnavailable says why not."""
    if device_type != "cuda":
        raise KernelUnavailable(f"FlexAttention is compiled for CUDA only (device {device_type})")
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:  # an old torch: the caller logs the reason and uses the dense reference
        raise KernelUnavailable(f"torch.nn.attention.flex_attention is not importable: {e}") from e
    compiled = torch.compile(flex_attention, dynamic=False)

    def attention_flex(q, k, v, layout):
        return compiled(q, k, v, block_mask=layout.flex_mask, enable_gqa=q.shape[1] != k.shape[1]).transpose(1, 2)

    attention_flex.uses_flex_block_mask = True
    return attention_flex
