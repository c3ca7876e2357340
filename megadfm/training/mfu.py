"""Model FLOPs utilisation: FLOPs per trained token, and the dense bf16 peak of the device.

FLOPs per trained token (forward + backward = 3x forward, 2 FLOPs per multiply-add), the
PaLM/Megatron convention, for the bidirectional attention DFM trains with:

    flops_per_token = 6 * N_matmul + 12 * n_layers * n_heads * head_dim * P

- N_matmul: the weights of every matrix multiply a token goes through (q, k, v, o and the three
  SwiGLU projections of every layer, plus the LM head; the embedding lookup is not a matmul).
- P: query-key pairs per token. Every query of a bidirectional row of length L sees all L keys, so
  P = L: QK^T is 2 * L * head_dim FLOPs per query head and token, and so is the product with V.
  GQA does not change it (the shared kv heads are read by every query head). Causal attention
  sees (L + 1) / 2 keys on average; with packed documents of lengths n_1..n_k (varlen kernels
  skip the cross-document blocks) P = sum n_i^2 / sum n_i.

The trainer reports MFU with P = L (bidirectional, one document per row: what other frameworks
report, and what a plain SDPA without segments computes); with packed documents the kernels do
less attention work than that, so this MFU is slightly optimistic for short documents.
:func:`flops_per_token` takes ``segment_lengths`` / ``causal`` for the exact count. Not counted:
AdaLN's time MLP and modulation projections (once per sequence, not per token), norms, rotary,
softmax and the recomputation of activation checkpointing (recompute is not useful work).
Checked against a hand count of one layer and torch's FlopCounterMode in tests/training/test_mfu.py.

MFU = flops_per_token * tokens/s per device / peak, with the peak from :data:`PEAK_BF16_FLOPS`
(dense bf16 tensor-core FLOP/s from NVIDIA's datasheets; sparse figures are twice these).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from megadfm.model.config import ModelConfig


class PeakEntry(NamedTuple):
    """One row of the peak table: the device it is, the substrings of torch.cuda.get_device_name()
    that identify it (all must occur), and its dense bf16 peak in FLOP/s."""

    device: str
    match: tuple
    flops: float


# Most specific first: "H100 PCIe" must be found before "H100".
PEAK_BF16_FLOPS = (
    PeakEntry("H100 PCIe", ("H100", "PCIe"), 756e12),
    PeakEntry("H100 NVL", ("H100", "NVL"), 835e12),
    PeakEntry("H100 SXM", ("H100",), 989e12),   # "NVIDIA H100 80GB HBM3"
    PeakEntry("H200 NVL", ("H200", "NVL"), 835e12),
    PeakEntry("H200 SXM", ("H200",), 989e12),   # "NVIDIA H200"
    PeakEntry("H800", ("H800",), 989e12),
    PeakEntry("A100", ("A100",), 312e12),       # SXM4 and PCIe, 40 and 80 GB: the same tensor-core peak
    PeakEntry("A800", ("A800",), 312e12),
    PeakEntry("L40S", ("L40S",), 362e12),
)


def matmul_params(cfg: ModelConfig) -> int:
    h, hd = cfg.hidden_size, cfg.resolved_head_dim
    attn = h * hd * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2)  # q, o, k, v
    mlp = 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * (attn + mlp) + cfg.vocab_size * h


def attention_pairs_per_token(seq_len: int, segment_lengths: Optional[Sequence[int]] = None, causal: bool = False) -> float:
    """P above: query-key pairs per token, for rows of ``seq_len`` or the given segments."""
    lengths = [seq_len] if segment_lengths is None else [int(n) for n in segment_lengths]
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"segment lengths must be positive, got {list(lengths)}")
    pairs = sum(n * (n + 1) / 2 if causal else n * n for n in lengths)
    return pairs / sum(lengths)


def flops_per_token(cfg: ModelConfig, seq_len: int, segment_lengths: Optional[Sequence[int]] = None,
                    causal: bool = False) -> float:
    pairs = attention_pairs_per_token(seq_len, segment_lengths, causal)
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.resolved_head_dim * pairs


def peak_entry(device_name: str) -> Optional[PeakEntry]:
    """The peak-table row for a CUDA device name, or None when the device is not in the table."""
    for entry in PEAK_BF16_FLOPS:
        if all(part in device_name for part in entry.match):
            return entry
    return None


def device_peak() -> Optional[PeakEntry]:
    """The peak-table row of this rank's GPU, or None (CPU, or a GPU not in the table: MFU is not reported)."""
    if not torch.cuda.is_available():
        return None
    return peak_entry(torch.cuda.get_device_name())


def device_peak_flops() -> Optional[float]:
    """Peak bf16 FLOP/s of this rank's GPU, or None (CPU / unknown GPU: MFU is not reported)."""
    entry = device_peak()
    return None if entry is None else entry.flops


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_second_per_device: float, peak: Optional[float]) -> Optional[float]:
    if peak is None:
        return None
    return flops_per_token(cfg, seq_len) * tokens_per_second_per_device / peak
