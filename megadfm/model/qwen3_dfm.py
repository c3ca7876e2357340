"""Qwen3-DFM: the Qwen3 transformer, bidirectional (or causal), with AdaLN(t) time conditioning.

A plain ``nn.Module`` (no DeepSpeed, no files). The backbone is Qwen3 exactly: token embedding,
blocks of [RMSNorm -> GQA attention with per-head q/k RMSNorm and RoPE -> residual, RMSNorm ->
SwiGLU MLP -> residual], a final RMSNorm and a tied or untied LM head. Differences from
transformers' Qwen3ForCausalLM, all switchable back:

- attention is bidirectional within each document of a packed sample (``attention_mode``);
- every block is modulated by t through AdaLN (time_conditioning.py), zero-initialized so a
  converted checkpoint computes the pretrained function at step 0;
- the mask token's logit is -inf (it is never predicted) and the loss never builds [N, V] logits.

Parameter names are HF Qwen3's minus ``model.`` (see megadfm/conversion/name_map.py), e.g.
``layers.0.self_attn.q_proj.weight``; time conditioning lives under ``time_embedding.*``,
``layers.{i}.adaln.*`` and ``adaln_single.*``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megadfm.model import block_forward
from megadfm.model.config import ModelConfig
from megadfm.model.kernels import KernelSet, KernelUnavailable, select_kernels
from megadfm.model.kernels import attention_pattern
from megadfm.model.kernels.attention_pattern import TwoStreamBlockPattern, flex_block_mask
from megadfm.model.attention_anneal import AttentionAnneal
from megadfm.model.kernels.attention import AttentionLayout, attention_torch
from megadfm.model.kernels.linear_cross_entropy import chunk_rows_for_budget
from megadfm.model.kernels.rotary import rotary_cos_sin
from megadfm.model.kv_cache import KVCache, Positions
from megadfm.model.param_init import Embedding, Linear, ParamInit
from megadfm.model.time_conditioning import AdaLNProjection, AdaLNTable, TimeEmbedding, TokenTimes, make_block_adaln

logger = logging.getLogger("megadfm.model")

IGNORE_INDEX = -100


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor, kernels: KernelSet, shift: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """rmsnorm(x), or with AdaLN ``rmsnorm(x) * (1 + scale) + shift`` (one kernel). Going through the
        module (not reading .weight from outside) keeps ZeRO-3's per-module parameter gathering working."""
        if shift is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.adaln_modulate(x, self.weight, self.eps, shift, scale)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, init: ParamInit):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.resolved_head_dim
        H, q, kv, bias = cfg.hidden_size, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, cfg.attention_bias
        self.q_proj = Linear(H, q, bias, init)
        self.k_proj = Linear(H, kv, bias, init)
        self.v_proj = Linear(H, kv, bias, init)
        self.o_proj = Linear(q, H, bias, init)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, init.dtype)  # per head, before RoPE (Qwen3)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, init.dtype)

    def forward(self, x, cos, sin, layout: AttentionLayout, kernels: KernelSet):
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim), kernels).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim), kernels).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = kernels.rotary(q, k, cos, sin)
        out = kernels.attention(q, k, v, layout)  # [B, L, Hq, D]
        return self.o_proj(out.reshape(B, L, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, init: ParamInit):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False, init)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False, init)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, init)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One Qwen3 decoder layer; with time conditioning, both sub-blocks are AdaLN-modulated."""

    def __init__(self, cfg: ModelConfig, init: ParamInit):
        super().__init__()
        self.self_attn = Attention(cfg, init)
        self.mlp = MLP(cfg, init)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, init.dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, init.dtype)
        self.adaln = make_block_adaln(cfg.time_conditioning, cfg.hidden_size, init)

    def forward(self, x, cos, sin, layout, kernels: KernelSet, cond):
        """cond: the per-block input of the modulation (c [B, H] for adaln, the shared [B, 6, H] for adaln_single),
        or a :class:`TokenTimes` when t differs between the tokens of a row."""
        if cond is None:
            x = x + self.self_attn(self.input_layernorm(x, kernels), cos, sin, layout, kernels)
            return x + self.mlp(self.post_attention_layernorm(x, kernels))
        B, L, H = x.shape
        if isinstance(cond, TokenTimes):
            # One modulation per token: the modulation kernels take one [H] vector per row, so the tokens are
            # handed to them as B*L rows of length 1 (no kernel needs a per-token variant).
            mods = self.adaln(cond.values).index_select(0, cond.index.reshape(-1))
            rows, back = (lambda y: y.reshape(B * L, 1, H)), (lambda y: y.reshape(B, L, H))
        else:
            mods = self.adaln(cond)
            rows = back = (lambda y: y)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods.unbind(1)
        h = back(self.input_layernorm(rows(x), kernels, shift_a, scale_a))
        x = back(kernels.gated_residual(rows(x), rows(self.self_attn(h, cos, sin, layout, kernels)), gate_a))
        h = self.post_attention_layernorm(rows(x), kernels, shift_m, scale_m)
        return back(kernels.gated_residual(rows(x), self.mlp(h), gate_m))


class Qwen3DFM(nn.Module):
    """Bidirectional Qwen3 + AdaLN(t). See docs/INTERFACES.md for the contract.

    ``Qwen3DFM(cfg, seed=0)`` initializes every parameter deterministically from ``seed`` while it is
    built (param_init.py; a private generator, so the global RNG is untouched, and compatible with
    deepspeed.zero.Init): the Qwen3/HF scheme of normal(0, initializer_range) linear and embedding
    weights, zero biases and unit norms; the time MLP normal(0, initializer_range); every modulation
    output zero. Parameters are created in ``cfg.dtype``.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        init = ParamInit.seeded(seed, cfg.initializer_range, getattr(torch, cfg.dtype))
        # construction order is the order random numbers are drawn in; reset_parameters replays it
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, init)
        self.layers = nn.ModuleList(Block(cfg, init) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, init.dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, init)
        self.time_embedding = TimeEmbedding(cfg.time_embedding_dim, cfg.hidden_size, init) if cfg.time_conditioning != "none" else None
        self.adaln_single = AdaLNProjection(cfg.hidden_size, init) if cfg.time_conditioning == "adaln_single" else None
        self.activation_checkpointing = cfg.activation_checkpointing
        self._kernels: Dict[str, KernelSet] = {}
        # set per step by the training's AttentionAnnealCallback while dfm.attention_anneal_steps lasts; None: the
        # model attends as attention_mode says (never saved: the step alone determines it)
        self.attention_anneal: Optional[AttentionAnneal] = None
        # resolve now for the device training will use, so the choice (or the error) comes first in the log
        self.kernels_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    # ---- initialization ------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Re-initialize in place exactly as ``Qwen3DFM(cfg, seed)`` would (not under ZeRO-3 partitioning)."""
        init = ParamInit.seeded(seed, self.cfg.initializer_range, self.embed_tokens.weight.dtype)
        for module in self.modules():  # pre-order = construction order of the leaves
            if isinstance(module, (Linear, Embedding)):
                module._param_init = init
                module.reset_parameters()
                module._param_init = None
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, AdaLNTable):
                module.table.zero_()

    @torch.no_grad()
    def init_mask_embedding(self) -> None:
        """Set the mask token's embedding row to the mean of the rows before it.

        For Qwen3 that is the mean of the 151,669 trained rows 0..151668 (rows above are padding
        that was never trained). The mean puts <|mask|> at the centre of the token cloud with a
        typical norm, so the first DFM steps see a neutral input rather than an untrained vector.
        An untied lm_head's mask row is left as it is: the mask logit is forced to -inf, so that
        row never affects an output and receives exactly zero gradient.
        """
        mask_embedding_init_(self.embed_tokens.weight, self.cfg.mask_token_id)

    # ---- bookkeeping ---------------------------------------------------------------------------

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM-head weight [V, H] (the embedding matrix when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def parameter_group(self, name: str) -> str:
        """'embeddings' | 'backbone' | 'head' | 'time_conditioning' for a parameter name.

        A tied embedding is 'embeddings' (it is also the head; there is no separate head parameter)."""
        if _is_time_module(name):
            return "time_conditioning"
        if name.startswith("embed_tokens."):
            return "embeddings"
        if name.startswith("lm_head."):
            return "head"
        if name.startswith("layers.") or name.startswith("norm."):
            return "backbone"
        raise KeyError(f"{name!r} is not a Qwen3DFM parameter name")

    def kernels_for(self, device: torch.device) -> KernelSet:
        """The kernel set for a device type, resolved (and logged) once per type per model."""
        if device.type not in self._kernels:
            self._kernels[device.type] = select_kernels(self.cfg.kernels, device.type, impls=self.cfg.kernel_impls)
        return self._kernels[device.type]

    # ---- forward -------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, t: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None,
                attention_mask: Optional[torch.Tensor] = None,
                attention_pattern: Optional[TwoStreamBlockPattern] = None) -> torch.Tensor:
        """input_ids [B, L] (+ t [B] in [0, 1], 1 = clean) -> hidden states [B, L, H] after the final norm.

        Attention stays within each segment of ``cu_seqlens`` (over the flattened B*L tokens) and
        never reaches keys where ``attention_mask`` is False. ``position_ids`` default to positions
        restarting at every segment start (or 0..L-1 per row without cu_seqlens).

        Block diffusion (megadfm/dfm/block_diffusion.py) passes t [B, L] (a time per token) and its
        two-stream ``attention_pattern`` (bidirectional model only): FlexAttention on CUDA, torch's SDPA
        with the dense mask otherwise (megadfm/model/kernels/attention_pattern.py).
        """
        cfg = self.cfg
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        # what bounds the model is the largest position (rotary), not the row length: block diffusion's two-stream
        # rows hold every position twice
        if position_ids is not None and position_ids.numel() and int(position_ids.max()) >= cfg.max_position_embeddings:
            raise ValueError(f"position {int(position_ids.max())} exceeds model.max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        if position_ids is None and L > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds model.max_position_embeddings={cfg.max_position_embeddings}")
        kernels = self.kernels_for(input_ids.device)
        anneal = self.attention_anneal if cfg.attention_mode == "bidirectional" else None
        if attention_pattern is not None:
            if cfg.attention_mode != "bidirectional" or anneal is not None:
                raise ValueError("attention_pattern (block diffusion) needs model.attention_mode: bidirectional and no "
                                 "attention annealing")
            if attention_pattern.batch_size != B or attention_pattern.length != L:
                raise ValueError(f"attention_pattern is for [{attention_pattern.batch_size}, {attention_pattern.length}] "
                                 f"tokens, input_ids are [{B}, {L}]")
            kernels = self._pattern_kernels(kernels)
            if getattr(kernels.attention, "uses_flex_block_mask", False):
                layout = AttentionLayout(B, L, input_ids.device, False, flex_mask=flex_block_mask(attention_pattern))
            else:
                layout = AttentionLayout(B, L, input_ids.device, False, cu_seqlens, max_seqlen, attention_mask,
                                         allowed=attention_pattern.dense())
        elif anneal is not None:  # causal + a fraction of future keys: an explicit mask (megadfm/model/attention_anneal.py)
            kernels = self._annealing_kernels(kernels)
            layout = AttentionLayout(B, L, input_ids.device, True, cu_seqlens, max_seqlen, attention_mask,
                                     future_visible=anneal.future_visible(B, L, input_ids.device))
        else:
            layout = AttentionLayout(B, L, input_ids.device, cfg.attention_mode == "causal", cu_seqlens, max_seqlen,
                                     attention_mask, varlen=kernels.attention_is_varlen)
        if position_ids is None:
            position_ids = layout.segment_positions() if cu_seqlens is not None else \
                torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, cfg.resolved_head_dim, cfg.rope_theta, x.dtype)
        cond = self._time_condition(t, B, L)
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, layout, kernels, cond, use_reentrant=False)
            else:
                x = layer(x, cos, sin, layout, kernels, cond)
        return self.norm(x, kernels)

    def _annealing_kernels(self, kernels: KernelSet) -> KernelSet:
        """The kernel set with torch's SDPA attention (the annealing mask is explicit; flash varlen takes none)."""
        if not kernels.attention_is_varlen:
            return kernels
        key = f"{kernels.device_type}:annealing"
        if key not in self._kernels:
            logger.info("attention annealing: torch SDPA with a dense mask instead of %s while the anneal lasts",
                        kernels.chosen.get("attention", "the fused attention"))
            self._kernels[key] = dataclasses.replace(kernels, attention=attention_torch, attention_is_varlen=False)
        return self._kernels[key]

    def _pattern_kernels(self, kernels: KernelSet) -> KernelSet:
        """The kernel set for an explicit attention pattern: FlexAttention on CUDA (unless model.kernels is torch),
        else torch's SDPA with the dense mask; the choice and any fallback reason are logged once."""
        key = f"{kernels.device_type}:pattern"
        if key not in self._kernels:
            if kernels.device_type == "cuda" and self.cfg.kernels != "torch":
                try:
                    fn, why = attention_pattern.flex(kernels.device_type), "FlexAttention (torch.compile)"
                except KernelUnavailable as reason:
                    fn, why = attention_torch, f"torch SDPA + dense mask (FlexAttention unavailable: {reason})"
            else:
                fn, why = attention_torch, f"torch SDPA + dense mask (model.kernels {self.cfg.kernels}, {kernels.device_type})"
            logger.info("attention for block diffusion's two-stream pattern: %s", why)
            self._kernels[key] = dataclasses.replace(kernels, attention=fn, attention_is_varlen=False)
        return self._kernels[key]

    def _time_condition(self, t: Optional[torch.Tensor], batch_size: int, seq_len: int):
        """None, the conditioning [B, ...] of t [B], or a :class:`TokenTimes` for t [B, L] (a time per token)."""
        if self.time_embedding is None:
            return None
        if t is None:
            raise ValueError(f"time_conditioning={self.cfg.time_conditioning!r} needs t [B] in [0, 1] "
                             "(t = 1 is clean data; pass torch.ones(B) for unmasked input)")
        if t.shape == (batch_size, seq_len) and t.dim() == 2:
            times, index = torch.unique(t, return_inverse=True)
            c = self.time_embedding(times)
            return TokenTimes(self.adaln_single(c) if self.adaln_single is not None else c, index)
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape [B] = [{batch_size}] (or [B, L] = [{batch_size}, {seq_len}], a time "
                             f"per token), got {tuple(t.shape)}")
        c = self.time_embedding(t)
        return self.adaln_single(c) if self.adaln_single is not None else c

    # ---- block-wise forward with a K/V cache (sampling; block_forward.py, kv_cache.py) ----------

    def forward_with_cache(self, input_ids: torch.Tensor, t: Optional[torch.Tensor] = None,
                           attention_mask: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                           cache_positions: Optional[Positions] = None,
                           block_size: Optional[int] = None) -> Tuple[torch.Tensor, KVCache]:
        """Full forward -> (hidden [B, L, H], KVCache of ``cache_positions``, default all). One document per row;
        ``block_size``: block-causal attention. See :func:`megadfm.model.block_forward.forward_with_cache`."""
        return block_forward.forward_with_cache(self, input_ids, t, attention_mask, cu_seqlens, cache_positions, block_size)

    def forward_block(self, input_ids: torch.Tensor, t: Optional[torch.Tensor], positions: Positions, cache: KVCache,
                      attention_mask: Optional[torch.Tensor] = None, append: bool = False):
        """hidden [B, Lb, H] of input_ids [B, Lb] at ``positions`` [Lb], attending to the cached K/V of the
        other positions (an approximation once they are stale); ``append``: also the cache grown by the block.
        See :func:`megadfm.model.block_forward.forward_block`."""
        return block_forward.forward_block(self, input_ids, t, positions, cache, attention_mask, append)

    # ---- head and loss -------------------------------------------------------------------------

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., V] fp32 logits with the mask token's logit at -inf. Builds all logits: for sampling
        and evaluation of a few positions; training uses :meth:`token_losses`."""
        logits = F.linear(hidden, self.output_weight).float()
        logits[..., self.cfg.mask_token_id] = float("-inf")
        return logits

    def token_losses(self, hidden_flat: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy [N] fp32 of targets [N] given hidden [N, H]; 0 where target is -100.

        The mask token is excluded from the softmax. Chunked (torch) or fused (liger) per the
        kernel backend: never all [N, V] fp32 logits at once. For evaluation and sampling; its
        backward recomputes the logits, so training uses :meth:`weighted_token_loss`.
        """
        kernels = self.kernels_for(hidden_flat.device)
        return kernels.linear_cross_entropy(hidden_flat, self.output_weight, targets, ignore_index=IGNORE_INDEX,
                                            excluded_token=self.cfg.mask_token_id, chunk_size=self.loss_chunk_rows())

    def weighted_token_loss(self, hidden_flat: torch.Tensor, targets: torch.Tensor,
                            token_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum_i token_weights_i * CE_i, a 0-dim fp32 tensor; CE [N] fp32, detached) for hidden [N, H].

        The training loss: its gradients are computed in the forward pass, chunk by chunk, so the
        head's logits are never recomputed (megadfm/model/kernels/linear_cross_entropy.py).
        """
        kernels = self.kernels_for(hidden_flat.device)
        return kernels.weighted_linear_cross_entropy(hidden_flat, self.output_weight, targets, token_weights,
                                                     ignore_index=IGNORE_INDEX, excluded_token=self.cfg.mask_token_id,
                                                     chunk_size=self.loss_chunk_rows())

    def loss_chunk_rows(self) -> int:
        """model.loss_chunk_size, or (0) the rows of one [chunk, vocab] fp32 block within loss_chunk_memory_mb."""
        if self.cfg.loss_chunk_size:
            return self.cfg.loss_chunk_size
        rows = chunk_rows_for_budget(self.cfg.vocab_size, self.cfg.loss_chunk_memory_mb * 2**20)
        if not getattr(self, "_logged_loss_chunk", False):
            self._logged_loss_chunk = True
            logger.info("linear cross-entropy: %d tokens per chunk (a %d x %d fp32 block within loss_chunk_memory_mb=%d)",
                        rows, rows, self.cfg.vocab_size, self.cfg.loss_chunk_memory_mb)
        return rows


def _is_time_module(name: str) -> bool:
    return name.startswith("time_embedding") or name.startswith("adaln_single") or ".adaln" in name


@torch.no_grad()
def mask_embedding_init_(weight: torch.Tensor, mask_token_id: int) -> None:
    """weight[mask_token_id] = mean(weight[:mask_token_id]) computed in fp32 (in place)."""
    if not 0 < mask_token_id < weight.shape[0]:
        raise ValueError(f"mask_token_id {mask_token_id} must be in [1, {weight.shape[0]})")
    weight[mask_token_id] = weight[:mask_token_id].float().mean(0).to(weight.dtype)
