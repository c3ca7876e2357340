"""The adapter around torch's varlen_attn (attention_fused.varlen_attention), on CPU.

PyTorch's flash kernels run on CUDA only, so these tests hand the adapter stand-ins with the three
signatures varlen_attn has had (``window_size`` + ``enable_gqa`` + ``scale``; ``window_size`` +
``scale`` without ``enable_gqa``; ``is_causal`` only) that compute real attention per cu_seqlens segment with SDPA. They check what the adapter
controls: the direction flag it passes, GQA (native or by repeating kv heads), unpadding and
re-padding, and the result against the torch reference. The kernel itself is checked on a GPU
(tests/gpu/test_fused_kernels.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megadfm.model.kernels import KernelUnavailable
from megadfm.model.kernels.attention import AttentionLayout, attention_torch
from megadfm.model.kernels.attention_fused import varlen_attention


def segments_attention(q, k, v, cu, causal, scale):
    """[T, H, D] attention within each cu segment (the contract of varlen_attn), by SDPA per segment."""
    assert q.shape[1] == k.shape[1], "heads must match here: GQA is the caller's job"
    outs = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)[0].transpose(0, 1))
    return torch.cat(outs)


def new_style(calls):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False):
        calls.append({"window_size": window_size, "enable_gqa": enable_gqa, "scale": scale, "dtype": query.dtype,
                      "max_q": max_q})
        if enable_gqa:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        assert window_size in ((-1, -1), (-1, 0))
        return segments_attention(query, key, value, cu_seq_q, window_size == (-1, 0), scale)
    return varlen_attn


def window_without_gqa(calls):
    """A release in between: window_size and scale, but no enable_gqa (kv heads must match the query heads)."""
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), k_cache=None, v_cache=None):
        calls.append({"window_size": window_size, "heads": (query.shape[1], key.shape[1]), "scale": scale})
        return segments_attention(query, key, value, cu_seq_q, window_size == (-1, 0), scale)
    return varlen_attn


def old_style(calls):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append({"is_causal": is_causal, "heads": (query.shape[1], key.shape[1])})
        return segments_attention(query, key, value, cu_seq_q, is_causal, None)
    return varlen_attn


def inputs(with_padding):
    gen = torch.Generator().manual_seed(0)
    B, L, D = 2, 24, 8
    q = torch.randn(B, 4, L, D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, 2, L, D, generator=gen, dtype=torch.float64) for _ in range(2))
    cu = torch.tensor([0, 7, 24, 30, 41, 48], dtype=torch.int32)
    mask = None
    if with_padding:
        mask = torch.ones(B, L, dtype=torch.bool)
        mask[1, 17:] = False  # row 1's last segment is padding
    return q, k, v, cu, mask


STYLES = {"new": new_style, "window-no-gqa": window_without_gqa, "old": old_style}


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_adapter_matches_the_torch_reference(style, causal, with_padding):
    q, k, v, cu, mask = inputs(with_padding)
    calls = []
    attention = varlen_attention(STYLES[style](calls))
    varlen = AttentionLayout(2, 24, torch.device("cpu"), causal, cu, None, mask, varlen=True)
    dense = AttentionLayout(2, 24, torch.device("cpu"), causal, cu, None, mask, varlen=False, per_segment=False)
    got = attention(q, k, v, varlen)
    want = attention_torch(q.float(), k.float(), v.float(), dense)
    real = mask if mask is not None else torch.ones(2, 24, dtype=torch.bool)
    assert got.dtype == q.dtype and got.shape == (2, 24, 4, 8)
    # the stand-in ran in bf16 (what the kernel computes in): bf16 tolerance
    torch.testing.assert_close(got[real].float(), want[real], atol=2e-2, rtol=2e-2)
    (call,) = calls
    if style == "new":
        assert call["window_size"] == ((-1, 0) if causal else (-1, -1))
        assert call["enable_gqa"] is True and call["scale"] == 8 ** -0.5 and call["dtype"] == torch.bfloat16
        assert call["max_q"] == 17  # longest segment (row 0's second); padding never lengthens one
    elif style == "window-no-gqa":
        assert call["window_size"] == ((-1, 0) if causal else (-1, -1)) and call["heads"] == (4, 4)
        assert call["scale"] == 8 ** -0.5
    else:
        assert call["is_causal"] is causal and call["heads"] == (4, 4)  # kv heads repeated to the query heads


def test_fp32_inputs_are_cast_to_bf16_and_it_is_logged(caplog, monkeypatch):
    from megadfm.model.kernels import attention_fused

    monkeypatch.setattr(attention_fused, "_CAST_LOGGED", set())
    q, k, v, cu, mask = inputs(False)
    calls = []
    layout = AttentionLayout(2, 24, torch.device("cpu"), False, cu, None, mask, varlen=True)
    with caplog.at_level("WARNING", logger="megadfm.model.kernels"):
        out = varlen_attention(new_style(calls))(q.float(), k.float(), v.float(), layout)
    assert calls[0]["dtype"] == torch.bfloat16 and out.dtype == torch.float32
    assert "torch varlen attention computes in bf16; torch.float32 inputs are cast" in caplog.text


def test_a_padding_row_position_is_zero_and_real_positions_unaffected_by_padding_content():
    q, k, v, cu, mask = inputs(True)
    attention = varlen_attention(new_style([]))
    layout = AttentionLayout(2, 24, torch.device("cpu"), False, cu, None, mask, varlen=True)
    out = attention(q, k, v, layout)
    assert torch.all(out[1, 17:] == 0)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 17:], v2[1, :, 17:] = 100.0, -100.0  # padding keys must not be seen
    torch.testing.assert_close(attention(q, k2, v2, layout)[mask], out[mask])


def test_a_signature_without_a_direction_is_refused_with_the_reason():
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k):
        raise AssertionError("never called")

    with pytest.raises(KernelUnavailable, match="neither window_size nor is_causal"):
        varlen_attention(varlen_attn)


def test_the_installed_torch_signature_is_understood():
    varlen = pytest.importorskip("torch.nn.attention.varlen", reason="this torch has no torch.nn.attention.varlen")
    if not hasattr(varlen, "varlen_attn"):
        pytest.skip("this torch's torch.nn.attention.varlen has no varlen_attn")
    assert callable(varlen_attention(varlen.varlen_attn))


@pytest.mark.parametrize("style", list(STYLES))
def test_the_model_on_the_varlen_path_equals_the_reference_path(style):
    """Qwen3DFM with its attention swapped for the adapter (as kernels: fused does on a GPU) computes the torch
    path's output and gradients: packed documents, a padded tail, GQA, AdaLN(t), fp64 so only the stand-in's
    bf16 kernel dtype differs."""
    import dataclasses

    from tests.model.tiny import tiny_model

    ref, var = (tiny_model(seed=3, time_conditioning="adaln").double().train() for _ in range(2))
    kernels = var.kernels_for(torch.device("cpu"))
    var._kernels["cpu"] = dataclasses.replace(kernels, attention=varlen_attention(STYLES[style]([])), attention_is_varlen=True)
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 10, 32, 45, 64], dtype=torch.int32)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 27:] = False
    t = torch.tensor([0.25, 0.8], dtype=torch.float64)
    outs = []
    for model in (ref, var):
        hidden = model(ids, t=t, cu_seqlens=cu, attention_mask=mask)
        hidden[mask].square().sum().backward()
        outs.append((hidden[mask].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=3e-2, rtol=3e-2)
    assert outs[1][1].keys() == outs[0][1].keys()
    for name, grad in outs[0][1].items():
        err = (outs[1][1][name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert err < 3e-2, (name, float(err))
