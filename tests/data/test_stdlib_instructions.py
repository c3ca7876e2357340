"""The stdlib "write the body" instruction set: known functions, the 3-40 line rule, the by-file split, end to end."""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from megadfm.data.indexed import IndexedDataset
from megadfm.data.stdlib_instructions import (MAX_BODY_LINES, MIN_BODY_LINES, function_examples, is_heldout, stdlib_files,
                                              stdlib_root)

from tests.conftest import REPO
from tests.conftest import preprocess

BUILD_TOOL = os.path.join(REPO, "tools", "build_stdlib_instructions.py")
LIMIT = 40  # the first 40 files of the sorted walk: 36 train files and 4 held out (asynchat, bz2, calendar, chunk)


def examples_of(relpath: str):
    with open(os.path.join(stdlib_root(), relpath), encoding="utf-8") as f:
        return {e.function: e for e in function_examples(f.read(), relpath, Counter())}


def rebuilt(example, namespace: dict):
    """Define the function again from the prompt's signature + docstring and the response's body."""
    header = example.prompt.split("\n\n", 1)[1]
    exec(header + "\n" + textwrap.indent(example.response, "    "), namespace)
    return namespace[header.split("def ", 1)[1].split("(", 1)[0]]


def test_known_functions_have_their_real_body():
    import shutil

    ex = examples_of("shutil.py")["shutil.copyfileobj"]
    assert ex.source.startswith("shutil.py:") and "def copyfileobj(fsrc, fdst, length=0):" in ex.prompt
    assert ex.prompt.startswith("Write the body of the Python function `copyfileobj` from the standard library module `shutil`")
    assert '"""' not in ex.response and "fdst_write(buf)" in ex.response and not ex.response.startswith(" ")
    copy = rebuilt(ex, dict(vars(shutil)))
    out = io.BytesIO()
    copy(io.BytesIO(b"x" * 100_000), out, 1000)
    assert out.getvalue() == b"x" * 100_000

    method = examples_of("collections/__init__.py")["collections.Counter.most_common"]
    assert "def most_common(self, n=None):" in method.prompt and "heapq" in method.response
    most_common = rebuilt(method, dict(vars(collections)))
    assert most_common(collections.Counter("abracadabra"), 2) == [("a", 5), ("b", 2)]


def test_only_docstring_functions_with_3_to_40_body_lines_are_kept():
    def function(name: str, body_lines: int, docstring: bool = True) -> str:
        doc = '    """Doc."""\n' if docstring else ""
        return f"def {name}(x):\n{doc}" + "".join(f"    x = x + {i}\n" for i in range(body_lines))
    source = "\n".join([function("two", 2), function("three", MIN_BODY_LINES), function("forty", MAX_BODY_LINES),
                        function("forty_one", MAX_BODY_LINES + 1), function("undocumented", 5, docstring=False),
                        "class C:\n" + textwrap.indent(function("method", 4), "    "),
                        "def outer(x):\n    '''Doc.'''\n" + textwrap.indent(function("inner", 4), "    ")
                        + "    return inner(x)\n"])
    skipped = Counter()
    kept = {e.function: e for e in function_examples(source, "pkg/mod.py", skipped)}
    assert set(kept) == {"pkg.mod.three", "pkg.mod.forty", "pkg.mod.C.method", "pkg.mod.outer"}
    assert kept["pkg.mod.three"].response == "x = x + 0\nx = x + 1\nx = x + 2"
    assert len(kept["pkg.mod.forty"].response.splitlines()) == MAX_BODY_LINES
    assert "def method(x):" in kept["pkg.mod.C.method"].prompt and kept["pkg.mod.C.method"].source == "pkg/mod.py:107"
    assert "def inner(x):" in kept["pkg.mod.outer"].response  # a nested function is body, not an example of its own
    assert skipped == {"body under 3 lines": 1, "body over 40 lines": 1, "no docstring": 1}


def test_split_is_by_file_deterministic_and_about_ten_percent():
    files = stdlib_files(stdlib_root())
    held = [f for f in files if is_heldout(f, 10)]
    assert 0.07 < len(held) / len(files) < 0.14
    assert held == [f for f in files if is_heldout(f, 10)]  # a hash of the path, nothing random
    assert not any(is_heldout(f, 0) for f in files) and all(is_heldout(f, 100) for f in files)
    assert not any(f.startswith(("test/", "idlelib/", "site-packages/")) or "/test/" in f for f in files)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib_sft")
    proc = subprocess.run([sys.executable, BUILD_TOOL, "--out", str(out), "--limit", str(LIMIT)],
                          capture_output=True, text=True, check=True)
    return out, proc.stdout


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_build_tool_writes_disjoint_splits_and_a_summary(built):
    out, stdout = built
    train, heldout = read_jsonl(out / "train.jsonl"), read_jsonl(out / "heldout.jsonl")
    summary = json.load(open(out / "summary.json"))
    train_files = {r["source"].rsplit(":", 1)[0] for r in train}
    held_files = {r["source"].rsplit(":", 1)[0] for r in heldout}
    assert train_files and held_files and not train_files & held_files
    assert held_files == {"asynchat.py", "bz2.py", "calendar.py", "chunk.py"} & held_files
    assert all(is_heldout(f, 10) for f in held_files) and not any(is_heldout(f, 10) for f in train_files)
    assert summary["files"] == LIMIT and (summary["train_files"], summary["heldout_files"]) == (36, 4)
    assert summary["functions_kept"] == len(train) + len(heldout) and summary["heldout_examples"] == len(heldout)
    assert summary["skipped_functions"]["no docstring"] > 0 and summary["skipped_functions"]["body over 40 lines"] > 0
    assert f"{LIMIT} files (36 train, 4 held out), {len(train) + len(heldout)} functions kept" in stdout
    for record in train + heldout:
        assert set(record) == {"prompt", "response", "source", "function"}
        assert MIN_BODY_LINES <= len(record["response"].splitlines()) <= MAX_BODY_LINES
        assert record["prompt"].startswith("Write the body of the Python function")
    assert not [f for f in os.listdir(out) if ".tmp." in f]


def test_build_tool_help_explains_every_flag():
    text = subprocess.run([sys.executable, BUILD_TOOL, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--out", "--stdlib", "--heldout-percent", "--limit"):
        assert flag in text
    assert "held-out" in text and "3 to 40 lines" in text


def test_build_output_feeds_chat_preprocessing(built, tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    out, _ = built
    train = read_jsonl(out / "train.jsonl")
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(out / "train.jsonl")],
                         str(tmp_path / "stdlib_sft"), "--chat", "--max-length", "1024", "--overlong", "truncate-prompt")
    ds = IndexedDataset(str(tmp_path / "stdlib_sft_chat_document"))
    assert summary["records"] == len(train) and ds.num_documents == summary["documents"] == len(train) - summary["dropped_examples"]
    assert list(ds.document_indices) == list(range(0, 2 * ds.num_documents + 1, 2))  # [prompt, response] each
    first_prompt, first_response = ds[0].tolist(), ds[1].tolist()
    assert qwen_tokenizer.decode(first_prompt) == (f"<|im_start|>user\n{train[0]['prompt']}<|im_end|>\n"
                                                   "<|im_start|>assistant\n")
    assert qwen_tokenizer.decode(first_response) == f"<think>\n\n</think>\n\n{train[0]['response']}<|im_end|>"
    assert int(ds.document_lengths().max()) <= 1024
