"""Bad inputs give one clear error naming the file / key, and nothing appears under the output name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from megadfm.checkpoints.source import SourceError
from megadfm.conversion.export import export_to_hf
from megadfm.conversion.hf_folder import HFFolderError
from megadfm.conversion.hf_import import convert_hf_to_megadfm
from megadfm.conversion.metadata import OutputExistsError
from megadfm.conversion.name_map import ConversionError
from tests.conftest import REPO
from tests.conversion.helpers import config_json, save_hf_folder, tiny_hf_model, write_config_json


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_model(seed=5)


def assert_nothing_written(tmp_path, out="out"):
    assert not os.path.lexists(tmp_path / out)
    assert [n for n in os.listdir(tmp_path) if n.startswith(f".{out}.")] == []  # no staging folder left behind


def rewrite_single(folder, edit):
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def test_missing_shard(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"), "sharded")
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(os.path.join(src, shard))
    with pytest.raises(HFFolderError, match=f"missing from .*{shard}"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_renamed_key(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    rewrite_single(src, lambda s: s.update({"model.layers.1.mlp.up_prj.weight": s.pop("model.layers.1.mlp.up_proj.weight")}))
    with pytest.raises(ConversionError) as err:
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in str(err.value)
    assert "unexpected keys (1): model.layers.1.mlp.up_prj.weight" in str(err.value)
    assert_nothing_written(tmp_path)


def test_wrong_shape(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    rewrite_single(src, lambda s: s.update({"model.layers.0.self_attn.k_norm.weight": s["model.layers.0.self_attn.k_norm.weight"][:8].clone()}))
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.self_attn\.k_norm\.weight: got \(8,\), expected \(16,\)"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_non_qwen3_config(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    write_config_json(src, dict(config_json(src), model_type="llama"))
    with pytest.raises(ConversionError, match="model_type is 'llama'; supported model types: 'qwen3'"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_truncated_shard(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    path = os.path.join(src, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(HFFolderError, match="truncated"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_failure_while_writing_leaves_nothing(tmp_path, hf_model):
    """A tied config with a different lm_head is only seen while streaming: the half-written folder is removed."""
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    rewrite_single(src, lambda s: s.update({"lm_head.weight": s["model.embed_tokens.weight"] + 1}))
    with pytest.raises(ConversionError, match="untied"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_existing_output_is_kept_without_force(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        convert_hf_to_megadfm(src, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["mine.txt"]
    convert_hf_to_megadfm(src, str(tmp_path / "out"), time_conditioning="none", force=True)
    assert "mine.txt" not in os.listdir(tmp_path / "out") and "model.safetensors" in os.listdir(tmp_path / "out")


def test_export_of_something_that_is_not_a_checkpoint(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SourceError, match="no complete megadfm checkpoint"):
        export_to_hf(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert_nothing_written(tmp_path)


def test_cli_reports_one_line_and_exit_code(tmp_path, hf_model):
    src = save_hf_folder(hf_model, str(tmp_path / "hf"))
    write_config_json(src, dict(config_json(src), model_type="mistral"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_hf_to_megadfm.py"), "--hf", src,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "convert_hf_to_megadfm: error: config.json model_type is 'mistral'" in proc.stderr
    assert "nothing was written under the output name" in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path)
