#!/usr/bin/env python
"""Kill soak: SIGKILL a 2-process ZeRO-3 CPU training N times at random moments, resume after each,
then check that nothing was lost or corrupted.

    python bench/kill_soak.py --kills 20 --work /tmp/soak

Every launch runs through tests/training/fault_injection.py with ``slow_save_ms`` (each save sleeps
between writing DeepSpeed's files and publishing, and says so on stdout), so that half of the kills
can be timed into a save: after a save starts, at a random point of a window a bit longer than the
sleep (so some land in the publish, the ``latest`` rewrite and retention). The other half land at a
random moment of training. At the end: every surviving checkpoint verifies against its manifest, no
``.corrupt-*`` or ``.incomplete-*`` is left, and the per-step records (loss, lr, grad norm, batch
hash) and the final consolidated weights equal an uninterrupted run's bitwise.

A pass/fail soak, not a ratio bench: it prints the shared header (threads, load average: the load
decides where the kills land) but writes no JSON line and is not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
from typing import Dict, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))  # as tests/conftest.py

from bench.common import print_header  # noqa: E402

TOKENIZER = os.path.join(REPO, "artifacts", "tokenizer", "qwen3")


def corpus(work: str) -> str:
    """80 standard-library modules, as the test suite's stdlib_prefix fixture builds them."""
    prefix = os.path.join(work, "corpus", "stdlib")
    if not os.path.isfile(prefix + "_text_document.idx"):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", sysconfig.get_paths()["stdlib"],
                        "--glob", "*.py", "--tokenizer", TOKENIZER, "--append-eod", "--output-prefix", prefix,
                        "--max-documents", "80", "--workers", "1", "--no-progress"], check=True, capture_output=True)
    return prefix + "_text_document"


def launch(config: str, log: str, slow_ms: int):
    """Start a 2-process run of ``config`` through the fault-injection wrapper, its ranks in one process
    group (tests/training/engine_helpers.py's default launcher: the ranks started directly)."""
    from tests.training.engine_helpers import start  # imported where used: --help answers without torch

    return start(config, nproc=2, log_path=log, faults={"slow_save_ms": slow_ms})


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def wait_until(proc: subprocess.Popen, log: str, needle: str, timeout: float, count: int = 1) -> bool:
    """True once ``needle`` is in the log ``count`` times; False if the run ended or the timeout passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read(log).count(needle) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def records(run_dir: str) -> Dict[int, Dict]:
    """The last record of each step; a line cut short by a kill (terminated by the next run) is skipped."""
    out = {}
    with open(os.path.join(run_dir, "telemetry", "train_steps.jsonl")) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out[int(rec["step"])] = rec
    return out


def check(run_dir: str, ref_dir: str, steps: int) -> Dict[str, object]:
    import torch

    from megadfm.checkpoints.layout import (CheckpointCorruptError, complete_steps, corrupt_dirs, incomplete_dirs, tag_for_step,
                                            verify_step_dir)
    from megadfm.checkpoints.zero import consolidated_state_dict

    root = os.path.join(run_dir, "checkpoints")
    bad = []
    for s in complete_steps(root):
        try:
            verify_step_dir(os.path.join(root, tag_for_step(s)))
        except CheckpointCorruptError as e:
            bad.append(str(e))
    keys = ("loss", "lr", "grad_norm", "batch_hash")
    got, ref = records(run_dir), records(ref_dir)
    differing = [s for s in range(1, steps + 1) if s not in got or any(got[s].get(k) != ref[s].get(k) for k in keys)]
    a = consolidated_state_dict(root, tag_for_step(steps))
    b = consolidated_state_dict(os.path.join(ref_dir, "checkpoints"), tag_for_step(steps))
    weights_equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"corrupt": len(bad) + len(corrupt_dirs(root)), "bad": bad + corrupt_dirs(root), "incomplete": incomplete_dirs(root),
            "differing_steps": differing, "weights_equal": weights_equal}


def soak(work: str, kills: int, steps: int, slow_ms: int, seed: int, startup_timeout: float) -> int:
    """The reference run, ``kills`` killed and resumed launches, the final resume, the checks; 0 if all held."""
    from tests.training.engine_helpers import kill_group, tiny_config, write_config

    rng = random.Random(seed)
    os.makedirs(work, exist_ok=True)
    prefix = corpus(work)
    cfgs = {}
    for name in ("reference", "soak"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)  # a fresh soak in a reused work directory
        cfg = tiny_config(os.path.join(work, name), prefix, TOKENIZER, training={"train_steps": steps},
                          checkpoint={"save_interval": 2, "keep_last": 2})
        cfgs[name] = write_config(os.path.join(work, f"{name}.yaml"), cfg)
    t0 = time.monotonic()
    ref = launch(cfgs["reference"], os.path.join(work, "reference.log"), slow_ms=0)
    if ref.wait() != 0:
        print(f"reference run failed: see {os.path.join(work, 'reference.log')}")
        return 2
    print(f"reference: {steps} steps uninterrupted ({time.monotonic() - t0:.0f}s)", flush=True)
    survived = in_save = 0
    for i in range(kills):
        log = os.path.join(work, f"kill{i:02d}.log")
        proc = launch(cfgs["soak"], log, slow_ms)
        inside = i % 2 == 0
        # every launch first publishes one checkpoint, so that each kill costs progress but never all of it
        # (killing every launch inside its first save would retry the same save forever)
        if inside:  # into the second save of this launch, up to a bit after its sleep (publish, latest, retention)
            hit = wait_until(proc, log, "fault: slow save of step", startup_timeout, count=2)
            delay = rng.uniform(0, slow_ms / 1000 * 1.3)
        else:  # a random moment of the training after the first save
            hit = wait_until(proc, log, "saved checkpoint", startup_timeout)
            delay = rng.uniform(0, 4.0)
        time.sleep(delay if hit else 0)
        if proc.poll() is not None:
            print(f"kill {i + 1}: the run ended (exit {proc.returncode}) before it could be killed; see {log}")
            break
        kill_group(proc)
        last = max(records(os.path.join(work, "soak")) or {0: None})
        what = "inside a save" if inside and hit else ("during training" if hit else "during start-up")
        in_save += inside and hit
        survived += 1
        print(f"kill {i + 1}/{kills}: SIGKILL {what} (+{delay:.2f}s), last step logged {last}", flush=True)
        if last >= steps:
            print("the run reached its last step; later kills would only hit start-up: stopping the kills")
            break
    final_log = os.path.join(work, "final.log")
    final = launch(cfgs["soak"], final_log, slow_ms=0)  # nothing kills it: its saves need not be slowed
    if final.wait() != 0:
        print(f"final resume failed (exit {final.returncode}): see {final_log}\n{read(final_log)[-3000:]}")
        return 2
    result = check(os.path.join(work, "soak"), os.path.join(work, "reference"), steps)
    equal = result["weights_equal"] and not result["differing_steps"]
    print(f"kills survived: {survived} ({in_save} inside a save)")
    print(f"corrupt checkpoints: {result['corrupt']}{' ' + str(result['bad']) if result['bad'] else ''}")
    print(f"incomplete saves left: {len(result['incomplete'])}")
    print(f"bitwise equal: {'yes' if equal else 'no'} (per-step records differ at {result['differing_steps'] or 'no step'}, "
          f"final weights {'equal' if result['weights_equal'] else 'DIFFER'})")
    print(f"total {time.monotonic() - t0:.0f}s")
    return 0 if equal and result["corrupt"] == 0 and not result["incomplete"] and survived == kills else 1


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 6 per kill + 4)")
    p.add_argument("--slow-save-ms", type=int, default=1500, help="how long each save sleeps before publishing")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill timing")
    p.add_argument("--work", default=os.path.join(REPO, "runs", "kill_soak"), help="work directory (reused corpus)")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds a launch may take to start training")
    args = p.parse_args(argv)
    print_header("kill_soak", "reference", "the same run uninterrupted; records and weights compared bitwise", 1,
                 "per rank: OMP_NUM_THREADS=1, 2 ranks")
    return soak(args.work, args.kills, args.steps or 6 * args.kills + 4, args.slow_save_ms, args.seed, args.startup_timeout)


if __name__ == "__main__":
    sys.exit(main())
