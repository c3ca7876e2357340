"""LR schedules, parameter groups and the DeepSpeed config merge (no processes needed)."""

import math

import pytest

from megadfm.config import ConfigError, load_config
from megadfm.model.qwen3_dfm import Qwen3DFM
from megadfm.training.ds_config import build_ds_config
from megadfm.training.lr_schedule import lr_at
from megadfm.training.optim import build_param_groups


def training(**kw):
    return load_config(None, [f"training.{k}={v}" for k, v in kw.items()]).training


def test_warmup_then_cosine_to_min_lr():
    cfg = training(lr=1e-3, min_lr=1e-4, warmup_steps=10, train_steps=110, lr_schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    lin = training(lr=1e-3, min_lr=0.0, warmup_steps=0, train_steps=100, lr_schedule="linear")
    assert lr_at(50, lin) == pytest.approx(5e-4)
    const = training(lr=1e-3, min_lr=0.0, warmup_steps=5, train_steps=100, lr_schedule="constant")
    assert lr_at(80, const) == 1e-3


def test_param_groups_decay_and_time_lr_multiplier():
    cfg = load_config(None, ["model.vocab_size=512", "model.mask_token_id=500", "model.tie_word_embeddings=false",
                             "data.eod_token_id=0", "data.pad_token_id=0",
                             "training.time_conditioning_lr_mult=3.0", "training.weight_decay=0.1", "training.lr=1e-3"])
    model = Qwen3DFM(cfg.model, seed=0)
    groups = {g["name"]: g for g in build_param_groups(model, cfg.training, model.parameter_group)}
    names = {g: {n for n, p in model.named_parameters() if any(p is q for q in groups[g]["params"])} for g in groups}
    assert "embed_tokens.weight" in names["model/no_decay"]  # embeddings: no decay
    assert "norm.weight" in names["model/no_decay"] and "layers.0.self_attn.q_norm.weight" in names["model/no_decay"]
    assert "layers.0.mlp.up_proj.weight" in names["model/decay"] and "lm_head.weight" in names["model/decay"]
    assert groups["time_conditioning/decay"]["lr"] == pytest.approx(3e-3)
    assert groups["model/decay"]["lr"] == pytest.approx(1e-3) and groups["model/no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_ds_config_is_filled_from_the_yaml():
    cfg = training(micro_batch_size=4, grad_accum_steps=2, zero_stage=2, grad_clip=0.5, ds_config="ds_configs/cpu_zero3.json")
    ds = build_ds_config(cfg, dp_world_size=4)
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is False


def test_ds_template_with_conflicting_batch_size_is_rejected(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_batch_size": 7, "zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match="sets train_batch_size=7, but the YAML implies 8"):
        build_ds_config(training(micro_batch_size=4, ds_config=str(bad)), dp_world_size=2)
    opt = tmp_path / "opt.json"
    opt.write_text('{"optimizer": {"type": "Adam"}}')
    with pytest.raises(ConfigError, match="defines an optimizer"):
        build_ds_config(training(ds_config=str(opt)), dp_world_size=1)
    with pytest.raises(ConfigError, match="DeepSpeed config file not found"):
        build_ds_config(training(ds_config=str(tmp_path / "missing.json")), dp_world_size=1)


SMALL = ["model.vocab_size=512", "model.mask_token_id=500", "model.num_hidden_layers=4", "model.hidden_size=64",
         "model.intermediate_size=128", "data.eod_token_id=0", "data.pad_token_id=0", "training.lr=1e-3",
         "training.time_conditioning_lr_mult=2.0"]


def lr_of(model, groups):
    """parameter name -> lr of its group."""
    return {n: next(g["lr"] for g in groups if any(p is q for q in g["params"])) for n, p in model.named_parameters()}


def test_layer_wise_lr_rules_first_match_wins_and_are_logged(caplog):
    rules = ("training.lr_multipliers=[{multiplier: 0.1, group: backbone, layers: [0, 1], match: mlp}, "
             "{multiplier: 0.5, group: backbone, layers: [0, 2]}, {multiplier: 3.0, group: time_conditioning, match: adaln}]")
    cfg = load_config(None, SMALL + [rules])
    model = Qwen3DFM(cfg.model, seed=0)
    with caplog.at_level("INFO", logger="megadfm.training.optim"):
        lr = lr_of(model, build_param_groups(model, cfg.training, model.parameter_group))
    assert lr["layers.0.mlp.up_proj.weight"] == lr["layers.1.mlp.down_proj.weight"] == pytest.approx(1e-4)
    assert lr["layers.2.mlp.up_proj.weight"] == pytest.approx(5e-4)      # rule 2: layers 0-2, any backbone weight
    assert lr["layers.1.self_attn.q_proj.weight"] == pytest.approx(5e-4)
    assert lr["layers.3.mlp.up_proj.weight"] == lr["norm.weight"] == lr["embed_tokens.weight"] == pytest.approx(1e-3)
    adaln = next(n for n in lr if "adaln" in n)
    assert lr[adaln] == pytest.approx(1e-3 * 2.0 * 3.0)  # times time_conditioning_lr_mult
    time_mlp = next(n for n in lr if model.parameter_group(n) == "time_conditioning" and "adaln" not in n)
    assert lr[time_mlp] == pytest.approx(2e-3)  # time conditioning without a rule: its own multiplier only
    logged = caplog.text
    assert "model/decay/x0.1 [backbone layers 0-1 'mlp']" in logged and "lr=0.0001" in logged
    assert "x3 [time_conditioning 'adaln']" in logged


@pytest.mark.parametrize("rule, fragment", [
    ("{multiplier: 0.1, group: backbone, layers: [7, 9]}", "matching no parameter: backbone layers 7-9"),
    ("{multiplier: 0.1, match: mpl}", "matching no parameter: any group 'mpl'"),
])
def test_a_rule_that_matches_nothing_is_an_error(rule, fragment):
    cfg = load_config(None, SMALL + [f"training.lr_multipliers=[{rule}]"])
    model = Qwen3DFM(cfg.model, seed=0)
    with pytest.raises(ConfigError, match="training.lr_multipliers") as e:
        build_param_groups(model, cfg.training, model.parameter_group)
    assert fragment in str(e.value)


@pytest.mark.parametrize("rule, key", [
    ("{multiplier: 0}", "multiplier"), ("{multiplier: 1.0, group: ffn}", "group"),
    ("{multiplier: 1.0, layers: [3, 1]}", "layers"),
])
def test_bad_rules_are_refused_at_load(rule, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, SMALL + [f"training.lr_multipliers=[{rule}]"])
    assert key in str(e.value)
