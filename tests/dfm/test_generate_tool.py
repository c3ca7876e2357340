"""tools/generate.py: --help, loading a model folder, infill and batch generation, --json and --batch-file output."""

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
    assert out["model_evals"] == out["nfe_full"] == 3 and out["nfe_block"] == 0
    assert out["new_tokens"] == 12 and out["tokens_per_second"] > 0
    assert [r["prompt"] for r in out["results"]] == ["def add(a, b):\n", "x ="]
    for row in out["results"]:
        assert len(row["tokens"]) == row["new_tokens"] == 6 and 151669 not in row["tokens"]
        assert row["completion"] == qwen_tokenizer.decode(row["tokens"])
    # plain text output
    code = generate_tool.main(["--model-dir", model_dir, "--prompt", "import os", "--max-new-tokens", "4", "--steps", "2"])
    text = capsys.readouterr().out
    assert code == 0 and text.startswith("=== [0] ===\nimport os") and "new tokens/s" in text and "full + 0 block" in text


def test_batch_file_with_threshold(model_dir, qwen_tokenizer, tmp_path, capsys, no_network):
    """--batch-file: ragged prompts, per-row budgets and suffixes, JSONL out in input order, totals on stderr."""
    requests = [{"prompt": "def add(a, b):\n"}, {"prompt": "x =", "suffix": "\n", "max_new_tokens": 3},
                {"prompt": "import os\nimport sys\n", "max_new_tokens": 9}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests) + "\n")
    out_path = tmp_path / "out.jsonl"
    code = generate_tool.main(["--model-dir", model_dir, "--batch-file", str(path), "--batch-size", "2",
                               "--max-new-tokens", "5", "--method", "threshold", "--threshold", "0.5",
                               "--threshold-mode", "factor", "--threshold-factor", "2", "--block-length", "4",
                               "--steps", "4", "--temperature", "0", "--no-stop-at-eos", "--output", str(out_path)])
    assert code == 0
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in requests]
    assert [r["new_tokens"] for r in rows] == [5, 3, 9] and [r["max_new_tokens"] for r in rows] == [5, 3, 9]
    assert rows[1]["suffix"] == "\n" and rows[0]["suffix"] is None
    for r in rows:
        assert r["completion"] == qwen_tokenizer.decode(r["tokens"]) and len(r["tokens"]) == r["new_tokens"]
    err = capsys.readouterr().err
    assert "17 new tokens" in err and "3 rows, threshold" in err


@pytest.mark.parametrize("line, message", [('{"prompt": 3}', "'prompt' must be a string"),
                                           ('{"prompt": "a", "max_new_tokens": 0}', "'max_new_tokens' must be a positive"),
                                           ('{"prompt": "a", "extra": 1}', "unknown field"), ("[1]", "JSON object")])
def test_batch_file_errors_name_the_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(SystemExit, match=f"bad.jsonl:2: .*{message}"):
        generate_tool.read_batch_file(str(path), 4)


def test_prompt_or_batch_file(model_dir):
    with pytest.raises(SystemExit, match="--prompt .* or --batch-file"):
        generate_tool.main(["--model-dir", model_dir])


def test_chat_wraps_the_message_in_the_trained_template_and_stops_at_im_end(model_dir, qwen_tokenizer, tokenizer_dir,
                                                                             capsys, monkeypatch, no_network):
    from megadfm.data.chat import ChatEncoder, reply_text, resolve_chat_template
    from megadfm.tokens import IM_END_TOKEN_ID

    seen = {}
    real = generate_tool.generate

    def recording(model, prompts, budget, cfg, dfm, **kw):
        seen.update(prompts=prompts, eos=cfg.eos_token_id)
        return real(model, prompts, budget, cfg, dfm, **kw)

    monkeypatch.setattr(generate_tool, "generate", recording)
    code = generate_tool.main(["--model-dir", model_dir, "--chat", "Say hi.", "--chat", "Add 2 and 2.\\nOnly the number.",
                               "--system", "Be brief.", "--max-new-tokens", "5", "--steps", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    encoder = ChatEncoder(qwen_tokenizer, resolve_chat_template(tokenizer_dir, qwen_tokenizer))
    for message, ids in zip(["Say hi.", "Add 2 and 2.\nOnly the number."], seen["prompts"]):
        # the rendering preprocess_data.py --chat stores as a training prompt
        assert ids == encoder.generation_prompt_ids([{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": message}])
        assert qwen_tokenizer.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert seen["eos"] == IM_END_TOKEN_ID == out["sampler"]["eos_token_id"]
    assert out["chat_template"]["sha256"] == encoder.template.sha256
    for row in out["results"]:
        assert IM_END_TOKEN_ID not in row["tokens"] and row["finished"] == (len(row["tokens"]) < 5)
        assert row["reply"] == reply_text(qwen_tokenizer.decode(row["tokens"], skip_special_tokens=False))


def test_chat_flags_are_checked(model_dir):
    with pytest.raises(SystemExit, match="--system and --chat-template go with --chat"):
        generate_tool.main(["--model-dir", model_dir, "--prompt", "x", "--system", "s"])
    with pytest.raises(SystemExit, match="give one of --prompt .*--chat"):
        generate_tool.main(["--model-dir", model_dir, "--prompt", "x", "--chat", "y"])
