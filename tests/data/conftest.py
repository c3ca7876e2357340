"""Fixtures of the data tests: the preprocessing tool as a module and small real stdlib corpora."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import List, Tuple

import pytest

from tests.conftest import REPO, stdlib_python_files

TOOL = os.path.join(REPO, "tools", "preprocess_data.py")


@pytest.fixture(scope="session")
def preprocess_tool() -> ModuleType:
    """tools/preprocess_data.py imported as a module, so tests can call run() with a loaded tokenizer."""
    spec = importlib.util.spec_from_file_location("preprocess_data_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # worker processes find encode_chunk by module name, as with a script's __main__
    spec.loader.exec_module(module)
    return module


def preprocess(tool: ModuleType, tokenizer, tokenizer_dir: str, inputs: List[str], prefix: str, *extra: str):
    """Run the tool in-process (the session's tokenizer is reused: loading it costs seconds)."""
    args = tool.parse_args(["--input", *inputs, "--tokenizer", tokenizer_dir, "--output-prefix", prefix,
                            "--no-progress", *extra])
    return tool.run(args, tokenizer=tokenizer)


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
