"""bench/bench_memory.py at the tiny shape (what `make scale-smoke` runs at the 0.6B shape): a real 2-rank
ZeRO-3 run through the deepspeed launcher, every phase recorded by every rank, the ratio to DeepSpeed's
estimate, and the fp32 master weights shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.common import JSON_PREFIX
from megadfm.training.memory import memory_log_path, read_memory_log
from tests.conftest import REPO
from tests.training.engine_helpers import TEST_ENV

PHASES = ["imports", "model built", "engine initialised", "until the first step", "first forward", "first backward",
          "first optimizer step", "later steps", "first save"]


def test_tiny_shape_two_ranks_every_phase_against_the_estimate(tmp_path, stdlib_prefix, tokenizer_dir):
    run_dir = str(tmp_path / "run")
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_memory.py"), "--preset", "tiny", "--steps", "2",
                          "--seq-len", "64", "--data-prefix", stdlib_prefix, "--tokenizer", tokenizer_dir, "--run-dir", run_dir],
                         cwd=REPO, env=dict(os.environ, **TEST_ENV), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads(next(l for l in out.stdout.splitlines() if l.startswith(JSON_PREFIX))[len(JSON_PREFIX):])
    extra = record["extra"]
    assert extra["ok"] and extra["stopped"] is None
    assert extra["counts"]["params"] > 9_000_000 and extra["counts"]["largest_layer"] == 151936 * 64  # the tied embedding
    for rank in ("0", "1"):
        phases = extra["phases"][rank]
        assert [p["phase"] for p in phases] == PHASES
        assert all(p["peak_bytes"] >= p["end_bytes"] > 0 for p in phases)
        assert phases[0]["peak_scope"] == "process" and all(p["peak_scope"] == "phase" for p in phases[1:])
        # the file the ranks wrote is what the bench read
        assert [p["phase"] for p in read_memory_log(memory_log_path(run_dir, int(rank)))] == PHASES
    ratios = {r["name"]: r for r in record["ratios"]}
    assert set(ratios) == {f"{p} / estimate" for p in PHASES}
    imports = max(p["end_bytes"] for rank in ("0", "1") for p in extra["phases"][rank] if p["phase"] == "imports")
    assert extra["analytic_bytes"]["runtime (python, torch, deepspeed)"] == imports
    worst_step = max(p["peak_bytes"] for rank in ("0", "1") for p in extra["phases"][rank] if p["phase"] == "later steps")
    assert ratios["later steps / estimate"]["value"] == pytest.approx(worst_step / extra["estimate_bytes"], rel=1e-9)
    assert "later steps" in out.stdout and "deepspeed estimate" in out.stdout
    with open(os.path.join(run_dir, "bench_run.log")) as f:
        log = f.read()
    assert "fp32 master weights: shared with the fp32 parameter partitions" in log
    assert "host allocator: glibc mmap threshold fixed at 64 KiB" in log
