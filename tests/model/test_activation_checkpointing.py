"""Per-layer activation checkpointing recomputes exactly: identical loss and gradients."""

from __future__ import annotations

import torch

from tests.model.tiny import random_ids, tiny_model


def loss_and_grads(checkpointing: bool):
    model = tiny_model(seed=3, activation_checkpointing=checkpointing, time_conditioning="adaln").train()
    with torch.no_grad():  # train-like state: nonzero modulation so every path carries gradient
        for n, p in model.named_parameters():
            if model.parameter_group(n) == "time_conditioning":
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
    ids = random_ids((2, 10))
    cu = torch.tensor([0, 4, 10, 17, 20], dtype=torch.int32)
    hidden = model(ids, t=torch.tensor([0.2, 0.8]), cu_seqlens=cu)
    targets = random_ids((20,), seed=1)
    targets[::3] = -100
    loss = model.token_losses(hidden.reshape(20, -1), targets).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointing_gives_identical_loss_and_grads():
    loss_a, grads_a = loss_and_grads(False)
    loss_b, grads_b = loss_and_grads(True)
    torch.testing.assert_close(loss_b, loss_a, atol=0, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-7, rtol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads_a.items() if ".adaln." in n)
