"""The torch attention's two forms (per-segment SDPA calls, dense block-diagonal mask) compute the same
function, forward and backward, and the packed model equals transformers on each document alone;
the hand-written RMSNorm/AdaLN backward equals autograd's through the formula."""

from __future__ import annotations

import logging

import pytest
import torch

from megadfm.checkpoints.strict_load import load_state_dict
from megadfm.conversion import hf_to_megadfm_state_dict, model_config_from_hf
from megadfm.data.batch import segments_to_cu_seqlens
from megadfm.model import Qwen3DFM
from megadfm.model.kernels import attention
from megadfm.model.kernels.adaln import adaln_modulate_reference, adaln_modulate_torch
from megadfm.model.kernels.attention import AttentionLayout, attention_torch, per_segment_is_cheaper
from megadfm.model.kernels.rmsnorm import rms_norm_reference, rms_norm_torch
from tests.model.tiny import MASK, hf_qwen3, random_ids, tiny_model

CPU = torch.device("cpu")


def random_rows(batch: int, seq_len: int, gen: torch.Generator):
    """Per row: documents of random lengths (1s included), then a padding run as its own segment; also a
    key mask that is False on that padding run and on a few tokens inside documents (partial masks)."""
    segments, valid = [], torch.ones(batch, seq_len, dtype=torch.bool)
    for b in range(batch):
        row, left = [], seq_len - 3 * b  # row b ends in 3 * b padding tokens
        row += [1, 1]  # length-1 documents
        left -= 2
        while left > 0:
            n = min(left, int(torch.randint(1, 9, (1,), generator=gen)))
            row.append(n)
            left -= n
        if b:
            row.append(3 * b)
            valid[b, -3 * b:] = False
        segments.append(row)
    valid[0, 5] = False  # padding keys inside documents: the segment needs its own small mask
    valid[1, 2] = False
    return segments_to_cu_seqlens(segments, seq_len), valid


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_per_segment_equals_dense_mask_forward_and_grads(causal, padded):
    gen = torch.Generator().manual_seed(1)
    B, L, Hq, Hkv, D = 3, 29, 4, 2, 16  # GQA 2
    cu, valid = random_rows(B, L, gen)
    mask = valid if padded else None
    dense = AttentionLayout(B, L, CPU, causal, cu, attention_mask=mask, per_segment=False)
    split = AttentionLayout(B, L, CPU, causal, cu, attention_mask=mask, per_segment=True)
    assert dense.dense_mask is not None and dense.segment_lengths is None
    assert split.dense_mask is None and split.segment_lengths == (cu[1:] - cu[:-1]).tolist()
    assert any(m is not None for m in split.segment_masks) == padded
    # q/k/v laid out [B, L, H, D] and viewed [B, H, L, D], as the model's projections make them
    q, k, v = (torch.randn(B, L, h, D, generator=gen).transpose(1, 2) for h in (Hq, Hkv, Hkv))
    grad_out = torch.randn(B, L, Hq, D, generator=gen)
    results = []
    for layout in (dense, split):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        out = attention_torch(*leaves, layout)
        out.backward(grad_out)
        results.append((out.detach(), [x.grad for x in leaves]))
    (out_d, grads_d), (out_s, grads_s) = results
    # every position, padding queries included: both forms give them the same (self-including) keys
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads_s, grads_d):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out_s).all()


@pytest.mark.parametrize("attention_mode", ["bidirectional", "causal"])
def test_packed_model_per_segment_equals_dense(monkeypatch, attention_mode):
    """Whole tiny model (AdaLN trained away from zero), forward and every parameter's gradient."""
    model = tiny_model(attention_mode=attention_mode).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if model.parameter_group(name) == "time_conditioning":
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    cu, valid = random_rows(2, 24, torch.Generator().manual_seed(3))
    ids, t = random_ids((2, 24)), torch.tensor([0.3, 0.8])
    # a random projection of the real positions (a sum of squares would cancel, amplifying rounding)
    projection = torch.randn(int(valid.sum()), model.cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    runs = []
    for per_segment in (False, True):
        monkeypatch.setattr(attention, "per_segment_is_cheaper", lambda *args, _choice=per_segment: _choice)
        model.zero_grad(set_to_none=True)
        hidden = model(ids, t=t, cu_seqlens=cu, attention_mask=valid)
        (hidden[valid] * projection).sum().backward()
        runs.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (h_dense, g_dense), (h_split, g_split) = runs
    torch.testing.assert_close(h_split, h_dense, atol=1e-5, rtol=1e-5)
    assert g_split.keys() == g_dense.keys()
    for name, expected in g_dense.items():
        scale = expected.abs().max().clamp_min(1e-12)  # each gradient relative to its own size
        torch.testing.assert_close(g_split[name] / scale, expected / scale, atol=1e-5, rtol=0, msg=name)


def test_packed_causal_model_equals_transformers_per_document(monkeypatch):
    """Causal mode through the per-segment form: each packed document computes HF Qwen3 on it alone."""
    monkeypatch.setattr(attention, "per_segment_is_cheaper", lambda *args: True)
    hf = hf_qwen3()
    cfg = model_config_from_hf(hf.config.to_dict(), mask_token_id=MASK, kernels="torch", attention_mode="causal",
                               time_embedding_dim=32)
    model = Qwen3DFM(cfg, seed=1).eval()
    load_state_dict(model, hf_to_megadfm_state_dict(hf.state_dict(), cfg)[0], "converted HF state dict")
    segments = [[1, 6, 9, 1, 3], [11, 1, 8]]
    ids = random_ids((2, 20), seed=5)
    with torch.no_grad():
        ours = model.logits(model(ids, t=torch.rand(2), cu_seqlens=segments_to_cu_seqlens(segments, 20)))
        for row, lengths in enumerate(segments):
            start = 0
            for n in lengths:
                theirs = hf(input_ids=ids[row:row + 1, start:start + n]).logits[0]
                got = ours[row, start:start + n]
                torch.testing.assert_close(got[:, :MASK], theirs[:, :MASK], atol=1e-5, rtol=1e-5)
                start += n


def test_rule_prefers_per_segment_for_documents_and_dense_for_many_tiny_ones():
    assert per_segment_is_cheaper([128, 256, 128] * 2, 2, 512)  # bench/bench_model.py's packing
    assert not per_segment_is_cheaper([2] * 512, 2, 512)  # per-call cost outweighs the pairs saved
    assert not per_segment_is_cheaper([512, 512], 2, 512)  # padded, unpacked rows: one dense call
    # plain rows (cu_seqlens only at row starts, no padding) need neither a mask nor per-segment calls
    plain = AttentionLayout(2, 8, CPU, False, torch.tensor([0, 8, 16], dtype=torch.int32))
    assert plain.dense_mask is None and plain.segment_lengths is None


def test_form_choice_logged_once_per_form(monkeypatch, caplog):
    monkeypatch.setattr(attention, "_LOGGED_FORMS", set())
    cu = torch.tensor([0, 128, 384, 512, 640, 896, 1024], dtype=torch.int32)
    with caplog.at_level(logging.INFO, logger="megadfm.model.kernels"):
        for _ in range(3):
            AttentionLayout(2, 512, CPU, False, cu)
        AttentionLayout(1, 6, CPU, False, torch.tensor([0, 2, 6], dtype=torch.int32))
    lines = [r.getMessage() for r in caplog.records if "attention layout" in r.getMessage()]
    assert len(lines) == 2
    assert "SDPA per segment (6 segments in 2 x 512" in lines[0]
    assert "dense block-diagonal mask (2 segments in 1 x 6" in lines[1]


@pytest.mark.parametrize("shape", [(2, 9, 48), (2, 9, 4, 16)])
def test_rms_norm_function_equals_autograd_of_formula(shape):
    gen = torch.Generator().manual_seed(6)
    x, w = torch.randn(shape, generator=gen) * 3, torch.randn(shape[-1], generator=gen)
    grad = torch.randn(shape, generator=gen)
    xs, ws = [x.clone().requires_grad_() for _ in range(2)], [w.clone().requires_grad_() for _ in range(2)]
    ref, got = rms_norm_reference(xs[0], ws[0], 1e-6), rms_norm_torch(xs[1], ws[1], 1e-6)
    assert torch.equal(got, ref)  # forward bit for bit (transformers' arithmetic)
    ref.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ws[1].grad, ws[0].grad, atol=1e-5, rtol=1e-5)


def test_adaln_modulate_function_equals_autograd_of_formula():
    gen = torch.Generator().manual_seed(7)
    B, L, H = 2, 9, 48
    inputs = [torch.randn(B, L, H, generator=gen), torch.randn(H, generator=gen), torch.randn(B, H, generator=gen),
              torch.randn(B, H, generator=gen)]
    grad = torch.randn(B, L, H, generator=gen)
    leaves = [[x.clone().requires_grad_() for x in inputs] for _ in range(2)]
    ref = adaln_modulate_reference(leaves[0][0], leaves[0][1], 1e-6, leaves[0][2], leaves[0][3])
    got = adaln_modulate_torch(leaves[1][0], leaves[1][1], 1e-6, leaves[1][2], leaves[1][3])
    assert torch.equal(got, ref)
    ref.backward(grad)
    got.backward(grad)
    for a, b in zip(leaves[1], leaves[0]):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    zero = torch.zeros(B, H)  # zero modulation is the plain norm, bit for bit
    assert torch.equal(adaln_modulate_torch(inputs[0], inputs[1], 1e-6, zero, zero), rms_norm_torch(inputs[0], inputs[1], 1e-6))
