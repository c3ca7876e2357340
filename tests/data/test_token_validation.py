"""Token-id validation of indexed datasets: real .bin/.idx files, the cached stats, the refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megadfm.data import token_validation
from megadfm.data.config import BlendSource, DataConfig
from megadfm.data.indexed import IndexedDataset, IndexedDatasetWriter
from megadfm.data.token_validation import TokenIdError, check_token_ids, token_stats, validate_blend_token_ids
from megadfm.tokens import MASK_TOKEN_ID, QWEN3_VOCAB_SIZE

from tests.conftest import preprocess

TOKENIZER_SIZE = MASK_TOKEN_ID + 1  # Qwen3's 151,669 entries plus <|mask|>, as load_tokenizer returns it


def write(prefix: str, docs, dtype=np.int32) -> str:
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(np.asarray(d, dtype=np.int64))
    return prefix


def clean_docs():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 151_000, size=n) for n in (40, 0, 17, 90)]  # an empty document too


def data_cfg(tmp_path, *prefixes) -> DataConfig:
    return DataConfig(blend=[BlendSource(prefix=p) for p in prefixes], cache_dir=str(tmp_path / "cache"))


def test_clean_file_passes_and_stats_are_cached(tmp_path, monkeypatch):
    docs = clean_docs()
    prefix = write(str(tmp_path / "clean"), docs)
    stats = validate_blend_token_ids(data_cfg(tmp_path, prefix), TOKENIZER_SIZE, QWEN3_VOCAB_SIZE, MASK_TOKEN_ID)[prefix]
    flat = np.concatenate(docs)
    assert (stats.min_id, stats.max_id, stats.has_mask, stats.num_tokens) == (int(flat.min()), int(flat.max()), False, flat.size)
    cached = [n for n in os.listdir(tmp_path / "cache") if n.startswith("tokens_") and n.endswith(".json")]
    assert len(cached) == 1 and json.load(open(tmp_path / "cache" / cached[0]))["mask_token_id"] == MASK_TOKEN_ID

    # computed once: a second start reads the cache and never scans the .bin again
    def no_scan(*args):
        raise AssertionError("the .bin was scanned again")

    monkeypatch.setattr(token_validation, "scan_token_stats", no_scan)
    again = validate_blend_token_ids(data_cfg(tmp_path, prefix), TOKENIZER_SIZE, QWEN3_VOCAB_SIZE, MASK_TOKEN_ID)[prefix]
    assert again == stats


@pytest.mark.parametrize("bad_id, reason", [(151_700, "between the tokenizer's size and vocab_size"),
                                            (QWEN3_VOCAB_SIZE + 5, "past the embedding")])
def test_ids_out_of_range_are_refused_naming_document_and_id(tmp_path, bad_id, reason):
    docs = clean_docs()
    docs[3] = docs[3].copy()
    docs[3][11] = bad_id
    docs[3][50] = bad_id + 1  # only the first offending token is named
    clean = write(str(tmp_path / "clean"), clean_docs())
    prefix = write(str(tmp_path / "foreign"), docs)
    with pytest.raises(TokenIdError) as e:
        validate_blend_token_ids(data_cfg(tmp_path, clean, prefix), TOKENIZER_SIZE, QWEN3_VOCAB_SIZE, MASK_TOKEN_ID)
    msg = str(e.value)
    assert f"{prefix}.bin: document 3 (of 4), token 11, holds id {bad_id};" in msg, (reason, msg)
    assert f"below the tokenizer's size {TOKENIZER_SIZE}" in msg and "tools/preprocess_data.py" in msg


def test_negative_id_is_refused(tmp_path):
    prefix = write(str(tmp_path / "neg"), [[5, 6, 7], [8, -3, 9]])
    ix = IndexedDataset(prefix)
    with pytest.raises(TokenIdError, match=r"document 1 \(of 2\), token 1, holds id -3;"):
        check_token_ids(ix, token_stats(ix, str(tmp_path / "cache"), MASK_TOKEN_ID), TOKENIZER_SIZE, QWEN3_VOCAB_SIZE,
                        MASK_TOKEN_ID, "tok")


def test_smaller_vocab_size_is_the_limit(tmp_path):
    prefix = write(str(tmp_path / "small"), [[1, 2, 3], [4, 1000, 5]], dtype=np.uint16)
    ix = IndexedDataset(prefix)
    with pytest.raises(TokenIdError, match=r"document 1 \(of 2\), token 1, holds id 1000; ids must be >= 0 and below model.vocab_size 512"):
        check_token_ids(ix, token_stats(ix, str(tmp_path / "cache"), 511), 2000, 512, 511, "tok")


def test_mask_id_in_one_document_is_refused(tmp_path):
    docs = clean_docs()
    docs[2] = docs[2].copy()
    docs[2][4] = MASK_TOKEN_ID
    prefix = write(str(tmp_path / "masked"), docs)
    with pytest.raises(TokenIdError) as e:
        validate_blend_token_ids(data_cfg(tmp_path, prefix), TOKENIZER_SIZE, QWEN3_VOCAB_SIZE, MASK_TOKEN_ID)
    msg = str(e.value)
    assert f"{prefix}.bin: document 2 (of 4), token 4, holds the <|mask|> id {MASK_TOKEN_ID}" in msg
    assert "loss would be infinite" in msg and "training.lr" not in msg


def test_uint16_data_cannot_hold_qwen3_mask(tmp_path):
    # the mask id does not fit uint16: the scan must not compare it (nor wrap it round to a real id)
    prefix = write(str(tmp_path / "u16"), [[1, MASK_TOKEN_ID % 65536, 3]], dtype=np.uint16)
    ix = IndexedDataset(prefix)
    stats = token_stats(ix, str(tmp_path / "cache"), MASK_TOKEN_ID)
    assert not stats.has_mask and stats.max_id == MASK_TOKEN_ID % 65536
    check_token_ids(ix, stats, TOKENIZER_SIZE, QWEN3_VOCAB_SIZE, MASK_TOKEN_ID, "tok")


def test_preprocess_summary_records_max_token_id(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["def f(x):\n    return x\n", "", "print('hi')\n"]))
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(src)], str(tmp_path / "p"), "--append-eod")
    ix = IndexedDataset(str(tmp_path / "p_text_document"))
    top = int(np.asarray(ix.tokens(0, ix.num_tokens)).max())
    assert summary["max_token_id"] == top == summary["outputs"]["text"]["max_token_id"]
    assert json.load(open(tmp_path / "p_summary.json"))["max_token_id"] == top
