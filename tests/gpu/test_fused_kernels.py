"""Every fused candidate of every op against its torch reference, forward and backward, in bf16 on a GPU.

Skipped on machines without CUDA (the reason is in the marker). A candidate whose package is missing
(liger-kernel, flash-attn, apex) is skipped with the KernelUnavailable reason; the stock-PyTorch
candidates (torch_varlen, compile, chunked) must run on any CUDA machine with Triton, and
test_fused_backend_needs_nothing_but_pytorch fails if one of them cannot.

Tolerances (both sides in bf16, which rounds at 2^-8 = 0.4% relative, and sum in different orders):
- element-wise ops (RMSNorm, rotary, AdaLN), their input and weight gradients: atol = rtol = 2e-2;
- attention outputs and q/k/v gradients: atol = rtol = 2e-2 (fp32 softmax statistics on both sides);
- linear cross-entropy losses and gradients (a 151,936-way softmax): atol = rtol = 3e-2;
- the whole model (2 layers): relative error ||fused - torch|| / ||torch|| below 2e-2 for the output
  and for every parameter gradient.
"""

from __future__ import annotations

import pytest
import torch

from megadfm.model.kernels import KernelUnavailable, select_kernels
from megadfm.model.kernels import adaln, attention, linear_cross_entropy, rmsnorm, rotary
from megadfm.model.kernels.attention import AttentionLayout
from megadfm.model.kernels.rotary import rotary_cos_sin

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="fused kernels run on CUDA only and this machine has no CUDA device")]
DEV, BF16 = "cuda", torch.bfloat16
ELEMENTWISE, ATTENTION, CE = 2e-2, 2e-2, 3e-2


def candidate_or_skip(module, name):
    try:
        return module.FUSED[name](DEV).fns
    except KernelUnavailable as why:
        pytest.skip(f"{module.__name__} candidate {name} unavailable: {why}")


def grads_of(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(0)
    sum(o.float().mul(torch.randn_like(o.float())).sum() for o in outs).backward()
    return [o.detach().float() for o in outs], [leaf.grad.float() for leaf in leaves]


def assert_match(fused_fn, torch_fn, *tensors, tol):
    (out_f, grad_f), (out_t, grad_t) = grads_of(fused_fn, *tensors), grads_of(torch_fn, *tensors)
    for a, b in zip(out_f + grad_f, out_t + grad_t):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", list(rmsnorm.FUSED))
@pytest.mark.parametrize("shape", [(4, 128, 256), (2, 64, 8, 128)], ids=["hidden", "per-head"])
def test_rmsnorm(name, shape):
    fns = candidate_or_skip(rmsnorm, name)
    x, w = torch.randn(*shape, device=DEV, dtype=BF16), 1 + 0.1 * torch.randn(shape[-1], device=DEV, dtype=BF16)
    assert_match(lambda x, w: fns["rms_norm"](x, w, 1e-6), lambda x, w: rmsnorm.rms_norm_torch(x, w, 1e-6), x, w, tol=ELEMENTWISE)


@pytest.mark.parametrize("name", list(rotary.FUSED))
def test_rotary(name):
    fns = candidate_or_skip(rotary, name)
    B, L, D = 2, 64, 128
    q = torch.randn(B, L, 8, D, device=DEV, dtype=BF16).transpose(1, 2)  # model layout: a [B, L, H, D] buffer
    k = torch.randn(B, L, 4, D, device=DEV, dtype=BF16).transpose(1, 2)
    pos = torch.cat([torch.arange(20), torch.arange(44)]).to(DEV).expand(B, L)
    cos, sin = rotary_cos_sin(pos, D, 1e6, BF16)
    assert_match(lambda q, k: fns["apply_rotary"](q, k, cos, sin), lambda q, k: rotary.apply_rotary_torch(q, k, cos, sin),
                 q, k, tol=ELEMENTWISE)


@pytest.mark.parametrize("name", list(attention.FUSED))
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("with_key_mask", [False, True], ids=["packed", "packed+padding"])
def test_attention(name, causal, with_key_mask):
    fns = candidate_or_skip(attention, name)
    B, L, D = 2, 96, 128
    q = torch.randn(B, L, 8, D, device=DEV, dtype=BF16).transpose(1, 2)
    k, v = (torch.randn(B, L, 4, D, device=DEV, dtype=BF16).transpose(1, 2) for _ in range(2))
    cu = torch.tensor([0, 30, 80, 96, 150, 192], dtype=torch.int32, device=DEV)
    mask = None
    if with_key_mask:
        mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
        mask[1, 54:] = False  # the last segment of row 1 is padding
    dense = AttentionLayout(B, L, torch.device(DEV), causal, cu, None, mask, varlen=False)
    varlen = AttentionLayout(B, L, torch.device(DEV), causal, cu, None, mask, varlen=True)
    real = mask if mask is not None else torch.ones(B, L, dtype=torch.bool, device=DEV)
    # real positions only (padding outputs are meaningless by contract)
    assert_match(lambda q, k, v: fns["attention"](q, k, v, varlen)[real],
                 lambda q, k, v: attention.attention_torch(q, k, v, dense)[real], q, k, v, tol=ATTENTION)


@pytest.mark.parametrize("name", list(adaln.FUSED))
def test_adaln(name):
    fns = candidate_or_skip(adaln, name)
    x, y = (torch.randn(2, 64, 256, device=DEV, dtype=BF16) for _ in range(2))
    w = 1 + 0.1 * torch.randn(256, device=DEV, dtype=BF16)
    shift, scale, gate = (0.1 * torch.randn(2, 256, device=DEV, dtype=BF16) for _ in range(3))
    assert_match(lambda x, w, s, c: fns["adaln_modulate"](x, w, 1e-6, s, c),
                 lambda x, w, s, c: adaln.adaln_modulate_torch(x, w, 1e-6, s, c), x, w, shift, scale, tol=ELEMENTWISE)
    assert_match(fns["gated_residual"], adaln.gated_residual_torch, x, y, gate, tol=ELEMENTWISE)


def ce_inputs():
    N, H, V = 1024, 256, 151936
    gen = torch.Generator(device=DEV).manual_seed(0)
    h = torch.randn(N, H, device=DEV, dtype=BF16, generator=gen)
    w = 0.05 * torch.randn(V, H, device=DEV, dtype=BF16, generator=gen)
    targets = torch.randint(0, 151669, (N,), device=DEV, generator=gen)
    targets[::7] = -100
    return h, w, targets


@pytest.mark.parametrize("name", list(linear_cross_entropy.FUSED))
def test_linear_cross_entropy_excludes_the_mask_logit_like_the_reference(name):
    fns = candidate_or_skip(linear_cross_entropy, name)
    h, w, targets = ce_inputs()

    def run(impl):
        return lambda h, w: impl(h, w, targets, -100, 151669, 256)

    assert_match(run(fns["linear_cross_entropy"]), run(linear_cross_entropy.linear_cross_entropy_torch), h, w, tol=CE)
    # the excluded logit really is excluded: a huge mask-row weight changes nothing
    w2 = w.clone()
    w2[151669] = 50.0
    with torch.no_grad():
        torch.testing.assert_close(fns["linear_cross_entropy"](h, w2, targets, -100, 151669, 256),
                                   fns["linear_cross_entropy"](h, w, targets, -100, 151669, 256), atol=CE, rtol=CE)


@pytest.mark.parametrize("name", list(linear_cross_entropy.FUSED))
def test_weighted_linear_cross_entropy(name):
    fns = candidate_or_skip(linear_cross_entropy, name)
    h, w, targets = ce_inputs()
    weights = torch.rand(h.shape[0], device=DEV) * 4  # per-token weights w(t): the liger bug class

    def run(impl):
        return lambda h, w: impl(h, w, targets, weights, -100, 151669, 256)[0]

    assert_match(run(fns["weighted_linear_cross_entropy"]), run(linear_cross_entropy.weighted_linear_cross_entropy_torch),
                 h, w, tol=CE)


def test_fused_backend_needs_nothing_but_pytorch():
    """kernels: fused resolves every op on a stock PyTorch + Triton CUDA machine: no op is left to the reference."""
    kernels = select_kernels("fused", DEV, log=False)  # raises KernelUnavailableError naming any op that cannot
    references = {"rmsnorm": rmsnorm, "rotary": rotary, "attention": attention, "adaln": adaln,
                  "linear_cross_entropy": linear_cross_entropy}
    for op, name in kernels.chosen.items():
        assert name != references[op].TORCH.name, f"{op} resolved to the reference: {name}"
    assert kernels.attention_is_varlen and kernels.chosen["attention"].startswith("torch varlen_attn")


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def test_model_fused_equals_torch_forward_and_backward():
    from megadfm.model import ModelConfig, Qwen3DFM

    kw = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              dtype="bfloat16", time_conditioning="adaln")
    fused_model = Qwen3DFM(ModelConfig(kernels="fused", **kw), seed=0).to(DEV)
    ref_model = Qwen3DFM(ModelConfig(kernels="torch", **kw), seed=0).to(DEV)
    with torch.no_grad():  # AdaLN starts at zero: give the modulation something to do
        for m in (fused_model, ref_model):
            g = torch.Generator(device=DEV).manual_seed(1)
            for name, p in m.named_parameters():
                if "adaln" in name:
                    p.copy_(0.02 * torch.randn(p.shape, device=DEV, generator=g, dtype=torch.float32).to(p.dtype))
    ids = torch.randint(0, 151669, (2, 128), device=DEV)
    cu = torch.tensor([0, 50, 128, 200, 256], dtype=torch.int32, device=DEV)
    t = torch.tensor([0.3, 0.7], device=DEV)
    targets = torch.randint(0, 151669, (256,), device=DEV)
    outs = []
    for m in (fused_model, ref_model):
        hidden = m(ids, t=t, cu_seqlens=cu)
        m.token_losses(hidden.reshape(256, -1), targets).mean().backward()
        outs.append(hidden.detach())
    assert rel_err(outs[0], outs[1]) < 2e-2
    ref_params = dict(ref_model.named_parameters())
    for name, p in fused_model.named_parameters():
        if p.grad is not None and ref_params[name].grad.norm() > 0:
            assert rel_err(p.grad, ref_params[name].grad) < 2e-2, name
