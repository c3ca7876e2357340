"""Block diffusion's two-stream pattern (megadfm/model/kernels/attention_pattern.py): FlexAttention on the block
mask computes what torch's SDPA computes with the dense mask, with GQA, packed documents and padding: the
forward, run eagerly here (FlexAttention has no CPU backward); the CUDA check compiles it and compares the
backward too (tests/gpu/test_block_attention.py)."""

from __future__ import annotations

import warnings

import torch

from megadfm.model.kernels.attention import AttentionLayout, attention_torch
from megadfm.model.kernels.attention_pattern import TwoStreamBlockPattern, attention_flex_eager, flex_block_mask


def pattern():
    # row 0: documents of 5 and 6 tokens then 5 of padding; row 1: one document of 16; blocks of 4
    segment = torch.tensor([[0] * 5 + [1] * 6 + [2] * 5, [0] * 16])
    position = torch.tensor([list(range(5)) + list(range(6)) + list(range(5)), list(range(16))])
    return TwoStreamBlockPattern(segment, position // 4)


def test_flex_attention_on_the_block_mask_equals_dense_sdpa():
    p = pattern()
    B, n = p.batch_size, p.length
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, 16, generator=g) for h in (4, 2, 2))
    dense = AttentionLayout(B, n, torch.device("cpu"), False, allowed=p.dense())
    want = attention_torch(q, k, v, dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention warns that it is not compiled (on purpose here)
        got = attention_flex_eager(q, k, v, AttentionLayout(B, n, torch.device("cpu"), False, flex_mask=flex_block_mask(p)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dense_mask_is_the_rule():
    p = pattern()
    dense = p.dense()
    L = p.length // 2
    assert dense.shape == (2, 2 * L, 2 * L)
    assert not bool(dense[:, L:, :L].any())  # clean never sees noisy
    # row 0, noisy token 6 (document 1, position 1, block 0) sees noisy 5..8 (its block) and no clean token
    assert dense[0, 6, :L].nonzero().flatten().tolist() == [5, 6, 7, 8] and not bool(dense[0, 6, L:].any())
    # row 1, clean token 9 (block 2) sees clean 0..11
    assert dense[1, L + 9, L:].nonzero().flatten().tolist() == list(range(12))
    assert bool(dense.diagonal(dim1=1, dim2=2).all())  # every token sees itself
