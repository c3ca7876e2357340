"""Model FLOPs utilisation.

FLOPs per trained token (forward + backward = 3x forward), the PaLM/Megatron convention:

    flops_per_token = 6 * N_matmul + 12 * n_layers * n_heads * head_dim * seq_len

where N_matmul counts the weights of every matrix multiply a token goes through (attention and MLP
projections of every layer plus the LM head; the embedding lookup is not a matmul), and the second
term is the attention score and value products (2 matmuls of seq_len x head_dim per head, x3 for
backward, x2 for multiply-add). With packed documents attention is cheaper than this bound, so the
reported MFU is slightly optimistic for short documents; it is the number other frameworks report.
AdaLN's time MLP runs once per sequence, not per token, and is ignored.
"""

from __future__ import annotations

from typing import Optional

import torch

from megadfm.model.config import ModelConfig

# Dense bf16 peak per device, for the MFU denominator.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


def matmul_params(cfg: ModelConfig) -> int:
    h, hd = cfg.hidden_size, cfg.resolved_head_dim
    attn = h * hd * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2)  # q, o, k, v
    mlp = 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * (attn + mlp) + cfg.vocab_size * h


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.resolved_head_dim * seq_len


def device_peak_flops() -> Optional[float]:
    """Peak bf16 FLOP/s of this rank's GPU, or None (CPU / unknown GPU: MFU is not reported)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_second_per_device: float, peak: Optional[float]) -> Optional[float]:
    if peak is None:
        return None
    return flops_per_token(cfg, seq_len) * tokens_per_second_per_device / peak
