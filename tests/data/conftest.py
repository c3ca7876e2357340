"""Fixtures of the data tests: small real stdlib corpora (the preprocessing tool fixture is in tests/conftest.py)."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from tests.conftest import preprocess, stdlib_python_files


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory, preprocess_tool, qwen_tokenizer, tokenizer_dir) -> Tuple[str, List[str]]:
    """The first 60 stdlib .py files (tests excluded), with EOD: (indexed prefix, files)."""
    files = stdlib_python_files(limit=60, max_bytes=60_000)
    prefix = str(tmp_path_factory.mktemp("corpus") / "stdlib")
    preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix, "--append-eod")
    return prefix + "_text_document", files


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, preprocess_tool, qwen_tokenizer, tokenizer_dir) -> Tuple[str, List[str]]:
    """20 other stdlib files: a second, smaller blend source."""
    files = stdlib_python_files(limit=80, max_bytes=60_000)[60:]
    prefix = str(tmp_path_factory.mktemp("small") / "small")
    preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, files, prefix, "--append-eod")
    return prefix + "_text_document", files
