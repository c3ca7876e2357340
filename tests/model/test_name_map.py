"""HF Qwen3 <-> megadfm name map: exact round trips, and loud failures that name the key."""

from __future__ import annotations

import pytest
import torch

from megadfm.conversion import (ConversionError, hf_config_from_model_config, hf_to_megadfm_state_dict,
                                megadfm_to_hf_state_dict, model_config_from_hf)
from megadfm.model import Qwen3DFM
from tests.model.tiny import MASK, hf_qwen3


def config_for(hf, **overrides):
    return model_config_from_hf(hf.config.to_dict(), mask_token_id=MASK, kernels="torch", time_embedding_dim=32, **overrides)


@pytest.mark.parametrize("tie,bias", [(True, False), (False, True)])
def test_hf_to_megadfm_to_hf_round_trip_exact(tie, bias):
    hf = hf_qwen3(tie=tie, attention_bias=bias, layers=2)
    cfg = config_for(hf, time_conditioning="none")
    hf_sd = hf.state_dict()
    sd, report = hf_to_megadfm_state_dict(hf_sd, cfg, init_mask_row=False)
    assert set(sd) == {n for n, _ in Qwen3DFM(cfg).named_parameters()}
    back = megadfm_to_hf_state_dict(sd, cfg)
    expected = {k: v for k, v in hf_sd.items() if not (tie and k == "lm_head.weight")}  # tied head: HF re-ties it
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    assert bool(report["dropped"]) == tie
    # the exported dict loads into a fresh transformers model and reproduces its logits
    fresh = hf_qwen3(tie=tie, attention_bias=bias, layers=2, seed=9)
    missing, unexpected = fresh.load_state_dict(back, strict=False)
    assert unexpected == [] and missing == (["lm_head.weight"] if tie else [])
    ids = torch.randint(0, MASK, (1, 6))
    torch.testing.assert_close(fresh(ids).logits, hf(ids).logits)


def test_megadfm_round_trip_keeps_time_conditioning():
    hf = hf_qwen3()
    cfg = config_for(hf, time_conditioning="adaln_single")
    model = Qwen3DFM(cfg, seed=5)
    with torch.no_grad():
        model.layers[1].adaln.table.add_(0.5)  # "trained"
    sd = model.state_dict()
    exported = megadfm_to_hf_state_dict(sd, cfg)
    assert "model.adaln_single.proj.weight" in exported and "model.layers.1.adaln.table" in exported
    back, report = hf_to_megadfm_state_dict(exported, cfg, init_mask_row=False)
    assert report["time_conditioning"] == "imported from the checkpoint"
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(ConversionError, match=r"layers\.1\.adaln\.table"):
        megadfm_to_hf_state_dict(sd, cfg, time_conditioning="drop")
    untrained = Qwen3DFM(cfg, seed=5).state_dict()
    assert "model.adaln_single.proj.weight" not in megadfm_to_hf_state_dict(untrained, cfg, time_conditioning="drop")


def test_renamed_key_fails_naming_it():
    hf = hf_qwen3()
    cfg = config_for(hf)
    hf_sd = dict(hf.state_dict())
    hf_sd["model.layers.1.self_attn.q_proj.weigth"] = hf_sd.pop("model.layers.1.self_attn.q_proj.weight")
    with pytest.raises(ConversionError) as err:
        hf_to_megadfm_state_dict(hf_sd, cfg)
    assert "missing keys (1): model.layers.1.self_attn.q_proj.weight" in str(err.value)
    assert "unexpected keys (1): model.layers.1.self_attn.q_proj.weigth" in str(err.value)


def test_wrong_shape_and_extra_layer_fail_naming_them():
    hf = hf_qwen3()
    cfg = config_for(hf)
    hf_sd = dict(hf.state_dict())
    hf_sd["model.layers.0.self_attn.k_norm.weight"] = torch.ones(8)
    hf_sd["model.layers.2.mlp.up_proj.weight"] = torch.ones(96, 48)
    with pytest.raises(ConversionError) as err:
        hf_to_megadfm_state_dict(hf_sd, cfg)
    assert "model.layers.0.self_attn.k_norm.weight: got (8,), expected (16,)" in str(err.value)
    assert "model.layers.2.mlp.up_proj.weight" in str(err.value)
    sd, _ = hf_to_megadfm_state_dict(hf.state_dict(), cfg)
    sd["norm.weight"] = torch.ones(3)
    with pytest.raises(ConversionError, match=r"norm\.weight: got \(3,\)"):
        megadfm_to_hf_state_dict(sd, cfg)


def test_tied_config_with_untied_checkpoint_rejected():
    hf = hf_qwen3(tie=True)
    hf_sd = dict(hf.state_dict())
    hf_sd["lm_head.weight"] = hf_sd["lm_head.weight"].clone() + 1
    with pytest.raises(ConversionError, match="untied"):
        hf_to_megadfm_state_dict(hf_sd, config_for(hf))


def test_model_config_from_hf_fields_and_rejections():
    hf_cfg = hf_qwen3(hidden=32, layers=1).config.to_dict()
    cfg = model_config_from_hf(hf_cfg, attention_mode="causal", mask_token_id=MASK)
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads, cfg.rope_theta, cfg.attention_mode) == (32, 16, 2, 1e6, "causal")
    legacy = dict(hf_cfg, rope_theta=5e5)
    legacy.pop("rope_parameters")
    assert model_config_from_hf(legacy, mask_token_id=MASK).rope_theta == 5e5  # transformers 4.x config.json layout
    exported = hf_config_from_model_config(cfg)
    assert model_config_from_hf(exported, attention_mode="causal") == cfg
    with pytest.raises(ConversionError, match="model_type is 'llama'"):
        model_config_from_hf(dict(hf_cfg, model_type="llama"))
    with pytest.raises(ConversionError, match="sliding-window"):
        model_config_from_hf(dict(hf_cfg, use_sliding_window=True))
    with pytest.raises(ConversionError, match="'yarn'"):
        model_config_from_hf(dict(hf_cfg, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6}))
    with pytest.raises(ConversionError, match="unknown ModelConfig override"):
        model_config_from_hf(hf_cfg, attention="causal")
