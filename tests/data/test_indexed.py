"""MMIDIDX v1 reader/writer: the docs/FORMATS.md example byte for byte, real-text round trips, merge, corrupt files."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from megadfm.data.indexed import (IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, bin_path, idx_path,
                                  merge_datasets)

from tests.conftest import stdlib_python_files

# docs/FORMATS.md §1: 3 documents of 5, 3 and 7 uint16 tokens.
WORKED_EXAMPLE_IDX = (
    "4d4d494449445800 00 | 0100000000000000 | 08 | 0300000000000000 | 0400000000000000 | "
    "05000000 03000000 07000000 | 0000000000000000 0a00000000000000 1000000000000000 | "
    "0000000000000000 0100000000000000 0200000000000000 0300000000000000")


@pytest.fixture(scope="module")
def real_documents(qwen_tokenizer):
    """Token ids of 12 real stdlib files, an empty document in the middle, int32 like Qwen3 data."""
    texts = [open(p, encoding="utf-8").read() for p in stdlib_python_files(limit=12, max_bytes=20_000)]
    docs = [np.asarray(qwen_tokenizer.encode(t, add_special_tokens=False), dtype=np.int32) for t in texts]
    return texts[:6] + [""] + texts[6:], docs[:6] + [np.zeros(0, np.int32)] + docs[6:]


def write(prefix, docs, dtype=np.int32):
    with IndexedDatasetWriter(str(prefix), dtype) as w:
        for d in docs:
            w.add_document(d)
    return IndexedDataset(str(prefix))


def test_worked_example_is_byte_exact(tmp_path):
    docs = [np.arange(1, 6), np.arange(10, 13), np.arange(20, 27)]
    ds = write(tmp_path / "ex", docs, np.uint16)
    idx = open(idx_path(str(tmp_path / "ex")), "rb").read()
    assert len(idx) == 102
    assert idx.hex() == WORKED_EXAMPLE_IDX.replace(" ", "").replace("|", "")
    assert open(bin_path(str(tmp_path / "ex")), "rb").read() == np.concatenate(docs).astype("<u2").tobytes()
    assert ds.dtype_code == 8 and list(ds.sequence_pointers) == [0, 10, 16]
    assert [list(ds[i]) for i in range(3)] == [list(d) for d in docs]


def test_round_trip_real_text(tmp_path, real_documents, qwen_tokenizer):
    texts, docs = real_documents
    ds = write(tmp_path / "real", docs)
    assert ds.dtype_code == 4 and ds.num_documents == len(docs) and len(ds) == len(docs) - 1  # empty doc: no sequence
    assert list(ds.document_indices[5:9]) == [5, 6, 6, 7]  # the empty document repeats its index
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert list(ds.document_lengths()) == [len(d) for d in docs]
    for j, (text, doc) in enumerate(zip(texts, docs)):
        assert np.array_equal(ds.document(j), doc)
        assert qwen_tokenizer.decode(ds.document(j).tolist()) == text
    # O(1) access by sequence, slices and sub-ranges of a sequence
    assert np.array_equal(ds[6], docs[7]) and np.array_equal(ds[-1], docs[-1])
    assert all(np.array_equal(a, b) for a, b in zip(ds[2:8], docs[2:6] + docs[7:9]))
    assert np.array_equal(ds.get(3, offset=5, length=7), docs[3][5:12])
    with pytest.raises(IndexError):
        ds.get(3, offset=len(docs[3]), length=1)


def test_multi_sequence_documents(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "sent"), np.uint16) as w:
        w.add_document(np.arange(10), sequence_lengths=[4, 0, 6])  # an empty sentence is skipped, as Megatron does
        w.add_document(np.arange(3))
    ds = IndexedDataset(str(tmp_path / "sent"))
    assert list(ds.sequence_lengths) == [4, 6, 3] and list(ds.document_indices) == [0, 2, 3]
    assert list(ds.document(0)) == list(range(10)) and list(ds.document_lengths()) == [10, 3]


def test_bulk_add_documents_writes_the_same_bytes(tmp_path, real_documents):
    _, docs = real_documents
    write(tmp_path / "one", docs)
    with IndexedDatasetWriter(str(tmp_path / "bulk"), np.int32) as w:
        w.add_documents(np.concatenate(docs[:4]), [len(d) for d in docs[:4]])
        w.add_documents(np.concatenate(docs[4:]), [len(d) for d in docs[4:]])
    for path in (bin_path, idx_path):
        assert open(path(str(tmp_path / "one")), "rb").read() == open(path(str(tmp_path / "bulk")), "rb").read()


def test_merge_equals_concatenation(tmp_path, real_documents):
    _, docs = real_documents
    write(tmp_path / "a", docs[:5])
    write(tmp_path / "b", docs[5:9])
    write(tmp_path / "c", docs[9:])
    write(tmp_path / "all", docs)
    merged = merge_datasets([str(tmp_path / p) for p in "abc"], str(tmp_path / "merged"))
    assert merged.num_documents == len(docs)
    for path in (bin_path, idx_path):
        assert open(path(str(tmp_path / "all")), "rb").read() == open(path(str(tmp_path / "merged")), "rb").read()


def test_merge_rejects_mixed_dtypes(tmp_path):
    write(tmp_path / "u16", [np.arange(4)], np.uint16)
    write(tmp_path / "i32", [np.arange(4)], np.int32)
    with pytest.raises(IndexedDatasetError, match="dtype int32 differs"):
        merge_datasets([str(tmp_path / "u16"), str(tmp_path / "i32")], str(tmp_path / "m"))
    assert not os.path.exists(idx_path(str(tmp_path / "m"))) and not os.path.exists(bin_path(str(tmp_path / "m")))


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="do not fit uint16"):
        with IndexedDatasetWriter(str(tmp_path / "x"), np.uint16) as w:
            w.add_document(np.arange(5))
            w.add_document(np.array([70000]))
    assert os.listdir(tmp_path) == []


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


S_OFFSET = 34  # lengths start; S=len(seqs) for the 4-document file below


CORRUPTIONS = {
    "idx shorter than its header": (lambda i, b: _truncate(i, 20), "idx", "truncated: 20 bytes"),
    "idx truncated": (lambda i, b: _truncate(i, os.path.getsize(i) - 8), "idx", "34 \\+ 12\\*S \\+ 8\\*D"),
    "foreign magic": (lambda i, b: _patch(i, 0, b"NOTMEGATR"), "idx", "bad magic"),
    "version 2": (lambda i, b: _patch(i, 9, struct.pack("<Q", 2)), "idx", "unsupported MMIDIDX version 2"),
    "dtype code 6": (lambda i, b: _patch(i, 17, bytes([6])), "idx", "dtype code 6 .* not a token dtype"),
    "dtype code 7": (lambda i, b: _patch(i, 17, bytes([7])), "idx", "dtype code 7 .* not a token dtype"),
    "unknown dtype code": (lambda i, b: _patch(i, 17, bytes([9])), "idx", "unknown dtype code 9"),
    "bin truncated": (lambda i, b: _truncate(b, os.path.getsize(b) - 4), "bin", "truncated .bin"),
    "pointer past the end": (lambda i, b: _patch(i, S_OFFSET + 4 * 4 + 8 * 3, struct.pack("<q", 10 ** 9)), "idx",
                             "sequence 3: pointer 1000000000 .* ends past the end"),
    "pointer not back to back": (lambda i, b: _patch(i, S_OFFSET + 4 * 4 + 8 * 1, struct.pack("<q", 4)), "idx",
                                 "sequence 1: pointer 4 should be"),
    "document indices not ending at S": (lambda i, b: _patch(i, os.path.getsize(i) - 8, struct.pack("<q", 3)), "idx",
                                         "must end at S=4, got 3"),
    "document indices decreasing": (lambda i, b: _patch(i, S_OFFSET + 12 * 4 + 8 * 2, struct.pack("<q", 0)), "idx",
                                    "decrease at document 1"),
    "negative length": (lambda i, b: _patch(i, S_OFFSET, struct.pack("<i", -1)), "idx", "negative length"),
    "bin missing": (lambda i, b: os.remove(b), "bin", "file not found"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_files_give_one_clear_error(tmp_path, real_documents, name):
    _, docs = real_documents
    prefix = str(tmp_path / "victim")
    write(prefix, [d for d in docs if len(d)][:4])
    corrupt, which, message = CORRUPTIONS[name]
    corrupt(idx_path(prefix), bin_path(prefix))
    with pytest.raises(IndexedDatasetError, match=message) as info:
        IndexedDataset(prefix)
    assert info.value.path == (idx_path(prefix) if which == "idx" else bin_path(prefix))
    assert str(info.value).startswith(info.value.path + ": ")
