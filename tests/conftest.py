"""Shared fixtures: the real Qwen3 tokenizer, real corpora, caches and network guard."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import sysconfig
from types import ModuleType
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_DIR = os.path.join(REPO, "artifacts", "tokenizer", "qwen3")

# Caches of every library the tests touch go under the repo's ignored .cache/, never ~/.cache.
for var, sub in [("HF_HOME", "hf"), ("TORCH_EXTENSIONS_DIR", "torch_extensions"), ("TRITON_CACHE_DIR", "triton"),
                 ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb"),
                 ("WANDB_CONFIG_DIR", "wandb"), ("MPLCONFIGDIR", "matplotlib")]:
    os.environ.setdefault(var, os.path.join(REPO, ".cache", sub))
os.environ.setdefault("WANDB_MODE", "offline")
# One OpenMP thread per process: on 2 shared cores a second spinning thread slows tiny models ~20x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    """The real Qwen3 tokenizer folder; built offline (from the cached dashscope wheel) if missing."""
    if not os.path.isfile(os.path.join(TOKENIZER_DIR, "tokenizer.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_qwen_tokenizer.py"), "--out", TOKENIZER_DIR,
                        "--cache-dir", os.path.join(REPO, ".cache", "dl")], check=True)
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def qwen_tokenizer(tokenizer_dir):
    from megadfm.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


PREPROCESS_TOOL = os.path.join(REPO, "tools", "preprocess_data.py")


@pytest.fixture(scope="session")
def preprocess_tool() -> ModuleType:
    """tools/preprocess_data.py imported as a module, so tests can call run() with a loaded tokenizer."""
    spec = importlib.util.spec_from_file_location("preprocess_data_tool", PREPROCESS_TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # worker processes find encode_chunk by module name, as with a script's __main__
    spec.loader.exec_module(module)
    return module


def preprocess(tool: ModuleType, tokenizer, tokenizer_dir: str, inputs: List[str], prefix: str, *extra: str):
    """Run the tool in-process (the session's tokenizer is reused: loading it costs seconds)."""
    args = tool.parse_args(["--input", *inputs, "--tokenizer", tokenizer_dir, "--output-prefix", prefix,
                            "--no-progress", *extra])
    return tool.run(args, tokenizer=tokenizer)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails loudly inside the test."""

    def refuse(self, address, *args, **kwargs):
        if isinstance(address, tuple):  # AF_INET/AF_INET6; unix sockets stay allowed
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"network access attempted: {a}")))
    yield


def stdlib_python_files(limit: int | None = None, max_bytes: int = 200_000) -> list[str]:
    """Real code corpus: the CPython standard library's .py files (sorted, tests excluded)."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "idlelib", "site-packages", "__pycache__"))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith(".py") and os.path.getsize(path) <= max_bytes:
                out.append(path)
                if limit is not None and len(out) >= limit:
                    return out
    return out


@pytest.fixture(scope="session")
def stdlib_files():
    return stdlib_python_files()


@pytest.fixture(scope="session")
def stdlib_prefix(tmp_path_factory, tokenizer_dir) -> str:
    """80 top-level modules of the CPython standard library as an indexed dataset (~0.3 M tokens)."""
    out = tmp_path_factory.mktemp("corpus")
    stdlib = sysconfig.get_paths()["stdlib"]
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", stdlib, "--glob", "*.py",
                    "--tokenizer", tokenizer_dir, "--append-eod", "--output-prefix", str(out / "stdlib"),
                    "--max-documents", "80", "--workers", "1", "--no-progress"], check=True, capture_output=True)
    return str(out / "stdlib_text_document")


DEEPSPEED_SHM_GLOB = "/dev/shm/deepspeed_allreduce_buffer_*"


@pytest.fixture(autouse=True)
def no_deepspeed_shm_buffers_left():
    """No test may leave DeepSpeed's ~66 MB shared-memory all-reduce buffers in /dev/shm: megadfm keeps
    DeepSpeed from creating them (training.distributed.skip_shm_allreduce_op). Dozens of engine launches
    that each left two used to fill a 24 GiB machine's memory. Any found are removed, then reported."""
    import glob

    before = set(glob.glob(DEEPSPEED_SHM_GLOB))
    yield
    left = sorted(set(glob.glob(DEEPSPEED_SHM_GLOB)) - before)
    for path in left:
        os.remove(path)
    assert not left, f"the test left DeepSpeed shared-memory buffers behind: {left}"

