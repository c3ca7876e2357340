"""tools/generate.py: --help, loading a model folder, infill and batch generation, --json output."""

import json
import os
import sys

import pytest

from megadfm.config import MegaDFMConfig, ModelConfig
from megadfm.dfm.model_loading import load_model_dir, save_model_dir
from megadfm.model import Qwen3DFM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import generate as generate_tool  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir):
    cfg = MegaDFMConfig(model=ModelConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                          kernels="torch"))
    cfg.data.tokenizer = tokenizer_dir
    path = str(tmp_path_factory.mktemp("model"))
    save_model_dir(Qwen3DFM(cfg.model, seed=3), cfg, path)
    return path


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_tool.main(["--help"])
    assert exit_info.value.code == 0
    assert "--model-dir" in capsys.readouterr().out


def test_model_dir_round_trip(model_dir):
    model, cfg = load_model_dir(model_dir)
    again = Qwen3DFM(cfg.model, seed=3)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.equal(b), name


def test_missing_weights_are_named(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model_dir(str(tmp_path))


def test_generate_json_batch_and_infill(model_dir, qwen_tokenizer, capsys, no_network):
    prompts = ["def add(a, b):\\n", "x ="]
    code = generate_tool.main(["--model-dir", model_dir, "--prompt", prompts[0], "--prompt", prompts[1],
                               "--suffix", "\\n", "--max-new-tokens", "6", "--steps", "3", "--method", "confidence",
                               "--no-stop-at-eos", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_evals"] == 3 and out["new_tokens"] == 12 and out["tokens_per_second"] > 0
    assert [r["prompt"] for r in out["results"]] == ["def add(a, b):\n", "x ="]
    for row in out["results"]:
        assert len(row["tokens"]) == 6 and 151669 not in row["tokens"]
        assert row["completion"] == qwen_tokenizer.decode(row["tokens"])
    # plain text output
    code = generate_tool.main(["--model-dir", model_dir, "--prompt", "import os", "--max-new-tokens", "4", "--steps", "2"])
    text = capsys.readouterr().out
    assert code == 0 and text.startswith("=== [0] ===\nimport os") and "model evaluations" in text
