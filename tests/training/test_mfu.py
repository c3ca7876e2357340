"""The FLOP count behind MFU: a hand count of one layer, torch's FlopCounterMode, and the peak table."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megadfm.model import ModelConfig, Qwen3DFM
from megadfm.training.mfu import (attention_pairs_per_token, flops_per_token, matmul_params, mfu, peak_entry)

# One layer: hidden 64, 4 query heads and 2 kv heads of 16, SwiGLU 192, vocabulary 512, 128 tokens.
ONE_LAYER = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, vocab_size=512, mask_token_id=500, time_conditioning="none", kernels="torch")


def test_one_layer_matches_a_hand_count():
    cfg = ModelConfig(**ONE_LAYER)
    # forward FLOPs per token, 2 per multiply-add:
    q = o = 2 * 64 * (4 * 16)      # 8192 each
    k = v = 2 * 64 * (2 * 16)      # 4096 each
    mlp = 3 * 2 * 64 * 192         # gate, up, down: 73728
    head = 2 * 64 * 512            # 65536
    scores = 2 * 128 * 16 * 4      # QK^T: every query sees all 128 keys (bidirectional), per query head: 16384
    values = 2 * 128 * 16 * 4      # softmax(QK^T) V: 16384
    forward = q + k + v + o + mlp + head + scores + values
    assert forward == 196608
    assert flops_per_token(cfg, 128) == 3 * forward == 589824  # training = forward + backward (2x forward)
    assert matmul_params(cfg) == (q + k + v + o + mlp + head) // 2


def count_with_torch(cfg: ModelConfig, seq_len: int, cu_seqlens=None) -> float:
    """FLOPs per token of forward + backward as torch's FlopCounterMode counts them (the math SDPA backend
    decomposes attention into the bmm calls it counts)."""
    model = Qwen3DFM(cfg, seed=0)
    ids = torch.randint(0, 500, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        hidden = model(ids, cu_seqlens=cu_seqlens)
        (hidden.reshape(seq_len, -1) @ model.output_weight.t()).float().logsumexp(-1).sum().backward()
    return counter.get_total_flops() / seq_len


@pytest.mark.parametrize("segments", [None, [32, 96]], ids=["one-document", "packed"])
def test_formula_equals_torch_flop_counter(segments):
    cfg = ModelConfig(**ONE_LAYER)
    cu = None if segments is None else torch.tensor([0, *torch.tensor(segments).cumsum(0).tolist()], dtype=torch.int32)
    assert count_with_torch(cfg, 128, cu) == flops_per_token(cfg, 128, segments)


def test_attention_pairs():
    assert attention_pairs_per_token(8192) == 8192
    assert attention_pairs_per_token(128, [32, 96]) == (32 * 32 + 96 * 96) / 128 == 80
    assert attention_pairs_per_token(4, causal=True) == (1 + 2 + 3 + 4) / 4
    with pytest.raises(ValueError, match="positive"):
        attention_pairs_per_token(8, [8, 0])


def test_qwen3_1p7b_at_8192():
    cfg = ModelConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960)
    assert matmul_params(cfg) == 28 * (2048 * 128 * (2 * 16 + 2 * 8) + 3 * 2048 * 6144) + 151936 * 2048
    attention = 12 * 28 * 16 * 128 * 8192
    assert flops_per_token(cfg, 8192) == 6 * matmul_params(cfg) + attention
    assert flops_per_token(cfg, 8192) == pytest.approx(1.596e10, rel=1e-3)  # 1.72 B matmul params: 1.03e10 + 5.6e9 attention
    assert mfu(cfg, 8192, 25_000, 989e12) == pytest.approx(flops_per_token(cfg, 8192) * 25_000 / 989e12)
    assert mfu(cfg, 8192, 25_000, None) is None


@pytest.mark.parametrize("name, device, flops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", "H100 NVL", 835e12),
    ("NVIDIA H200", "H200 SXM", 989e12),
    ("NVIDIA H200 NVL", "H200 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100", 312e12),
])
def test_peak_table(name, device, flops):
    entry = peak_entry(name)
    assert entry.device == device and entry.flops == flops


def test_an_unknown_gpu_has_no_peak():
    assert peak_entry("NVIDIA GeForce RTX 4090") is None
