"""Seeded construction-time init, the mask-row init, parameter names and groups."""

from __future__ import annotations

import pytest
import torch

from megadfm.model import Qwen3DFM
from tests.model.tiny import MASK, tiny_config


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = Qwen3DFM(tiny_config(tie_word_embeddings=False), seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = Qwen3DFM(tiny_config(tie_word_embeddings=False), seed=7)
    c = Qwen3DFM(tiny_config(tie_word_embeddings=False), seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.mlp.up_proj.weight"], sc["layers.0.mlp.up_proj.weight"])
    assert abs(float(sa["layers.1.self_attn.q_proj.weight"].std()) - 0.02) < 0.003
    assert torch.equal(sa["layers.0.input_layernorm.weight"], torch.ones(48))
    c.reset_parameters(7)  # replays construction
    assert all(torch.equal(c.state_dict()[k], sa[k]) for k in sa)


def test_bfloat16_config_builds_bf16_parameters():
    model = Qwen3DFM(tiny_config(dtype="bfloat16", time_conditioning="adaln_single"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(torch.randint(0, MASK, (1, 5)), t=torch.ones(1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_init_mask_embedding_is_mean_of_rows_before():
    model = Qwen3DFM(tiny_config())
    model.init_mask_embedding()
    emb = model.embed_tokens.weight
    torch.testing.assert_close(emb[MASK], emb[:MASK].mean(0))


def test_parameter_names_and_groups_one_layer_untied():
    model = Qwen3DFM(tiny_config(num_hidden_layers=1, tie_word_embeddings=False, time_conditioning="adaln"))
    groups = {n: model.parameter_group(n) for n, _ in model.named_parameters()}
    assert groups == {
        "embed_tokens.weight": "embeddings",
        **{f"layers.0.self_attn.{p}.weight": "backbone" for p in ["q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"]},
        **{f"layers.0.mlp.{p}.weight": "backbone" for p in ["gate_proj", "up_proj", "down_proj"]},
        "layers.0.input_layernorm.weight": "backbone", "layers.0.post_attention_layernorm.weight": "backbone",
        "layers.0.adaln.proj.weight": "time_conditioning", "layers.0.adaln.proj.bias": "time_conditioning",
        "norm.weight": "backbone", "lm_head.weight": "head",
        **{f"time_embedding.linear_{i}.{p}": "time_conditioning" for i in (1, 2) for p in ("weight", "bias")},
    }
    assert model.output_weight is model.lm_head.weight
    tied = Qwen3DFM(tiny_config(num_hidden_layers=1, time_conditioning="adaln_single"))
    assert tied.output_weight is tied.embed_tokens.weight
    assert tied.parameter_group("adaln_single.proj.weight") == "time_conditioning"
    assert tied.parameter_group("layers.0.adaln.table") == "time_conditioning"
    with pytest.raises(KeyError, match="not a Qwen3DFM parameter"):
        tied.parameter_group("model.norm.weight")


def test_logits_mask_token_is_minus_inf_and_fp32():
    model = Qwen3DFM(tiny_config())
    logits = model.logits(torch.randn(2, 3, 48))
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, 512)
    assert torch.isneginf(logits[..., MASK]).all() and torch.isfinite(logits[..., :MASK]).all()
