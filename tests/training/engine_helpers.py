"""Launch real training runs (the ranks directly, torchrun, the deepspeed launcher or one plain process) for engine tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

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

DEFAULT_LAUNCHER = "spawn"
"""Launcher of multi-process runs unless a test names one. ``spawn`` starts the ranks itself with the
variables torchrun would give them (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT: torch.distributed's env:// rendezvous), which is what pretrain_dfm.py reads under any
launcher. It skips the launcher's own Python: torchrun imports torch before starting any rank, and
the deepspeed launcher imports DeepSpeed twice (its runner and its per-node launch process). Measured
on a 2-step tiny run: 9.7 s spawned, 13.3 s under torchrun, 20.2 s under the deepspeed launcher.
The launchers themselves keep their tests: the deepspeed launcher passes a rank's exit code through
(test_checkpoint_reliability), and torchrun and the deepspeed launcher train identically (test_engine)."""


def _plain_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    full_env = dict(os.environ, **TEST_ENV, **(env or {}))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(var, None)
    return full_env


def script_argv(config_path: str, overrides: Sequence[str] = (), faults: Optional[Dict[str, int]] = None) -> List[str]:
    """pretrain_dfm.py (or, with ``faults`` such as {"nan_loss_at_step": 3}, tests/training/fault_injection.py) and its flags."""
    script = FAULT_SCRIPT if faults else os.path.join(REPO, "pretrain_dfm.py")
    sets = [a for name, value in (faults or {}).items() for a in ("--fault", f"{name}={value}")]
    sets += [a for o in overrides for a in ("--set", o)]
    return [script, "--config", config_path, *sets]


def launch_command(config_path: str, nproc: int, launcher: str, overrides: Sequence[str] = (),
                   faults: Optional[Dict[str, int]] = None) -> List[str]:
    """The one command of a launcher run (deepspeed, torchrun, or python for one process)."""
    argv = script_argv(config_path, overrides, faults)
    if launcher == "deepspeed":
        return [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_accelerators", str(nproc),
                "--master_port", str(free_port()), *argv]
    if launcher == "torchrun":
        return [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), *argv]
    assert launcher == "python" and nproc == 1, launcher
    return [sys.executable, *argv]


class RankGroup:
    """The ranks of one run started directly (``spawn``), all in one new process group.

    Like torchrun: when a rank fails, the others get a grace period to exit on their own (they
    usually fail the same collective), then are killed; the exit code is rank 0's if it failed, else
    the first failing rank's. ``pid`` is the process group id, so :func:`kill_group` kills them all.
    """

    GRACE_S = 15.0

    def __init__(self, argv: List[str], nproc: int, env: Dict[str, str], outputs: List, errors: List):
        port = free_port()
        self.procs: List[subprocess.Popen] = []
        for rank in range(nproc):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            # rank 0 leads a new process group in this session and the others join it (a group of another
            # session cannot be joined, so no new session here)
            group = {"process_group": 0 if rank == 0 else self.procs[0].pid}
            self.procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=rank_env, stdout=outputs[rank],
                                               stderr=errors[rank], **group))
        self.pid = self.procs[0].pid
        self.returncode: Optional[int] = None
        self._failed_at: Optional[float] = None

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        codes = [p.poll() for p in self.procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed and self._failed_at is None:
            self._failed_at = time.monotonic()
        if None in codes and self._failed_at is not None and time.monotonic() - self._failed_at > self.GRACE_S:
            self.kill()
            codes = [p.wait() for p in self.procs]
        if None in codes:
            return None
        self.returncode = codes[0] if codes[0] != 0 else next((c for c in codes if c != 0), 0)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.procs[0].args, timeout)
            time.sleep(0.05)
        return self.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _read_all(files) -> str:
    out = []
    for f in files:
        f.seek(0)
        out.append(f.read())
    return "".join(out)


def run(config_path: str, nproc: int = 2, launcher: str = DEFAULT_LAUNCHER, overrides: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None, timeout: float = 600,
        faults: Optional[Dict[str, int]] = None) -> subprocess.CompletedProcess:
    """Run to the end; stdout and stderr of every rank (rank 0 first) come back in one CompletedProcess."""
    full_env = _plain_env(env)
    if launcher == "spawn" and nproc == 1:
        launcher = "python"
    if launcher != "spawn":
        return subprocess.run(launch_command(config_path, nproc, launcher, overrides, faults), cwd=REPO, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    import tempfile

    outputs = [tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") for _ in range(nproc)]
    errors = [tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") for _ in range(nproc)]
    try:
        group = RankGroup(script_argv(config_path, overrides, faults), nproc, full_env, outputs, errors)
        try:
            code = group.wait(timeout)
        except subprocess.TimeoutExpired:
            group.kill()
            raise
        return subprocess.CompletedProcess(group.procs[0].args, code, _read_all(outputs), _read_all(errors))
    finally:
        for f in outputs + errors:
            f.close()


def start(config_path: str, nproc: int = 2, launcher: str = DEFAULT_LAUNCHER, overrides: Sequence[str] = (),
          env: Optional[Dict[str, str]] = None, log_path: Optional[str] = None,
          faults: Optional[Dict[str, int]] = None):
    """Start a run in the background (its ranks in one new process group, for :func:`kill_group`);
    every rank's output goes to ``log_path``."""
    full_env = _plain_env(env)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    if launcher == "spawn":
        return RankGroup(script_argv(config_path, overrides, faults), nproc, full_env, [out] * nproc,
                         [subprocess.STDOUT] * nproc)
    # torchrun would put each rank in a session of its own: killing its group would leave them running
    assert launcher == "deepspeed", f"start() kills by process group: spawn or deepspeed, not {launcher}"
    return subprocess.Popen(launch_command(config_path, nproc, launcher, overrides, faults), cwd=REPO, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc) -> None:
    """SIGKILL every rank (a RankGroup's process group, or the deepspeed launcher's session with its ranks)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def complete_steps(run_dir: str) -> List[int]:
    """Steps of the run's complete checkpoints (universal conversions left out)."""
    root = os.path.join(run_dir, "checkpoints")
    return sorted(int(n.split("_")[1]) for n in os.listdir(root) if n.startswith("step_") and not n.endswith("_universal")
                  and os.path.isfile(os.path.join(root, n, "megadfm_meta.json")))


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


def interrupted_run_equals_reference(tmp_path, make_config: Callable[[str, int], Dict], k: int):
    """Run ``make_config(run_dir, save_interval)`` for 2k steps on 2 processes uninterrupted (reference, no saves),
    and again stopped after k steps then resumed; assert the resume says so and that every step's batch hash and
    loss are bitwise equal. Returns (reference dir, interrupted dir, the resume's process)."""
    ref_dir, part_dir = str(tmp_path / "reference"), str(tmp_path / "part")
    assert_ok(run(write_config(str(tmp_path / "ref.yaml"), make_config(ref_dir, 0)), nproc=2))
    part_path = write_config(str(tmp_path / "part.yaml"), make_config(part_dir, k))
    assert_ok(run(part_path, nproc=2, overrides=[f"training.exit_after_steps={k}"]))
    assert complete_steps(part_dir) == [k]
    resumed = run(part_path, nproc=2)
    assert_ok(resumed)
    assert "resumed from" in resumed.stdout and f"step {k}" in resumed.stdout
    full, part = step_records(ref_dir), step_records(part_dir)
    assert sorted(full) == sorted(part) == list(range(1, 2 * k + 1))
    for s in full:
        assert part[s]["batch_hash"] == full[s]["batch_hash"], s
        assert part[s]["loss"] == full[s]["loss"], (s, part[s]["loss"], full[s]["loss"])  # bitwise on CPU
    return ref_dir, part_dir, resumed
