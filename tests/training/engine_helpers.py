"""Launch real training runs (deepspeed launcher, torchrun or one plain process) for engine tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import yaml

from tests.conftest import REPO
from tests.training.dist_helpers import free_port

# TORCHDYNAMO_DISABLE: every ZeRO deepspeed.initialize imports DeepSpeed's Muon optimizer, whose
# torch.compile decorators pull in inductor (3 s per process idle, minutes on a loaded 2-core box).
TEST_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "TORCHDYNAMO_DISABLE": "1"}


def tiny_config(run_dir: str, prefix: str, tokenizer_dir: str, **sections) -> Dict:
    """A tiny ZeRO-3 CPU run on the real tokenizer's vocabulary; ``sections`` override keys per section."""
    cfg = {
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256, "kernels": "torch",
                  "time_embedding_dim": 32},
        "data": {"tokenizer": tokenizer_dir, "blend": [{"prefix": prefix, "weight": 1.0}], "seq_len": 64,
                 "split": [0.9, 0.1, 0.0]},
        "training": {"output_dir": run_dir, "train_steps": 8, "micro_batch_size": 2, "grad_accum_steps": 1,
                     "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "zero_stage": 3, "ds_config": os.path.join(REPO, "ds_configs/cpu_zero3.json"),
                     "log_interval": 1, "eval_interval": 0},
        "checkpoint": {"save_interval": 4, "keep_last": 2},
        "telemetry": {"wandb": "disabled", "spike_warmup": 1000},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: str, cfg: Dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


FAULT_SCRIPT = os.path.join(REPO, "tests", "training", "fault_injection.py")

DEFAULT_LAUNCHER = "torchrun"
"""Launcher of multi-process runs unless a test names one. torchrun starts the ranks about 5 s sooner
than the deepspeed launcher (which imports DeepSpeed twice, in its runner and in its per-node
launch process, before any rank starts). The tests of what the deepspeed launcher itself does (the
README's command: exit codes passed through, the reference run of the resume tests, the ZeRO-3 loss
run, the export runs, the kill soak) pass launcher="deepspeed". :func:`start` (a run a test kills)
keeps the deepspeed launcher: torchrun puts each rank in a session of its own, so killing the
launcher's process group would leave its ranks training (and pruning checkpoints) behind the test."""


def launch_command(config_path: str, nproc: int, launcher: str, overrides: Sequence[str] = (),
                   faults: Optional[Dict[str, int]] = None) -> List[str]:
    """``faults`` ({"nan_loss_at_step": 3}) runs tests/training/fault_injection.py instead of pretrain_dfm.py."""
    script = FAULT_SCRIPT if faults else os.path.join(REPO, "pretrain_dfm.py")
    sets = [a for name, value in (faults or {}).items() for a in ("--fault", f"{name}={value}")]
    sets += [a for o in overrides for a in ("--set", o)]
    if launcher == "deepspeed":
        return [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_accelerators", str(nproc),
                "--master_port", str(free_port()), script, "--config", config_path, *sets]
    if launcher == "torchrun":
        return [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), script, "--config", config_path, *sets]
    assert launcher == "python" and nproc == 1
    return [sys.executable, script, "--config", config_path, *sets]


def run(config_path: str, nproc: int = 2, launcher: str = DEFAULT_LAUNCHER, overrides: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None, timeout: float = 600,
        faults: Optional[Dict[str, int]] = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **TEST_ENV, **(env or {}))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(var, None)
    return subprocess.run(launch_command(config_path, nproc, launcher, overrides, faults), cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start(config_path: str, nproc: int = 2, launcher: str = "deepspeed", overrides: Sequence[str] = (),
          env: Optional[Dict[str, str]] = None, log_path: Optional[str] = None) -> subprocess.Popen:
    full_env = dict(os.environ, **TEST_ENV, **(env or {}))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(var, None)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(launch_command(config_path, nproc, launcher, overrides), cwd=REPO, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank it started (they share its session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def step_records(run_dir: str) -> Dict[int, Dict]:
    """The last record logged for each training step (a resumed run re-logs nothing before its start)."""
    path = os.path.join(run_dir, "telemetry", "train_steps.jsonl")
    out: Dict[int, Dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            out[int(rec["step"])] = rec
    return out


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
