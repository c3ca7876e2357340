"""Block diffusion's two-stream pattern on CUDA: compiled FlexAttention (the model's choice there) against torch's
SDPA with the dense mask (the CPU reference), forward and backward, fp32 and bf16; and the model's block-mode
forward on both paths. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from megadfm.model.kernels.attention import AttentionLayout, attention_torch
from megadfm.model.kernels.attention_pattern import TwoStreamBlockPattern, flex, flex_block_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="FlexAttention is compiled for CUDA only and this machine has no CUDA device")]


def pattern(L: int = 256, block: int = 16):
    segment = torch.zeros(2, L, dtype=torch.long)
    segment[0, 100:] = 1  # two documents in row 0
    segment[1, 200:] = 2  # padding at the end of row 1
    position = torch.arange(L).repeat(2, 1)
    position[0, 100:] -= 100
    position[1, 200:] -= 200
    return TwoStreamBlockPattern(segment.cuda(), (position // block).cuda())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])
def test_compiled_flex_equals_dense_sdpa_forward_and_backward(dtype, tol):
    p = pattern()
    B, n = p.batch_size, p.length
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, h, n, 64, generator=g, device="cuda", dtype=dtype, requires_grad=True) for h in (8, 4, 4))
    want = attention_torch(q, k, v, AttentionLayout(B, n, torch.device("cuda"), False, allowed=p.dense()))
    got = flex("cuda")(q, k, v, AttentionLayout(B, n, torch.device("cuda"), False, flex_mask=flex_block_mask(p)))
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    w = torch.randn(want.shape, generator=g, device="cuda", dtype=dtype)
    grads = [torch.autograd.grad((out.float() * w.float()).sum(), (q, k, v)) for out in (want, got)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b.float(), a.float(), rtol=tol, atol=tol)


def test_block_mode_loss_is_the_same_on_both_attention_paths():
    from megadfm.data.batch import position_ids_from_segments, segments_to_cu_seqlens
    from megadfm.dfm.block_diffusion import block_dfm_loss
    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.schedulers import make_scheduler
    from tests.model.tiny import MASK, random_ids, tiny_model

    cfg = DFMConfig(mode="block", block_size=8)
    segments = [[40, 24], [64]]
    batch = {"input_ids": random_ids((2, 64), seed=1, high=MASK).cuda(),
             "position_ids": position_ids_from_segments(segments).cuda(),
             "cu_seqlens": segments_to_cu_seqlens(segments, 64).cuda(), "max_seqlen": 64,
             "loss_mask": torch.ones(2, 64, dtype=torch.bool, device="cuda")}
    losses = []
    for kernels in ("torch", "fused"):
        model = tiny_model(seed=0, kernels=kernels).cuda()
        out = block_dfm_loss(model, batch, torch.tensor([0.3, 0.6], device="cuda"), cfg, make_scheduler(cfg),
                             torch.Generator(device="cuda").manual_seed(3))
        out.loss.backward()
        losses.append((out.loss.detach(), model.embed_tokens.weight.grad.detach().clone()))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=2e-2, atol=2e-4)
