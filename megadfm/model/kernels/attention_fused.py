"""The fused (CUDA) candidates of varlen attention, same signature as attention.attention_torch.

- ``torch_varlen`` (the default): PyTorch's own flash kernels through
  ``torch.nn.attention.varlen.varlen_attn``; nothing to install. Its signature changed between
  releases, so what it accepts is read off ``inspect.signature`` (never the version string):
  ``window_size=(-1, -1)`` (bidirectional) / ``(-1, 0)`` (causal) where it takes a window, else
  ``is_causal``; ``enable_gqa=True`` where it takes it, else the key/value heads are repeated to
  the query heads (query head h uses kv head h // (Hq / Hkv), as the reference); ``scale`` where
  accepted (its default is the same 1/sqrt(D)).
- ``flash_attn``: flash-attn's ``flash_attn_varlen_func``, only when named
  (``model.kernel_impls: {attention: flash_attn}``).

Both take the unpadded tokens and ``cu_seqlens`` of :class:`AttentionLayout` (``layout.varlen``).
Precision: the kernels compute in bf16 (fp16 also accepted) with fp32 softmax statistics inside
the kernel; fp32 inputs (a GPU run with model.dtype float32 and no DeepSpeed bf16) are cast to bf16
and the output cast back, which is logged once (docs/DESIGN.md §4, "Precision of the fused path").
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import torch

from megadfm.model.kernels.backend import Impl, KernelUnavailable, require

logger = logging.getLogger("megadfm.model.kernels")

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_CAST_LOGGED = set()


def _kernel_dtype(dtype: torch.dtype, what: str) -> torch.dtype:
    if dtype in KERNEL_DTYPES:
        return dtype
    if what not in _CAST_LOGGED:
        _CAST_LOGGED.add(what)
        logger.warning("kernels: %s computes in bf16; %s inputs are cast to bf16 and the output back (logged once)",
                       what, dtype)
    return torch.bfloat16


def _unpadded(q, k, v, layout, kernel_dtype):
    """[B, H, L, D] -> [T, H, D] (the valid tokens only when the layout has padding)."""
    B, _, L, D = q.shape
    index = layout.varlen[2]
    out = []
    for x in (q, k, v):
        x = x.transpose(1, 2).reshape(B * L, x.shape[1], D)
        if index is not None:
            x = x[index]
        out.append(x.to(kernel_dtype))
    return out


def _repadded(out, q, layout):
    B, Hq, L, D = q.shape
    index = layout.varlen[2]
    out = out.to(q.dtype)
    if index is not None:
        out = out.new_zeros(B * L, Hq, D).index_copy(0, index, out)
    return out.view(B, L, Hq, D)


def varlen_attention(fn: Callable) -> Callable:
    """Adapt a ``varlen_attn``-like function to the reference signature, by what its signature accepts."""
    params = inspect.signature(fn).parameters
    if "window_size" in params:
        def direction(causal):
            return {"window_size": (-1, 0) if causal else (-1, -1)}
    elif "is_causal" in params:
        def direction(causal):
            return {"is_causal": causal}
    else:
        raise KernelUnavailable(f"torch varlen_attn{inspect.signature(fn)} takes neither window_size nor is_causal, so "
                                "bidirectional attention cannot be asked for")
    native_gqa = "enable_gqa" in params
    takes_scale = "scale" in params

    def attention_torch_varlen(q, k, v, layout):
        Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[3]
        if Hq % Hkv != 0:
            raise ValueError(f"query heads {Hq} are not a multiple of key/value heads {Hkv}")
        cu, max_seqlen, _ = layout.varlen
        qs, ks, vs = _unpadded(q, k, v, layout, _kernel_dtype(q.dtype, "torch varlen attention"))
        kwargs = direction(layout.causal)
        if takes_scale:
            kwargs["scale"] = D ** -0.5
        if Hq != Hkv:
            if native_gqa:
                kwargs["enable_gqa"] = True
            else:
                ks, vs = (x.repeat_interleave(Hq // Hkv, dim=1) for x in (ks, vs))
        out = fn(qs, ks, vs, cu, cu, max_seqlen, max_seqlen, **kwargs)
        return _repadded(out, q, layout)

    attention_torch_varlen.native_gqa = native_gqa
    return attention_torch_varlen


def torch_varlen(device_type: str) -> Impl:
    (mod,) = require(device_type, "PyTorch varlen attention",
                     ("torch.nn.attention.varlen", "torch.nn.attention.varlen",
                      "a PyTorch release with torch.nn.attention.varlen (or name flash_attn in model.kernel_impls)"))
    fn = getattr(mod, "varlen_attn", None)
    if fn is None:
        raise KernelUnavailable("torch.nn.attention.varlen has no varlen_attn in this PyTorch")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise KernelUnavailable(f"PyTorch's flash kernels need compute capability >= 8.0 (Ampere); this GPU is {major}.{minor}")
    attention = varlen_attention(fn)
    gqa = "native GQA" if attention.native_gqa else "GQA by repeating kv heads"
    return Impl(f"torch varlen_attn (PyTorch flash kernels, {gqa})", {"attention": attention, "varlen": True})


def flash_attn(device_type: str) -> Impl:
    (mod,) = require(device_type, "flash-attn varlen attention",
                     ("flash_attn", "flash-attn", "pip install flash-attn --no-build-isolation (the [flash] extra; needs CUDA and a long build)"))
    flash_varlen = mod.flash_attn_varlen_func

    def attention_flash(q, k, v, layout):
        D = q.shape[3]
        cu, max_seqlen, _ = layout.varlen
        qs, ks, vs = _unpadded(q, k, v, layout, _kernel_dtype(q.dtype, "flash-attn varlen attention"))
        out = flash_varlen(qs, ks, vs, cu, cu, max_seqlen, max_seqlen, dropout_p=0.0, softmax_scale=D ** -0.5,
                           causal=layout.causal)
        return _repadded(out, q, layout)

    return Impl("flash-attn varlen", {"attention": attention_flash, "varlen": True})
