"""Rotary position embedding (the HF/Qwen3 "rotate half" convention).

``rotary_cos_sin(position_ids, head_dim, theta, dtype)`` builds cos/sin [B, L, D] once per forward;
``apply_rotary(q, k, cos, sin)`` rotates q [B, Hq, L, D] and k [B, Hkv, L, D].
Reference: transformers' apply_rotary_pos_emb. Fused: liger-kernel's Triton RoPE (CUDA only);
it expects q/k laid out in memory as [B, L, H, D] (a transposed view, as the model produces).
"""

from __future__ import annotations

from typing import Tuple

import torch

from megadfm.model.kernels.backend import Impl, require


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, L, head_dim] computed in fp32 (as HF) and cast to the activation dtype.

    inv_freq is recomputed here rather than stored as a buffer, so `model.to(bfloat16)` cannot
    round it (a bf16 inv_freq visibly shifts long-range positions).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].to(torch.float32) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_torch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


TORCH = Impl("torch", {"apply_rotary": apply_rotary_torch})


def fused(device_type: str) -> Impl:
    (mod,) = require(device_type, "fused rotary (liger-kernel)",
                     ("liger_kernel.transformers.rope", "liger-kernel", "pip install liger-kernel (part of the [gpu] extra)"))
    liger_rope = mod.liger_rotary_pos_emb

    def apply_rotary_liger(q, k, cos, sin):
        return liger_rope(q, k, cos, sin)

    return Impl("liger-kernel rope", {"apply_rotary": apply_rotary_liger})
