"""Tiny configs and HF Qwen3 oracles shared by the model tests (CPU, fp32)."""

from __future__ import annotations

import torch

from megadfm.model import ModelConfig, Qwen3DFM

VOCAB, MASK = 512, 500


def tiny_config(**overrides) -> ModelConfig:
    """hidden 48, 2 layers, 4 query heads / 2 kv heads (GQA 2), head_dim 16 != 48/4, small vocab."""
    kw = dict(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, kernels="torch", time_embedding_dim=32)
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_model(seed: int = 0, **overrides) -> Qwen3DFM:
    return Qwen3DFM(tiny_config(**overrides), seed=seed).eval()


def hf_qwen3(vocab_size=VOCAB, tie=True, attention_bias=False, hidden=48, layers=2, seed=0):
    """A random transformers Qwen3ForCausalLM whose every weight (norms included) matters."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tie,
                         attention_bias=attention_bias, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         max_position_embeddings=256)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.08 * noise)
    return model


def random_ids(shape, seed=0, high=MASK):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))
