"""Chunked linear + cross-entropy equals the naive full-logits computation, in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megadfm.model.kernels.linear_cross_entropy import linear_cross_entropy_torch

N, H, V, EXCLUDED = 37, 16, 300, 7


def naive(hidden, weight, targets, excluded):
    logits = (hidden @ weight.t()).float()
    if excluded is not None:
        logits[:, excluded] = float("-inf")
    return F.cross_entropy(logits, targets, reduction="none", ignore_index=-100)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) * 0.5
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[targets == EXCLUDED] = 0
    targets[[0, 5, 6, 30]] = -100
    upstream = torch.rand(N, generator=gen)  # per-token weights, like w(t)
    return hidden, weight, targets, upstream


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("excluded", [EXCLUDED, None])
def test_chunked_equals_naive_values_and_grads(chunk_size, excluded):
    hidden, weight, targets, upstream = inputs()
    results = []
    for fn in (naive, lambda h, w, t, e: linear_cross_entropy_torch(h, w, t, -100, e, chunk_size)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        losses = fn(h, w, targets, excluded)
        (losses * upstream).sum().backward()
        results.append((losses.detach(), h.grad, w.grad))
    (l0, gh0, gw0), (l1, gh1, gw1) = results
    assert l1.dtype == torch.float32
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh1, gh0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw1, gw0, atol=1e-5, rtol=1e-5)
    assert torch.all(l1[targets == -100] == 0)
    assert torch.all(gh1[targets == -100] == 0)
    if excluded is not None:
        assert torch.all(gw1[excluded] == 0)  # the mask token's head row gets no gradient


def test_mask_token_excluded_from_softmax():
    hidden, weight, targets, _ = inputs()
    hidden[:, 0] = 1.0  # a constant feature, so the mask row below gives a logit of 50 at every position,
    weight[EXCLUDED] = 0.0  # which would dominate the softmax if it were not excluded
    weight[EXCLUDED, 0] = 50.0
    with_mask = linear_cross_entropy_torch(hidden, weight, targets, -100, None, 8)
    without = linear_cross_entropy_torch(hidden, weight, targets, -100, EXCLUDED, 8)
    assert (with_mask - without)[targets != -100].min() > 1.0
    torch.testing.assert_close(without, naive(hidden, weight, targets, EXCLUDED))


def test_bf16_inputs_give_fp32_losses_close_to_fp32():
    hidden, weight, targets, upstream = inputs()
    h = hidden.bfloat16().requires_grad_()
    w = weight.bfloat16().requires_grad_()
    losses = linear_cross_entropy_torch(h, w, targets, -100, EXCLUDED, 8)
    (losses * upstream).sum().backward()
    assert losses.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    torch.testing.assert_close(losses, naive(h.float(), w.float(), targets, EXCLUDED), atol=2e-2, rtol=2e-2)


def test_shape_errors():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy_torch(torch.randn(4, H), torch.randn(V, H), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy_torch(torch.randn(4, H), torch.randn(V, H + 1), torch.zeros(4, dtype=torch.long))


# ---- the training form: sum_i w_i * CE_i with its gradients computed in forward -------------------------

def weighted(h, w, targets, upstream, excluded, chunk_size):
    from megadfm.model.kernels.linear_cross_entropy import weighted_linear_cross_entropy_torch

    return weighted_linear_cross_entropy_torch(h, w, targets, upstream, -100, excluded, chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("excluded", [EXCLUDED, None])
def test_weighted_grads_in_forward_equal_naive(chunk_size, excluded):
    hidden, weight, targets, upstream = inputs()
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    naive_losses = naive(h0, w0, targets, excluded)
    (naive_losses * upstream).sum().backward()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, ce = weighted(h1, w1, targets, upstream, excluded, chunk_size)
    loss.backward()
    assert loss.dim() == 0 and loss.dtype == torch.float32 and not ce.requires_grad
    torch.testing.assert_close(ce, naive_losses.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, (naive_losses.detach() * upstream).sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1.grad, h0.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w0.grad, atol=1e-5, rtol=1e-5)
    assert torch.all(ce[targets == -100] == 0) and torch.all(h1.grad[targets == -100] == 0)
    if excluded is not None:
        assert torch.all(w1.grad[excluded] == 0)


def test_weighted_loss_is_scaled_by_the_incoming_gradient():
    """The loss is not the last op: scaled (DeepSpeed's 1/accumulation), used twice, summed with another
    term. The gradients saved in forward are multiplied by whatever arrives."""
    hidden, weight, targets, upstream = inputs(seed=3)
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = (naive(h0, w0, targets, EXCLUDED) * upstream).sum()
    (0.25 * ref + ref ** 2 + (h0 ** 2).sum()).backward()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = weighted(h1, w1, targets, upstream, EXCLUDED, 8)
    (0.25 * loss + loss ** 2 + (h1 ** 2).sum()).backward()
    torch.testing.assert_close(h1.grad, h0.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w0.grad, atol=1e-4, rtol=1e-5)


def test_weighted_without_gradients_is_forward_only():
    hidden, weight, targets, upstream = inputs()
    w = weight.clone().requires_grad_()
    with torch.no_grad():
        loss, ce = weighted(hidden, w, targets, upstream, EXCLUDED, 8)
    assert loss.grad_fn is None and not loss.requires_grad
    torch.testing.assert_close(ce, naive(hidden, weight, targets, EXCLUDED))


def test_weighted_bf16_keeps_fp32_statistics():
    hidden, weight, targets, upstream = inputs()
    h, w = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss, ce = weighted(h, w, targets, upstream, EXCLUDED, 8)
    loss.backward()
    assert ce.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    hf, wf = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    (naive(hf, wf, targets, EXCLUDED) * upstream).sum().backward()
    torch.testing.assert_close(ce, naive(hf, wf, targets, EXCLUDED).detach(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(w.grad.float(), wf.grad, atol=2e-2, rtol=5e-2)


def test_chunk_size_comes_from_the_memory_budget(caplog):
    import logging

    from megadfm.model import ModelConfig, Qwen3DFM
    from megadfm.model.kernels.linear_cross_entropy import chunk_rows_for_budget
    from tests.model.tiny import tiny_config

    assert chunk_rows_for_budget(151936, 512 * 2**20) == 883  # the default at Qwen3's vocabulary
    assert ModelConfig().loss_chunk_memory_mb == 512
    assert chunk_rows_for_budget(151936, 1) == 1
    model = Qwen3DFM(tiny_config(loss_chunk_memory_mb=1))
    with caplog.at_level(logging.INFO, logger="megadfm.model"):
        rows = [model.loss_chunk_rows() for _ in range(3)]
    assert rows == [2**20 // (4 * model.cfg.vocab_size)] * 3
    assert sum("tokens per chunk" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert Qwen3DFM(tiny_config(loss_chunk_size=5)).loss_chunk_rows() == 5
