"""The real Qwen3 tokenizer, rebuilt offline: byte-identical file, exact encodings, mask id, no network."""

import glob
import json
import os
import random
import subprocess
import sys

import pytest

from megadfm.data.qwen_tokenizer_build import QWEN3_TOKENIZER_JSON_SHA256, build_tokenizer_json, sha256_file
from megadfm.data.tokenizer import TokenizerError, load_tokenizer, tokenizer_size

from tests.conftest import REPO, stdlib_python_files

CHAT = ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|><|endoftext|>")
CHAT_IDS = [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271, 14990, 151645, 151643]


def test_built_tokenizer_json_is_the_official_file(tokenizer_dir):
    assert sha256_file(os.path.join(tokenizer_dir, "tokenizer.json")) == QWEN3_TOKENIZER_JSON_SHA256
    assert os.path.getsize(os.path.join(tokenizer_dir, "tokenizer.json")) == 11_422_654


def test_rebuild_from_tiktoken_is_byte_identical(tmp_path, tokenizer_dir):
    tiktoken = os.path.join(REPO, ".cache", "dl", "qwen.tiktoken")
    assert os.path.isfile(tiktoken), "make tokenizer extracts qwen.tiktoken into .cache/dl"
    digest = build_tokenizer_json(tiktoken, str(tmp_path / "tokenizer.json"))
    assert digest == QWEN3_TOKENIZER_JSON_SHA256
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "tokenizer.json").stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file, not 0600


def test_corrupt_tiktoken_is_rejected(tmp_path, tokenizer_dir):
    bad = tmp_path / "qwen.tiktoken"
    with open(os.path.join(REPO, ".cache", "dl", "qwen.tiktoken"), "rb") as f:
        bad.write_bytes(f.read()[:-10])
    from megadfm.data.qwen_tokenizer_build import TokenizerBuildError
    with pytest.raises(TokenizerBuildError, match="sha256"):
        build_tokenizer_json(str(bad), str(tmp_path / "tokenizer.json"))
    assert not (tmp_path / "tokenizer.json").exists()


def test_reference_encodings(qwen_tokenizer):
    assert qwen_tokenizer.encode("def fibonacci(n):\n    return n") == [750, 75698, 1445, 982, 262, 470, 308]
    assert qwen_tokenizer.encode(CHAT) == CHAT_IDS
    assert qwen_tokenizer.decode(CHAT_IDS) == CHAT


def test_mask_token_is_151669(qwen_tokenizer, tokenizer_dir):
    assert qwen_tokenizer.mask_token == "<|mask|>"
    assert qwen_tokenizer.mask_token_id == 151669
    assert qwen_tokenizer.convert_tokens_to_ids("<|mask|>") == 151669
    assert qwen_tokenizer.encode("x<|mask|>y") == [87, 151669, 88]
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    assert cfg["mask_token"] == "<|mask|>" and cfg["added_tokens_decoder"]["151669"]["content"] == "<|mask|>"


def test_decode_round_trips_real_code(qwen_tokenizer):
    files = stdlib_python_files()
    random.Random(0).shuffle(files)
    checked = 0
    for path in files[:40]:
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                text = f.read()
            except UnicodeDecodeError:
                continue
        ids = qwen_tokenizer.encode(text)
        assert max(ids) < 151669
        assert qwen_tokenizer.decode(ids) == text, path
        checked += 1
    assert checked >= 30


def test_decode_round_trips_python_docs(qwen_tokenizer):
    docs = sorted(glob.glob("/usr/share/doc/python3*/html/_sources/**/*.rst.txt", recursive=True))
    if not docs:
        pytest.skip("Python documentation sources (Debian python3.11-doc) are not installed on this machine")
    for path in docs[:20]:
        text = open(path, encoding="utf-8").read()
        assert qwen_tokenizer.decode(qwen_tokenizer.encode(text)) == text, path


def test_loads_with_network_refused(tokenizer_dir, no_network):
    tok = load_tokenizer(tokenizer_dir)
    assert tok.encode("hello world") == [14990, 1879]


def test_loads_offline_in_a_fresh_process(tokenizer_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "empty_hf_home"))
    code = ("from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(%r); "
            "print(t.convert_tokens_to_ids('<|mask|>'), len(t))" % tokenizer_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["151669", "151670"]


def test_missing_folder_error_names_path_and_build_command(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(str(missing))
    assert str(missing) in str(e.value) and "tools/build_qwen_tokenizer.py" in str(e.value)


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="not a HF tokenizer folder"):
        load_tokenizer(str(tmp_path))


def test_mask_id_disagreement_is_an_error(tokenizer_dir):
    with pytest.raises(TokenizerError, match="mask_token_id is 151670"):
        load_tokenizer(tokenizer_dir, mask_token_id=151670)


def test_mask_added_to_a_folder_without_it(tmp_path, tokenizer_dir):
    """A user's own Qwen3 download has no <|mask|>: the loader adds it at 151669."""
    import shutil
    shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
    cfg = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))
    del cfg["added_tokens_decoder"]["151669"]
    del cfg["mask_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(str(tmp_path))
    assert tok.mask_token_id == 151669 and tok.encode("<|mask|>") == [151669]
    assert tokenizer_size(str(tmp_path)) == len(tok) == 151670
    with pytest.raises(TokenizerError, match="would give it id 151669"):
        tokenizer_size(str(tmp_path), mask_token_id=151700)


def test_size_without_transformers_equals_loaded_length(tokenizer_dir):
    """Training ranks read the size from the files (no transformers import): it must be len() of the real loader."""
    assert tokenizer_size(tokenizer_dir) == len(load_tokenizer(tokenizer_dir)) == 151670
    with pytest.raises(TokenizerError, match="mask_token_id is 151670"):
        tokenizer_size(tokenizer_dir, mask_token_id=151670)
