"""SFT under the real engine: a 2-process DeepSpeed ZeRO-3 fine-tuning run on chat-format instruction
data (stdlib instruction pairs through preprocess_data.py --chat) resumes bitwise, as pre-training does,
and its telemetry carries the response-length distribution."""

from __future__ import annotations

import json
import os

import pytest

from megadfm.data.stdlib_instructions import build, stdlib_root
from tests.conftest import preprocess
from tests.training.engine_helpers import interrupted_run_equals_reference, tiny_config

K = 4  # steps before the interruption; the reference runs 2 * K
SEQ_LEN = 160


@pytest.fixture(scope="module")
def sft_prefix(tmp_path_factory, preprocess_tool, qwen_tokenizer, tokenizer_dir) -> str:
    folder = tmp_path_factory.mktemp("sft_data")
    jsonl = folder / "train.jsonl"
    jsonl.write_text("".join(json.dumps(e.to_json()) + "\n" for e in build(stdlib_root(), limit=60).train))
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(jsonl)], str(folder / "sft"), "--chat",
                         "--max-length", str(SEQ_LEN), "--overlong", "drop")
    assert summary["documents"] >= 40, summary
    return str(folder / "sft_chat_document")


def sft_config(run_dir, prefix, tokenizer_dir, save_interval):
    return tiny_config(run_dir, prefix, tokenizer_dir,
                       model={"max_position_embeddings": SEQ_LEN},
                       dfm={"loss_normalizer": "response_length"},
                       data={"format": "sft", "seq_len": SEQ_LEN, "split": [0.9, 0.1, 0.0],
                             "sft": {"packing": True, "padding": "eos_train", "eos_loss_weight": 0.5}},
                       training={"train_steps": 2 * K, "micro_batch_size": 2, "eval_interval": K, "eval_batches": 1},
                       checkpoint={"save_interval": save_interval})


def metrics(run_dir, kind):
    with open(os.path.join(run_dir, "telemetry", "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("kind") == kind]


def test_sft_run_resumes_bitwise(tmp_path, sft_prefix, tokenizer_dir):
    ref_dir, part_dir, _ = interrupted_run_equals_reference(
        tmp_path, lambda run_dir, save: sft_config(run_dir, sft_prefix, tokenizer_dir, save), K)
    # the SFT telemetry: every logged step says how long its responses were, the same in both runs
    ref_train, part_train = metrics(ref_dir, "train"), metrics(part_dir, "train")
    assert [r["step"] for r in ref_train] == list(range(1, 2 * K + 1))
    for a in ref_train:
        b = next(r for r in part_train if r["step"] == a["step"])
        hist = {k: v for k, v in a.items() if k.startswith("train/response_tokens/hist/")}
        assert a["train/response_tokens/examples"] == b["train/response_tokens/examples"] == sum(hist.values()) >= 4
        assert a["train/response_tokens/mean"] == b["train/response_tokens/mean"]
        assert 1 <= a["train/response_tokens/mean"] < SEQ_LEN and a["train/response_tokens/std"] >= 0
        assert all(hist[k] == b[k] for k in hist)
