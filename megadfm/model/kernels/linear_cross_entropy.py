"""Linear + cross-entropy over the vocabulary without materializing [N, V] fp32 logits.

``linear_cross_entropy(hidden [N, H], weight [V, H], targets [N], ignore_index, excluded_token,
chunk_size) -> losses [N] fp32`` is ``F.cross_entropy(hidden @ weight.T, targets, reduction='none')``
with the ``excluded_token`` column (the mask token) removed from the softmax and 0 loss (and 0
gradient) where ``targets == ignore_index``.

Reference (:class:`ChunkedLinearCrossEntropy`): a custom autograd.Function that walks the tokens in
chunks of ``chunk_size``; forward keeps only the per-token log-sum-exp, backward recomputes each
chunk's logits. Peak extra memory is one [chunk_size, V] fp32 block (plus its gradient), never
[N, V]. Logits come from a matmul in the input dtype and are cast to fp32; softmax and loss are fp32.

Weighted, gradients in forward (:class:`WeightedLinearCrossEntropy`, what training uses):
``weighted_linear_cross_entropy(hidden, weight, targets, token_weights, ...) -> (loss, ce)`` returns
the scalar ``sum_i token_weights_i * ce_i`` and the per-token CE [N] (detached, for telemetry). The
per-token upstream gradient of a weighted sum is known in forward (it is ``token_weights``), so each
chunk's softmax gradient is turned into its share of grad_hidden and grad_weight right there, while
the chunk's logits exist: three [N, H] x [H, V]-sized matmuls in all, like the naive loss, where the
recomputing reference needs four. Backward only multiplies the saved gradients by the incoming scalar
gradient (DeepSpeed's 1/accumulation scaling, a loss scale, or a sum with other losses). The chunk
size comes from a memory budget (:func:`chunk_rows_for_budget`): one [chunk, V] fp32 block is the
only vocabulary-sized buffer besides grad_weight. Without gradients (``torch.no_grad`` or inputs that
need none) it is a forward pass alone.

Fused (CUDA only): liger-kernel's fused linear cross-entropy (Triton) with ``reduction='none'``
when importable; the mask column is excluded by a bias that is -inf there and 0 elsewhere, so it
leaves the softmax exactly as the reference's -inf logit does. Older liger-kernel releases compute
reduction='none' gradients as if every token had the same upstream gradient, which is wrong for
per-token weights w(t); they are detected (no ``token_grad_output`` argument) and rejected. Without
liger-kernel the GPU path uses the chunked torch version above (candidate ``chunked``): its matmuls
are cuBLAS's and it never holds [N, V] logits, so there is no separate kernel to fuse; the log says so.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch

from megadfm.model.kernels.backend import Impl, KernelUnavailable, first_available, require


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, excluded_token: Optional[int]) -> torch.Tensor:
    logits = (h @ weight.t()).float()
    if excluded_token is not None:
        logits[:, excluded_token] = float("-inf")
    return logits


def _add_chunk_grads(grad_logits: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                     grad_hidden_rows: Optional[torch.Tensor], grad_weight: Optional[torch.Tensor]) -> None:
    """Turn one chunk's fp32 logit gradient [n, V] into its rows of grad_hidden (written) and its share of
    the fp32 grad_weight accumulator (added). None skips either."""
    grad_logits = grad_logits.to(weight.dtype)
    if grad_hidden_rows is not None:
        torch.mm(grad_logits, weight, out=grad_hidden_rows)
    if grad_weight is not None:
        if weight.dtype == torch.float32:
            grad_weight.addmm_(grad_logits.t(), h)
        else:
            grad_weight += (grad_logits.t() @ h).float()


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, excluded_token: Optional[int], chunk_size: int):
        n = hidden.shape[0]
        losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            losses[start:end], lse[start:end] = _chunk_ce_lse(hidden[start:end], weight, targets[start:end], ignore_index,
                                                              excluded_token)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index, ctx.excluded_token, ctx.chunk_size = ignore_index, excluded_token, chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        # fp32 accumulator for a low-precision weight: summing N/chunk bf16 partial products loses bits
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        n = hidden.shape[0]
        for start in range(0, n, ctx.chunk_size):
            end = min(start + ctx.chunk_size, n)
            h = hidden[start:end]
            tgt = targets[start:end]
            valid = tgt != ctx.ignore_index
            # d loss_i / d logits_i = softmax_i - onehot(target_i), scaled by the upstream gradient
            grad_logits = _chunk_logits(h, weight, ctx.excluded_token).sub_(lse[start:end, None]).exp_()
            rows = torch.arange(end - start, device=h.device)
            grad_logits[rows, torch.where(valid, tgt, 0)] -= valid.to(grad_logits.dtype)
            grad_logits.mul_(torch.where(valid, grad_losses[start:end].float(), 0.0)[:, None])
            _add_chunk_grads(grad_logits, h, weight, grad_hidden[start:end] if need_h else None, grad_weight)
            del grad_logits
        if need_w:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                               excluded_token: Optional[int] = None, chunk_size: int = 4096) -> torch.Tensor:
    _check(hidden, weight, targets, chunk_size)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, excluded_token, chunk_size)


def chunk_rows_for_budget(vocab_size: int, budget_bytes: int) -> int:
    """Rows per chunk such that one [rows, vocab] fp32 block fits ``budget_bytes`` (at least 1)."""
    return max(1, budget_bytes // (4 * vocab_size))


def _softmax_grad_chunk(h, weight, tgt, token_w, ignore_index, excluded_token):
    """(ce [n], grad of sum(token_w * ce) w.r.t. the chunk's logits [n, V] fp32) with one [n, V] buffer."""
    logits = _chunk_logits(h, weight, excluded_token)
    valid = tgt != ignore_index
    safe_tgt = torch.where(valid, tgt, 0)
    target_logit = logits.gather(1, safe_tgt[:, None]).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(row_max).exp_()  # in place: the logits are not needed again
    total = probs.sum(dim=1, keepdim=True)
    ce = torch.where(valid, (row_max + total.log()).squeeze(1) - target_logit, 0.0)
    # w_i * (softmax_i - onehot_i): normalising and weighting are one pass over [n, V] (1/total_i * w_i),
    # the one-hot part touches one entry per row
    w = torch.where(valid, token_w.float(), 0.0)
    probs.mul_(w[:, None] / total)
    rows = torch.arange(h.shape[0], device=h.device)
    probs[rows, safe_tgt] -= w
    return ce, probs


class WeightedLinearCrossEntropy(torch.autograd.Function):
    """sum_i token_weights_i * CE_i with grad_hidden and grad_weight computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, ignore_index: int, excluded_token: Optional[int], chunk_size: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        ce = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        # fp32 accumulator for a low-precision weight: summing N/chunk bf16 partial products loses bits
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            chunk_ce, grad_logits = _softmax_grad_chunk(h, weight, targets[start:end], token_weights[start:end],
                                                        ignore_index, excluded_token)
            ce[start:end] = chunk_ce
            _add_chunk_grads(grad_logits, h, weight, grad_hidden[start:end] if need_h else None, grad_weight)
            del grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        loss = (token_weights.float() * ce).sum()
        ctx.mark_non_differentiable(ce)
        return loss, ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce):
        grad_hidden, grad_weight = ctx.saved_tensors
        # The usual case (the loss is the whole objective, no scaling) costs nothing: no pass over [V, H].
        unit = grad_loss.numel() == 1 and float(grad_loss) == 1.0
        if grad_hidden is not None and not unit:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight if unit else grad_weight * grad_loss.float()).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def weighted_linear_cross_entropy_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                        token_weights: torch.Tensor, ignore_index: int = -100,
                                        excluded_token: Optional[int] = None,
                                        chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i token_weights_i * CE_i as a 0-dim fp32 tensor, CE [N] fp32 detached); see the module docstring."""
    _check(hidden, weight, targets, chunk_size)
    if token_weights.shape != targets.shape:
        raise ValueError(f"token_weights has shape {tuple(token_weights.shape)}, expected [N] = [{targets.shape[0]}]")
    token_weights = token_weights.detach()
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        ce = _forward_ce(hidden, weight, targets, ignore_index, excluded_token, chunk_size)  # evaluation: no gradients to make
        return (token_weights.float() * ce).sum(), ce
    return WeightedLinearCrossEntropy.apply(hidden, weight, targets, token_weights, ignore_index, excluded_token, chunk_size)


def _forward_ce(hidden, weight, targets, ignore_index, excluded_token, chunk_size) -> torch.Tensor:
    """Per-token CE [N] fp32 and nothing else (the forward of both autograd functions)."""
    n = hidden.shape[0]
    losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        losses[start:end] = _chunk_ce_lse(hidden[start:end], weight, targets[start:end], ignore_index, excluded_token)[0]
    return losses


def _chunk_ce_lse(h, weight, tgt, ignore_index, excluded_token) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE [n], log-sum-exp [n]) of one chunk."""
    logits = _chunk_logits(h, weight, excluded_token)
    valid = tgt != ignore_index
    chunk_lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, torch.where(valid, tgt, 0)[:, None]).squeeze(1)
    return torch.where(valid, chunk_lse - target_logit, 0.0), chunk_lse


def _check(hidden, weight, targets, chunk_size):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy needs hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected [N] = [{hidden.shape[0]}]")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


TORCH = Impl("torch chunked, gradients in forward", {"linear_cross_entropy": linear_cross_entropy_torch,
                                                     "weighted_linear_cross_entropy": weighted_linear_cross_entropy_torch})


def liger(device_type: str) -> Impl:
    hint = "pip install liger-kernel (part of the [gpu] extra)"
    functional, ops = require(device_type, "fused linear cross-entropy (liger-kernel)",
                              ("liger_kernel.transformers.functional", "liger-kernel", hint),
                              ("liger_kernel.ops.fused_linear_cross_entropy", "liger-kernel", hint))
    if "token_grad_output" not in inspect.signature(ops.fused_linear_cross_entropy_forward).parameters:
        raise KernelUnavailable("the installed liger-kernel computes reduction='none' gradients without the per-token "
                                "upstream gradient (wrong for weighted losses); upgrade liger-kernel")
    liger_flce = functional.liger_fused_linear_cross_entropy

    def linear_cross_entropy_liger(hidden, weight, targets, ignore_index=-100, excluded_token=None, chunk_size=4096):
        _check(hidden, weight, targets, chunk_size)  # liger picks its own chunking
        bias = None
        if excluded_token is not None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            bias[excluded_token] = float("-inf")
        out = liger_flce(hidden, weight, targets, bias=bias, ignore_index=ignore_index, reduction="none")
        losses = out[0] if isinstance(out, tuple) else out
        return losses.float()

    def weighted_linear_cross_entropy_liger(hidden, weight, targets, token_weights, ignore_index=-100, excluded_token=None,
                                            chunk_size=4096):
        losses = linear_cross_entropy_liger(hidden, weight, targets, ignore_index, excluded_token, chunk_size)
        return (token_weights.detach().float() * losses).sum(), losses.detach()

    return Impl("liger-kernel fused linear cross-entropy", {"linear_cross_entropy": linear_cross_entropy_liger,
                                                             "weighted_linear_cross_entropy": weighted_linear_cross_entropy_liger})


def chunked(device_type: str) -> Impl:
    require(device_type, "the GPU path's chunked linear cross-entropy")
    return Impl("torch chunked, gradients in forward (the GPU path without liger-kernel)", TORCH.fns)


FUSED = {"liger": liger, "chunked": chunked}
DEFAULT = ("liger", "chunked")


def fused(device_type: str, name: Optional[str] = None) -> Impl:
    return first_available("linear_cross_entropy", FUSED, DEFAULT, device_type, name)
