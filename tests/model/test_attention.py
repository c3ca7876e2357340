"""Varlen attention: documents of a packed sample never see each other; bidirectional vs causal; padding."""

from __future__ import annotations

import pytest
import torch

from megadfm.model.kernels.attention import AttentionLayout
from tests.model.tiny import random_ids, tiny_model

DOCS = [5, 8, 3]


@pytest.mark.parametrize("attention_mode", ["bidirectional", "causal"])
def test_packed_documents_equal_documents_alone(attention_mode):
    model = tiny_model(attention_mode=attention_mode)
    ids = random_ids((1, sum(DOCS)))
    cu = torch.tensor([0, 5, 13, 16], dtype=torch.int32)
    t = torch.tensor([0.4])
    with torch.no_grad():
        packed = model(ids, t=t, cu_seqlens=cu, max_seqlen=8)[0]
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
            alone = model(ids[:, start:end], t=t)[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-5)


def test_packed_rows_with_padding_segment():
    """Two rows, the second ending in a padding run that is its own segment (the batch contract)."""
    model = tiny_model()
    ids = random_ids((2, 8))
    cu = torch.tensor([0, 3, 8, 14, 16], dtype=torch.int32)  # row 0: [3, 5]; row 1: [6, 2 padding]
    with torch.no_grad():
        out = model(ids, t=torch.ones(2), cu_seqlens=cu)
        for row, start, end in [(0, 0, 3), (0, 3, 8), (1, 0, 6)]:
            alone = model(ids[row:row + 1, start:end], t=torch.ones(1))[0]
            torch.testing.assert_close(out[row, start:end], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention_mode,changes", [("bidirectional", True), ("causal", False)])
def test_later_token_reaches_earlier_position_only_when_bidirectional(attention_mode, changes):
    model = tiny_model(attention_mode=attention_mode)
    ids = random_ids((1, 10))
    edited = ids.clone()
    edited[0, 7] = (ids[0, 7] + 1) % 500
    with torch.no_grad():
        a, b = model(ids, t=torch.ones(1)), model(edited, t=torch.ones(1))
    assert torch.equal(a[0, :7], b[0, :7]) != changes
    assert not torch.equal(a[0, 7], b[0, 7])


def test_fully_masked_padding_rows_are_finite_and_do_not_leak():
    """Padding that is both its own segment and masked out has no visible key: no NaN, values or grads."""
    model = tiny_model().train()
    ids = random_ids((2, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    cu = torch.tensor([0, 6, 10, 12], dtype=torch.int32)
    hidden = model(ids, t=torch.ones(2), cu_seqlens=cu, attention_mask=mask)
    assert torch.isfinite(hidden).all()
    hidden[mask].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        changed = ids.clone()
        changed[1, 4:] = 1
        again = model(changed, t=torch.ones(2), cu_seqlens=cu, attention_mask=mask)
    torch.testing.assert_close(again[1, :4], hidden[1, :4].detach())


def test_dense_mask_blocks():
    layout = AttentionLayout(1, 5, torch.device("cpu"), causal=False, cu_seqlens=torch.tensor([0, 2, 5], dtype=torch.int32))
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(layout.dense_mask[0, 0], expected)
    assert layout.segment_positions().tolist() == [[0, 1, 0, 1, 2]]
    # padding keys are hidden; a padding query with no visible key sees only itself (never an all -inf row)
    padded = AttentionLayout(1, 5, torch.device("cpu"), causal=True, cu_seqlens=torch.tensor([0, 3, 5], dtype=torch.int32),
                             attention_mask=torch.tensor([[True, True, True, False, False]]))
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(padded.dense_mask[0, 0], expected)


@pytest.mark.parametrize("cu,message", [([0, 3, 8], "end at B\\*L=16"), ([0, 3, 12, 16], "sample start"),
                                         ([0, 8, 8, 16], "strictly increasing")])
def test_bad_cu_seqlens_rejected(cu, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(random_ids((2, 8)), t=torch.ones(2), cu_seqlens=torch.tensor(cu, dtype=torch.int32))


def test_sequence_longer_than_max_positions_rejected():
    model = tiny_model(max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(random_ids((1, 9)), t=torch.ones(1))
