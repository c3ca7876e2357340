"""Configuration of a megadfm discrete flow-matching Qwen3 exported for transformers (trust_remote_code).

Self-contained: copied next to config.json by tools/convert_megadfm_to_hf.py; imports only transformers.
Field names follow transformers' Qwen3Config where one exists; the rest are megadfm's ModelConfig /
DFMConfig fields of the same name.
"""

from transformers import PretrainedConfig


class MegaDFMQwen3Config(PretrainedConfig):
    """A bidirectional Qwen3 with AdaLN(t) time conditioning, predicting clean tokens at masked positions.

    Args beyond Qwen3Config's:
        attention_mode: "bidirectional" (DFM) or "causal".
        time_conditioning: "adaln" (per-layer modulation projection), "adaln_single" (one shared
            projection plus per-layer offsets) or "none" (t is ignored).
        time_embedding_dim: width of the sinusoidal embedding of 1000*t.
        mask_token_id: id of <|mask|>; its logit is always -inf.
        shift_logits: the output at position i predicts token i+1 (true) or token i (false).
        dfm_mode: "full" (bidirectional over the whole document) or "block" (block diffusion: bidirectional
            inside blocks of ``block_size`` tokens, causal across them; diffusion_generate decodes block by block).
        block_size: tokens per block with dfm_mode "block" (counted from the start of each row); None otherwise.
            Folders exported before block diffusion have neither field: full mode.
    """

    model_type = "megadfm_qwen3"

    def __init__(self, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                 initializer_range=0.02, attention_mode="bidirectional", time_conditioning="adaln",
                 time_embedding_dim=256, mask_token_id=151669, shift_logits=True, dfm_mode="full", block_size=None, **kwargs):
        if attention_mode not in ("bidirectional", "causal"):
            raise ValueError(f"attention_mode must be 'bidirectional' or 'causal', got {attention_mode!r}")
        if time_conditioning not in ("adaln", "adaln_single", "none"):
            raise ValueError(f"time_conditioning must be 'adaln', 'adaln_single' or 'none', got {time_conditioning!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = rms_norm_eps
        self.tie_word_embeddings = tie_word_embeddings
        self.attention_bias = attention_bias
        self.initializer_range = initializer_range
        if dfm_mode not in ("full", "block"):
            raise ValueError(f"dfm_mode must be 'full' or 'block', got {dfm_mode!r}")
        if dfm_mode == "block" and not (isinstance(block_size, int) and block_size >= 1):
            raise ValueError(f"block_size must be an int >= 1 with dfm_mode 'block', got {block_size!r}")
        if dfm_mode == "full" and block_size is not None:
            raise ValueError(f"block_size is for dfm_mode 'block'; with dfm_mode 'full' it must be None, got {block_size!r}")
        self.attention_mode = attention_mode
        self.time_conditioning = time_conditioning
        self.time_embedding_dim = time_embedding_dim
        self.mask_token_id = mask_token_id
        self.shift_logits = shift_logits
        self.dfm_mode = dfm_mode
        self.block_size = block_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
