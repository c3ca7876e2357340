"""megadfm.config: round trips, overrides and one named error per class of bad input."""

import dataclasses
import os
import typing

import pytest

from megadfm.config import ConfigError, MegaDFMConfig, describe, dump_config, load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.hidden_size=96", "training.lr=1e-3", "data.blend=[{prefix: /x/a, weight: 2}]"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg
    assert again.model.hidden_size == 96 and again.training.lr == 1e-3 and again.data.blend[0].weight == 2.0


def test_yaml_file_and_override_precedence(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 128\n  num_attention_heads: 8\ntraining:\n  lr: 3e-4\n")
    cfg = load_config(path, ["model.hidden_size=256"])
    assert cfg.model.hidden_size == 256 and cfg.model.num_attention_heads == 8
    assert cfg.training.lr == pytest.approx(3e-4)  # "3e-4" is a string in YAML 1.1; float fields accept it


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "model:\n  hiden_size: 128\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "model.hiden_size" in msg and path in msg and "unknown key" in msg and "hidden_size" in msg


def test_unknown_section(tmp_path):
    path = write(tmp_path, "optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: config key 'optimizer': unknown key"):
        load_config(path)


def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path):
    # PyYAML keeps the last of two equal keys silently: a run would train with a value nobody chose
    path = write(tmp_path, "model:\n  hidden_size: 128\ntraining:\n  lr: 1e-3\n  micro_batch_size: 2\n  lr: 3e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: config key 'training.lr': given twice (lines 4 and 6); "
                            "PyYAML would silently keep the last one: delete one of them")
    path = write(tmp_path, "model:\n  hidden_size: 128\nmodel:\n  hidden_size: 256\n", "sections.yaml")
    with pytest.raises(ConfigError, match=r"sections.yaml: config key 'model': given twice \(lines 1 and 3\)"):
        load_config(path)
    # the same key name in different sections is fine
    path = write(tmp_path, "data:\n  seq_len: 64\nmodel:\n  max_position_embeddings: 128\n", "ok.yaml")
    assert load_config(path).data.seq_len == 64


def test_unknown_section_from_override_names_the_flag(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 128\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["trainign.lr=1e-3"])
    msg = str(e.value)
    assert msg.startswith("--set trainign.lr=1e-3: config key 'trainign': unknown key") and path not in msg
    with pytest.raises(ConfigError, match=r"^--set optim.adam.beta=1: config key 'optim': unknown key"):
        load_config(None, ["optim.adam.beta=1"])


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path, "training:\n  micro_batch_size: four\n")
    with pytest.raises(ConfigError, match=r"'training.micro_batch_size': expected int, got 'four'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'model.tie_word_embeddings': expected bool"):
        load_config(None, ["model.tie_word_embeddings=1"])
    with pytest.raises(ConfigError, match=r"'model.kernels': expected one of 'auto', 'torch', 'fused'"):
        load_config(None, ["model.kernels=gpu"])


@pytest.mark.parametrize("override, key, fragment", [
    ("model.hidden_size=66", "model.hidden_size", "not divisible by num_attention_heads"),
    ("model.num_key_value_heads=3", "model.num_key_value_heads", "not a multiple"),
    ("data.seq_len=8192", "data.seq_len", "exceeds model.max_position_embeddings=4096"),
    ("training.lr=-0.001", "training.lr", "must be positive"),
    ("training.zero_stage=4", "training.zero_stage", "must be 0, 1, 2 or 3"),
    ("dfm.mask_ratio_eps=0", "dfm.mask_ratio_eps", "must be in (0, 1)"),
    ("telemetry.bucket_edges=[0.0, 0.5, 0.4, 1.0]", "telemetry.bucket_edges", "must increase strictly"),
    ("model.mask_token_id=200000", "model.mask_token_id", "outside the vocabulary"),
])
def test_impossible_values_name_the_flag(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"--set {override}" in msg and f"'{key}'" in msg and fragment in msg


def test_impossible_value_from_file_names_file(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 66\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: config key 'model.hidden_size'")


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["model.hidden_size"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_every_field_is_documented():
    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no docstring"
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp)
    walk(MegaDFMConfig)
    text = describe(MegaDFMConfig)
    assert "model.hidden_size" in text and "Width of the residual stream" in text


@pytest.mark.parametrize("overrides, key, fragment", [
    (["data.format=sft", "dfm.truncate_suffix_prob=0.3"], "dfm.truncate_suffix_prob", "must be 0 with data.format: sft"),
    (["dfm.loss_normalizer=response_length"], "dfm.loss_normalizer", "needs data.format: sft"),
])
def test_sft_only_settings_are_checked_across_sections(overrides, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert f"'{key}'" in str(e.value) and fragment in str(e.value)
    load_config(None, ["data.format=sft", "dfm.loss_normalizer=response_length"])  # the SFT pair itself is fine


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "sft_tiny_cpu.yaml", "qwen3_1p7b_h100x4.yaml"])
def test_example_configs_load(name):
    load_config(os.path.join(REPO_ROOT, "examples", name), [])


def test_sft_example_fine_tunes_the_demo_model_shape():
    """examples/sft_tiny_cpu.yaml starts from runs/tiny_cpu (training.init_from, loaded strictly): same model."""
    demo = load_config(os.path.join(REPO_ROOT, "examples", "tiny_cpu.yaml"), [])
    sft = load_config(os.path.join(REPO_ROOT, "examples", "sft_tiny_cpu.yaml"), [])
    assert sft.model == demo.model and sft.training.init_from == demo.training.output_dir
    assert sft.data.format == "sft" and sft.dfm.loss_normalizer == "response_length"
