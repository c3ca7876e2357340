"""Fixtures for engine tests: a real code corpus preprocessed with the real Qwen3 tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def stdlib_prefix(tmp_path_factory, tokenizer_dir) -> str:
    """80 top-level modules of the CPython standard library as an indexed dataset (~0.3 M tokens)."""
    out = tmp_path_factory.mktemp("corpus")
    stdlib = sysconfig.get_paths()["stdlib"]
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", stdlib, "--glob", "*.py",
                    "--tokenizer", tokenizer_dir, "--append-eod", "--output-prefix", str(out / "stdlib"),
                    "--max-documents", "80", "--workers", "1", "--no-progress"], check=True, capture_output=True)
    return str(out / "stdlib_text_document")
