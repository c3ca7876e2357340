"""Configuration of the Qwen3-DFM model (backbone shape, attention mode, time conditioning, kernels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional

from megadfm.config_base import doc, fields_tagged, require
from megadfm.tokens import MASK_TOKEN_ID, QWEN3_VOCAB_SIZE  # noqa: F401  (re-exported: the model's defaults)

# Field marks: every list of ModelConfig fields elsewhere is derived from these (ModelConfig.tagged).
ARCHITECTURE = "architecture"
"""Changes the function the weights compute: weights load only into a config that agrees on all of these.
The rest (kernels, dtype, checkpointing, chunk size, attention mode, ...) are run-time choices."""
HF = "hf"
"""Written into the config.json of megadfm's HF export (configuration_megadfm.py reads them back)."""
QWEN3 = "qwen3"
"""A field of transformers' Qwen3Config with the same name and meaning (config.json import, --as-qwen3 export)."""
SHARED_WITH_QWEN3 = (ARCHITECTURE, HF, QWEN3)


@dataclass
class ModelConfig:
    """Shape and behaviour of the bidirectional Qwen3 + AdaLN(t) model.

    Field names follow transformers' Qwen3Config where one exists, so a Qwen3 config.json
    maps onto this one field for field (see megadfm/conversion).
    """

    vocab_size: int = doc(QWEN3_VOCAB_SIZE, "Rows of the embedding and LM head (Qwen3 pads its 151,669 tokens to 151,936).",
                          tags=SHARED_WITH_QWEN3)
    hidden_size: int = doc(64, "Width of the residual stream.", tags=SHARED_WITH_QWEN3)
    intermediate_size: int = doc(192, "Width of the SwiGLU MLP.", tags=SHARED_WITH_QWEN3)
    num_hidden_layers: int = doc(2, "Number of transformer blocks.", tags=SHARED_WITH_QWEN3)
    num_attention_heads: int = doc(4, "Query heads.", tags=SHARED_WITH_QWEN3)
    num_key_value_heads: int = doc(2, "Key/value heads (GQA); must divide num_attention_heads.", tags=SHARED_WITH_QWEN3)
    head_dim: Optional[int] = doc(None, "Per-head width; null means hidden_size / num_attention_heads. Qwen3 sets it explicitly (128).",
                                  tags=SHARED_WITH_QWEN3)
    max_position_embeddings: int = doc(4096, "Longest sequence the rotary table is built for; data.seq_len may not exceed it.",
                                       tags=(HF, QWEN3))
    rope_theta: float = doc(1000000.0, "Rotary base frequency (Qwen3: 1e6).", tags=(ARCHITECTURE, HF))
    rms_norm_eps: float = doc(1e-6, "Epsilon of every RMSNorm.", tags=SHARED_WITH_QWEN3)
    tie_word_embeddings: bool = doc(True, "Share the embedding matrix with the LM head (Qwen3-0.6B/1.7B: true).",
                                    tags=SHARED_WITH_QWEN3)
    attention_bias: bool = doc(False, "Bias on q/k/v/o projections (Qwen3: false).", tags=SHARED_WITH_QWEN3)
    initializer_range: float = doc(0.02, "Std of the normal init for a model trained from scratch.", tags=(HF, QWEN3))
    attention_mode: Literal["bidirectional", "causal"] = doc(
        "bidirectional", "bidirectional for DFM; causal reproduces the AR Qwen3 (parity tests, AR warm-up).", tags=(HF,))
    time_conditioning: Literal["adaln", "adaln_single", "none"] = doc(
        "adaln", "How t enters the model: per-layer AdaLN (6*H^2 params per layer: ~705M for Qwen3-1.7B), one shared "
        "AdaLN projection plus per-layer offsets (adaln_single: 6*H^2 + 6*H per layer, ~25M), or not at all. "
        "Zero-initialized either way, so a converted model starts as the pretrained function.", tags=(ARCHITECTURE, HF))
    time_embedding_dim: int = doc(256, "Width of the sinusoidal embedding of 1000*t fed to the time MLP (its output is hidden_size wide).",
                                  tags=(ARCHITECTURE, HF))
    kernels: Literal["auto", "torch", "fused"] = doc(
        "auto", "Kernel backend: torch references, fused GPU kernels (error if unavailable), or auto (fused where importable, logged).")
    kernel_impls: Dict[str, str] = doc(
        help="Under kernels fused/auto, the fused implementation to use for an op instead of the default order, e.g. "
             "{attention: flash_attn, rmsnorm: apex}. Ops and names: attention (torch_varlen, flash_attn), rmsnorm "
             "(liger, compile, apex), rotary (liger, compile), adaln (liger, compile), linear_cross_entropy (liger, "
             "chunked). A named one that cannot run is an error under fused and the logged torch fallback under auto.",
        factory=dict)
    activation_checkpointing: bool = doc(False, "Recompute each block's activations in backward (saves memory, costs ~30% compute).")
    loss_chunk_size: int = doc(0, "Tokens per chunk of the torch linear cross-entropy; 0 (default) derives it from "
                               "loss_chunk_memory_mb (logged once). liger picks its own.")
    loss_chunk_memory_mb: int = doc(512, "Memory budget of the torch linear cross-entropy's one [chunk, vocab] fp32 block "
                                    "(512 -> 883 tokens per chunk at Qwen3's 151,936 vocabulary). Besides it, training holds "
                                    "one fp32 gradient of the head weight, which every chunk adds into: fewer, larger chunks "
                                    "pass over it less often (at 8,192 tokens x 2,048 hidden, 512 is as fast as full logits "
                                    "at 0.094x their memory, 256 about 3% slower; bench/bench_loss_memory.py).")
    mask_token_id: int = doc(MASK_TOKEN_ID, "Id of <|mask|>; its logit is forced to -inf so it is never predicted.",
                             tags=(ARCHITECTURE, HF))
    dtype: Literal["float32", "bfloat16"] = doc("float32", "Dtype the parameters are created in (activations follow them); "
                                                "bf16 on GPU, fp32 on CPU and in tests. Norm statistics, softmax and loss are fp32 regardless.")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "time_embedding_dim", "loss_chunk_memory_mb"):
            require(getattr(self, name) > 0, name, f"must be a positive integer, got {getattr(self, name)}")
        require(self.loss_chunk_size >= 0, "loss_chunk_size", f"must be >= 0 (0: from loss_chunk_memory_mb), got {self.loss_chunk_size}")
        if self.head_dim is None:
            require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
                    " (set head_dim explicitly to decouple them)")
        else:
            require(self.head_dim > 0, "head_dim", f"must be positive, got {self.head_dim}")
        require(self.resolved_head_dim % 2 == 0, "head_dim", f"rotary needs an even head_dim, got {self.resolved_head_dim}")
        require(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {self.num_key_value_heads}")
        require(0 <= self.mask_token_id < self.vocab_size, "mask_token_id",
                f"{self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")
        require(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        require(self.rms_norm_eps > 0, "rms_norm_eps", f"must be positive, got {self.rms_norm_eps}")
        require(self.time_embedding_dim % 2 == 0, "time_embedding_dim", f"must be even (sin and cos halves), got {self.time_embedding_dim}")

    def tagged(self, tag: str) -> Dict[str, Any]:
        """{field: value} for the fields marked ``tag``, in declaration order; head_dim resolved (never null)."""
        return {name: self.resolved_head_dim if name == "head_dim" else getattr(self, name)
                for name in fields_tagged(ModelConfig, tag)}

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads
