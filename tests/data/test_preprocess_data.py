"""tools/preprocess_data.py on real corpora with the real Qwen3 tokenizer."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest

from megadfm.data.indexed import IndexedDataset, bin_path, idx_path
from megadfm.data.qwen_tokenizer_build import QWEN3_TOKENIZER_JSON_SHA256
from megadfm.data.sources import InputError

from tests.conftest import REPO, stdlib_python_files
from tests.conftest import PREPROCESS_TOOL as TOOL, preprocess

EOD = 151643


def test_stdlib_round_trip_and_summary(stdlib_corpus, qwen_tokenizer, tokenizer_dir):
    prefix, files = stdlib_corpus
    ds = IndexedDataset(prefix)
    assert ds.dtype_code == 4 and ds.num_documents == len(files) == 60
    for j, path in enumerate(files):
        doc = ds.document(j).tolist()
        assert doc[-1] == EOD and EOD not in doc[:-1]
        assert qwen_tokenizer.decode(doc[:-1]) == open(path, encoding="utf-8").read()
    summary = json.load(open(prefix.replace("_text_document", "_summary.json")))
    assert summary["documents"] == 60 and summary["tokens"] == ds.num_tokens
    assert summary["dtype"] == "int32" and summary["dtype_code"] == 4
    assert summary["tokenizer"]["sha256"]["tokenizer.json"] == QWEN3_TOKENIZER_JSON_SHA256
    assert summary["tokenizer"]["eod_token_id"] == EOD
    assert [f["path"] for f in summary["input_files"]] == files
    assert (summary["empty_documents"], summary["invalid_documents"], summary["undecodable_documents"]) == (0, 0, 0)
    out = summary["outputs"]["text"]
    assert out["bin_bytes"] == os.path.getsize(bin_path(prefix)) == 4 * ds.num_tokens
    assert summary["tokens_per_s"] > 0 and summary["tool_version"]


def test_two_workers_write_identical_bytes(tmp_path, stdlib_corpus, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    prefix, files = stdlib_corpus
    preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, str(tmp_path / "w2"), "--append-eod", "--workers", "2")
    for path in (bin_path, idx_path):
        assert open(path(prefix), "rb").read() == open(path(str(tmp_path / "w2_text_document")), "rb").read()


def test_up_to_date_run_is_skipped_and_force_rebuilds(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    files = stdlib_python_files(limit=3, max_bytes=20_000)
    prefix = str(tmp_path / "u")
    first = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix)
    stamp = os.stat(idx_path(prefix + "_text_document")).st_mtime_ns
    assert preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix) == first
    assert os.stat(idx_path(prefix + "_text_document")).st_mtime_ns == stamp
    # a changed option is not up to date
    again = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix, "--append-eod")
    assert again["fingerprint"] != first["fingerprint"] and again["tokens"] == first["tokens"] + 3
    stamp = os.stat(idx_path(prefix + "_text_document")).st_mtime_ns
    forced = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix, "--append-eod", "--force")
    assert forced["fingerprint"] == again["fingerprint"]
    assert os.stat(idx_path(prefix + "_text_document")).st_mtime_ns != stamp


def test_killed_run_leaves_nothing_under_the_final_name(tmp_path, tokenizer_dir, preprocess_tool, qwen_tokenizer):
    prefix = str(tmp_path / "killed")
    stdlib = sysconfig.get_paths()["stdlib"]
    proc = subprocess.Popen([sys.executable, TOOL, "--input", stdlib, "--glob", "**/*.py", "--exclude", "site-packages/*",
                             "--tokenizer", tokenizer_dir, "--append-eod", "--output-prefix", prefix, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = None
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:  # wait until tokens are being written
        partial = [f for f in os.listdir(tmp_path) if ".bin.tmp." in f]
        if partial and os.path.getsize(tmp_path / partial[0]) > 0:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the tool never started writing"
    left = sorted(os.listdir(tmp_path))
    assert not any(f.endswith((".bin", ".idx", ".json")) for f in left), left
    # the next run removes the dead run's temporaries and completes
    preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [stdlib], prefix, "--glob", "**/*.py", "--exclude",
               "site-packages/*", "--max-documents", "3")
    assert sorted(os.listdir(tmp_path)) == ["killed_summary.json", "killed_text_document.bin", "killed_text_document.idx"]


def _records(n: int):
    files = stdlib_python_files(limit=n, max_bytes=20_000)
    return [{"text": open(p, encoding="utf-8").read(), "path": os.path.basename(p)} for p in files]


def _check(prefix: str, expected, qwen_tokenizer) -> None:
    ds = IndexedDataset(prefix)
    assert ds.num_documents == len(expected)
    assert [qwen_tokenizer.decode(ds.document(j).tolist()) for j in range(len(expected))] == expected


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "hf_disk"])
def test_input_formats(tmp_path, kind, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    records = _records(5)
    records.insert(2, {"text": "", "path": "empty"})
    records.insert(4, {"text": None, "path": "null"})
    path = str(tmp_path / f"in.{kind}")
    if kind == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(path)
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [path], str(tmp_path / "out"),
                         "--json-keys", "text", "path")
    expected = [r["text"] or "" for r in records]
    _check(str(tmp_path / "out_text_document"), expected, qwen_tokenizer)
    _check(str(tmp_path / "out_path_document"), [r["path"] for r in records], qwen_tokenizer)
    text = summary["outputs"]["text"]
    assert (text["documents"], text["empty_documents"], text["invalid_documents"]) == (7, 2, 1)
    assert summary["outputs"]["path"]["empty_documents"] == 0


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.py").write_bytes(b"x = 1\n")
    (folder / "b.py").write_bytes(b"name = '\xff\xfe caf\xc3\xa9'\n")  # latin-1 junk, then valid UTF-8
    (folder / "c.py").write_bytes(b"ok = '\xef\xbf\xbd'\n")  # a genuine U+FFFD is not damage
    (folder / "skip.txt").write_bytes(b"not selected by the glob")
    (folder / "vendored").mkdir()
    (folder / "vendored" / "d.py").write_bytes(b"dropped by --exclude")
    with open(tmp_path / "j.jsonl", "wb") as f:
        f.write(b'{"text": "bad \xc3 byte"}\n{"text": "lone \\ud800 surrogate"}\n\n{"text": "fine"}\n')
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(folder), str(tmp_path / "j.jsonl")],
                         str(tmp_path / "out"), "--glob", "**/*.py", "--exclude", "vendored/*")
    assert summary["documents"] == 6 and summary["undecodable_documents"] == 3
    _check(str(tmp_path / "out_text_document"), ["x = 1\n", "name = '\ufffd\ufffd café'\n", "ok = '\ufffd'\n",
                                                  "bad \ufffd byte", "lone \ufffd surrogate", "fine"], qwen_tokenizer)


def test_bad_inputs_name_the_file(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "a"}\n{"content": "b"}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:2: no field 'text'"):
        preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(good)], str(tmp_path / "o"))
    assert not any(f.startswith("o_") for f in os.listdir(tmp_path))  # nothing left behind, not even temporaries
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "a"}\n{"text": "trunc\n')
    with pytest.raises(InputError, match=r"b\.jsonl:2: not a JSON line"):
        preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(broken)], str(tmp_path / "o"))
    with pytest.raises(InputError, match="pass --glob"):
        preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(tmp_path)], str(tmp_path / "o"))


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for flag in ("--input", "--glob", "--json-keys", "--tokenizer", "--append-eod", "--output-prefix", "--workers",
                 "--max-documents", "--force"):
        assert flag in out.stdout


def test_max_documents(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    files = stdlib_python_files(limit=6, max_bytes=20_000)
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, str(tmp_path / "m"), "--max-documents", "4")
    assert summary["documents"] == 4 and IndexedDataset(str(tmp_path / "m_text_document")).num_documents == 4


def test_ids_beyond_the_tokenizer_size_are_an_error(tmp_path, preprocess_tool):
    # a real (tiny, odd) tokenizer whose vocabulary has a gap: "b" -> 5 while it has only 3 entries
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1, "b": 5}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    assert len(tokenizer) == 3
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a a"}\n{"text": "a b"}\n')
    args = preprocess_tool.parse_args(["--input", str(data), "--tokenizer", str(tmp_path / "tok"), "--output-prefix",
                                       str(tmp_path / "o"), "--no-progress"])
    message = r"in\.jsonl:2: field 'text' tokenized to id 5, >= the tokenizer's size 3"
    with pytest.raises(preprocess_tool.PreprocessError, match=message):
        preprocess_tool.run(args, tokenizer=tokenizer)
    assert not any(f.startswith("o_") for f in os.listdir(tmp_path))
