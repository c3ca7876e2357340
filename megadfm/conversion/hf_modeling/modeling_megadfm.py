"""A megadfm discrete flow-matching Qwen3 for transformers (trust_remote_code), self-contained.

A compact copy of megadfm's model forward with its plain-PyTorch reference kernels (RMSNorm with
fp32 statistics, rotate-half RoPE, SDPA attention, AdaLN modulation), computing the same logits as
megadfm on the same inputs. Imports only torch and transformers.

    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    logits = model(input_ids, t=t, attention_mask=mask).logits   # [B, L, V] fp32

    out = model.diffusion_generate(prompt_ids, max_new_tokens=64, steps=64, method="confidence")  # megadfm's sampler

``t`` [B] in [0, 1] is the flow-matching time: t = 0 is all masked, t = 1 is clean; the mask ratio
is 1 - kappa(t) (kappa(t) = t for the linear scheduler). Attention is bidirectional (see
``config.attention_mode``); ``attention_mask`` marks real tokens (padding keys are never attended).
Position ids default to 0..L-1 per row. With ``config.shift_logits`` the output at position i
predicts the token at i + 1. The logit of ``config.mask_token_id`` is -inf.

Block diffusion (``config.dfm_mode == "block"``, block_generation_megadfm.py) runs the backbone on the
two-stream row ``[x_t ‖ x_0]`` with a time per token (``t`` [B, L]) and an explicit attention pattern
(``attention_allowed`` bool [B, L, L], query x key), as megadfm's training forward does.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

try:  # transformers >= 5 maps tied names explicitly; 4.x lists them
    from transformers import __version__ as _tf_version
    _TIED = {"lm_head.weight": "model.embed_tokens.weight"} if int(_tf_version.split(".")[0]) >= 5 else ["lm_head.weight"]
except ValueError:  # an unparsable version string
    _TIED = {"lm_head.weight": "model.embed_tokens.weight"}

from .configuration_megadfm import MegaDFMQwen3Config
from .generation_megadfm import MegaDFMGenerationMixin

N_MODULATIONS = 6  # shift, scale, gate for attention, then for the MLP
TIME_SCALE = 1000.0  # t is embedded as 1000 * t


class TokenTimes(NamedTuple):
    """Time conditioning that differs between the tokens of a row (block diffusion's noisy block at its t, the
    clean stream at t = 1): the conditioning of each distinct t and which one each token uses. As megadfm's
    TokenTimes, the modulations are computed once per distinct t and indexed, so the matmuls (and their
    rounding) are megadfm's."""

    values: torch.Tensor  # [U, H] (adaln) or [U, 6, H] (adaln_single's shared modulation)
    index: torch.Tensor  # long [B, L]: the row of ``values`` each token uses


# ---- reference kernels (megadfm/model/kernels/*_torch) ------------------------------------------

def rms_norm(x, weight, eps):
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rotary_cos_sin(position_ids, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].to(torch.float32) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def attention_mask_4d(attention_mask, batch_size, seq_len, causal, device):
    """Bool [B, 1, L, L] (True = may attend) or None for plain rows. A query with no visible key sees itself."""
    if attention_mask is None:
        return None
    allowed = torch.ones(batch_size, seq_len, seq_len, dtype=torch.bool, device=device)
    allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
    if causal:
        allowed = allowed & torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    allowed = allowed | torch.eye(seq_len, dtype=torch.bool, device=device)
    return allowed[:, None]


def explicit_mask(allowed, attention_mask, batch_size, seq_len, attention_mode, device):
    """Bool [B, 1, L, L] from an explicit pattern ``allowed`` [B, L, L] (query x key) and the padding keys of
    ``attention_mask``; a query always sees itself (as megadfm's dense mask, so no softmax row is all -inf)."""
    if attention_mode != "bidirectional":
        raise ValueError(f"attention_allowed (block diffusion's pattern) needs attention_mode bidirectional, got "
                         f"{attention_mode!r}")
    if tuple(allowed.shape) != (batch_size, seq_len, seq_len):
        raise ValueError(f"attention_allowed has shape {tuple(allowed.shape)}, expected [B, L, L] = "
                         f"[{batch_size}, {seq_len}, {seq_len}]")
    mask = allowed.to(device=device, dtype=torch.bool)
    if attention_mask is not None:
        mask = mask & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
    return (mask | torch.eye(seq_len, dtype=torch.bool, device=device))[:, None]


def columns_mask(query_positions, key_positions, key_valid, causal, block_size=None):
    """Bool [B or 1, 1, Lq, Lk] for queries at ``query_positions`` over keys at ``key_positions`` (columns of
    one row), or None when every query sees every key. A query sees valid keys (``key_valid`` [B, Lk];
    None: all), and with causal attention only keys at columns <= its own; with ``block_size`` (block
    diffusion's clean stream) only keys of blocks <= its own; it always sees its own column, so a padding
    query's softmax row is never all -inf."""
    if key_valid is None and not causal and block_size is None:
        return None
    same = key_positions[None, :] == query_positions[:, None]
    allowed = torch.ones_like(same)[None] if key_valid is None else key_valid.to(torch.bool)[:, None, :]
    if causal:
        allowed = allowed & (key_positions[None, :] <= query_positions[:, None])[None]
    if block_size is not None:
        allowed = allowed & ((key_positions // block_size)[None, :] <= (query_positions // block_size)[:, None])[None]
    return (allowed | same[None])[:, None]


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.to(torch.float32) * TIME_SCALE)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---- modules (parameter names = megadfm's HF export names) ---------------------------------------

class MegaDFMRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, shift=None, scale=None):
        h = rms_norm(x, self.weight, self.eps)
        if shift is None:
            return h
        return h * (1 + scale[:, None, :]) + shift[:, None, :]


class MegaDFMAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        H, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(H, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(H, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(H, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, H, bias=bias)
        self.q_norm = MegaDFMRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = MegaDFMRMSNorm(self.head_dim, config.rms_norm_eps)
        self.causal = config.attention_mode == "causal"

    def forward(self, x, cos, sin, mask, past=None, kv_out=None):
        """``past``: (k, v) [B, Hkv, Lp, D] of other columns put before this call's keys (a K/V cache; ``mask``
        then covers [past ; fresh] keys and causality is in it). ``kv_out``: a list this call's (k, v) is appended to."""
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if kv_out is not None:
            kv_out.append((k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None and past is None,
                                             enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class MegaDFMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MegaDFMTimeEmbedding(nn.Module):
    """t [B] -> c [B, H]: sinusoid(1000 t) -> Linear -> SiLU -> Linear."""

    def __init__(self, config):
        super().__init__()
        self.frequency_dim = config.time_embedding_dim
        self.linear_1 = nn.Linear(config.time_embedding_dim, config.hidden_size, bias=True)
        self.linear_2 = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, t):
        emb = timestep_embedding(t, self.frequency_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class MegaDFMAdaLNProjection(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.proj = nn.Linear(hidden_size, N_MODULATIONS * hidden_size, bias=True)
        self.proj._megadfm_zero_init = True  # a modulation output: zero-initialized

    def forward(self, c):
        return self.proj(F.silu(c)).view(c.shape[0], N_MODULATIONS, -1)


class MegaDFMAdaLNTable(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(N_MODULATIONS, hidden_size))

    def forward(self, shared):
        return shared + self.table[None]


class MegaDFMBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = MegaDFMAttention(config)
        self.mlp = MegaDFMMLP(config)
        self.input_layernorm = MegaDFMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MegaDFMRMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.time_conditioning == "adaln":
            self.adaln = MegaDFMAdaLNProjection(config.hidden_size)
        elif config.time_conditioning == "adaln_single":
            self.adaln = MegaDFMAdaLNTable(config.hidden_size)
        else:
            self.adaln = None

    def forward(self, x, cos, sin, mask, cond, past=None, kv_out=None):
        if cond is None:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, past, kv_out)
            return x + self.mlp(self.post_attention_layernorm(x))
        B, L, H = x.shape
        if isinstance(cond, TokenTimes):
            # one modulation per token: the tokens become B*L rows of length 1 for the modulated ops (megadfm's way)
            mods = self.adaln(cond.values).index_select(0, cond.index.reshape(-1))
            rows, back = (lambda y: y.reshape(B * L, 1, H)), (lambda y: y.reshape(B, L, H))
        else:
            mods = self.adaln(cond)
            rows = back = (lambda y: y)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods.unbind(1)
        h = back(self.input_layernorm(rows(x), shift_a, scale_a))
        x = back(rows(x) + (1 + gate_a[:, None, :]) * rows(self.self_attn(h, cos, sin, mask, past, kv_out)))
        h = self.post_attention_layernorm(rows(x), shift_m, scale_m)
        return back(rows(x) + (1 + gate_m[:, None, :]) * self.mlp(h))


class MegaDFMQwen3PreTrainedModel(PreTrainedModel):
    config_class = MegaDFMQwen3Config
    base_model_prefix = "model"
    _no_split_modules = ["MegaDFMBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        # only reached for weights missing from the checkpoint (transformers guards loaded ones)
        std = self.config.initializer_range
        if isinstance(module, MegaDFMAdaLNTable):
            nn.init.zeros_(module.table)
        elif isinstance(module, nn.Linear):
            if getattr(module, "_megadfm_zero_init", False):  # zero modulation: t has no effect until trained
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MegaDFMRMSNorm):
            nn.init.ones_(module.weight)


class MegaDFMQwen3Model(MegaDFMQwen3PreTrainedModel):
    """The backbone: ``forward(input_ids, t, attention_mask, position_ids) -> last_hidden_state`` (after the final norm)."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MegaDFMBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = MegaDFMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.time_embedding = MegaDFMTimeEmbedding(config) if config.time_conditioning != "none" else None
        self.adaln_single = MegaDFMAdaLNProjection(config.hidden_size) if config.time_conditioning == "adaln_single" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids, t=None, attention_mask=None, position_ids=None, return_dict=None,
                attention_allowed=None, **kwargs):
        """``t``: [B], or [B, L] (a time per token); ``attention_allowed``: bool [B, L, L] (query x key), an explicit
        pattern ANDed with ``attention_mask`` (block diffusion's two-stream mask; bidirectional models only)."""
        config = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if L > config.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position_embeddings={config.max_position_embeddings}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected [B, L] = [{B}, {L}]")
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, config.head_dim, config.rope_theta, x.dtype)
        if attention_allowed is None:
            mask = attention_mask_4d(attention_mask, B, L, config.attention_mode == "causal", input_ids.device)
        else:
            mask = explicit_mask(attention_allowed, attention_mask, B, L, config.attention_mode, input_ids.device)
        cond = self._time_condition(t, B, L)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cond)
        hidden = self.norm(x)
        if return_dict is False:
            return (hidden,)
        return BaseModelOutput(last_hidden_state=hidden)

    # ---- block-wise K/V cache (diffusion_generate's cache="prefix" / "dual", generation_megadfm.py) ----

    def forward_with_kv(self, input_ids, t, attention_mask):
        """The full forward (position ids 0..L-1) -> (hidden [B, L, H], per layer (k, v) [B, Hkv, L, D] after
        k-norm and rotary), the cache a block's later steps attend to."""
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device)
        mask = columns_mask(positions, positions, attention_mask, self.config.attention_mode == "causal")
        return self._run_columns(input_ids, t, positions, None, mask)

    def forward_columns(self, input_ids, t, columns, cache, attention_mask):
        """hidden [B, C, H] of the tokens ``input_ids`` [B, C] at ``columns`` [C] (one contiguous run, the same
        for every row), each layer attending to its own fresh K/V and to the cached K/V (``cache``: per layer
        (k, v) [B, Hkv, L, D] from :meth:`forward_with_kv`) of every column NOT in ``columns``.
        ``attention_mask`` [B, L] marks the real columns. Exact only while the cached columns' K/V are
        current; after the block's tokens (or t) change they are stale: an approximation."""
        B, C = input_ids.shape
        L = cache[0][0].shape[2]
        others = torch.ones(L, dtype=torch.bool, device=input_ids.device)
        others[columns] = False
        keep = others.nonzero(as_tuple=True)[0]
        key_positions = torch.cat([keep, columns])
        key_valid = attention_mask.to(torch.bool).index_select(1, key_positions)
        mask = columns_mask(columns, key_positions, None if bool(key_valid.all()) else key_valid,
                            self.config.attention_mode == "causal")
        past = [(k.index_select(2, keep), v.index_select(2, keep)) for k, v in cache]
        hidden, _ = self._run_columns(input_ids, t, columns, past, mask)
        return hidden

    def forward_over_keys(self, input_ids, t, positions, past, key_positions, key_valid, block_size=None):
        """(hidden [B, C, H], fresh per layer (k, v)) of ``input_ids`` [B, C] at ``positions`` [C], each layer
        attending to ``past`` (per layer (k, v) [B, Hkv, P, D] or None) and its own fresh K/V, whose columns are
        ``key_positions`` [P + C] (past first) and validity ``key_valid`` [B, P + C] (None: all real). With
        ``block_size``, block-causally (block diffusion's clean stream: the prefill of its exact prefix cache,
        block_generation_megadfm.py)."""
        mask = columns_mask(positions, key_positions, key_valid, self.config.attention_mode == "causal", block_size)
        return self._run_columns(input_ids, t, positions, past, mask)

    def _run_columns(self, input_ids, t, positions, past, mask):
        B, L = input_ids.shape
        if int(positions.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"position {int(positions.max())} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(positions.expand(B, L), self.config.head_dim, self.config.rope_theta, x.dtype)
        cond = self._time_condition(t, B)
        fresh = []
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cond, None if past is None else past[i], fresh)
        return self.norm(x), fresh

    def _time_condition(self, t, batch_size, seq_len=None):
        """None, the conditioning of t [B], or (``seq_len`` given and t [B, L]) a :class:`TokenTimes`."""
        if self.time_embedding is None:
            return None
        if t is None:
            raise ValueError(f"time_conditioning={self.config.time_conditioning!r} needs t [B] in [0, 1] "
                             "(t = 1 is clean data; pass torch.ones(B) for unmasked input)")
        t = torch.as_tensor(t, device=self.embed_tokens.weight.device)
        if seq_len is not None and t.dim() == 2 and t.shape == (batch_size, seq_len):
            times, index = torch.unique(t, return_inverse=True)
            c = self.time_embedding(times)
            return TokenTimes(self.adaln_single(c) if self.adaln_single is not None else c, index)
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape [B] = [{batch_size}]" + (f" (or [B, L] = [{batch_size}, {seq_len}], a time "
                             "per token)" if seq_len is not None else "") + f", got {tuple(t.shape)}")
        c = self.time_embedding(t)
        return self.adaln_single(c) if self.adaln_single is not None else c


class MegaDFMQwen3ForMaskedLM(MegaDFMGenerationMixin, MegaDFMQwen3PreTrainedModel):
    """Backbone + LM head: ``forward(input_ids, t, attention_mask) -> MaskedLMOutput(logits [B, L, V] fp32)``,
    mask-token logit -inf. ``diffusion_generate(input_ids, max_new_tokens=..., ...)``: megadfm's sampler
    (generation_megadfm.py)."""

    _tied_weights_keys = _TIED

    def __init__(self, config):
        super().__init__(config)
        self.model = MegaDFMQwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids, t=None, attention_mask=None, position_ids=None, return_dict=None,
                attention_allowed=None, **kwargs):
        hidden = self.model(input_ids, t=t, attention_mask=attention_mask, position_ids=position_ids,
                            attention_allowed=attention_allowed).last_hidden_state
        logits = F.linear(hidden, self.lm_head.weight).float()
        logits[..., self.config.mask_token_id] = float("-inf")
        if return_dict is False:
            return (logits,)
        return MaskedLMOutput(logits=logits)
