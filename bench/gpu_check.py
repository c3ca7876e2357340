"""The one-call GPU check (bench/gpu_check.sh runs this): on a bare GPU machine with PyTorch, Triton and
transformers but no DeepSpeed, liger-kernel or network, install the bundle built by
bench/gpu_wheels.sh into a temporary folder and prove the GPU path, in stages:

    install     pip install --no-index --no-deps --target TMP/site BUNDLE/wheels/*.whl
    env         (a) nvidia-smi; versions; the GPU, its peak-table entry; what kernels auto/fused choose
    gpu_tests   (b) tests/gpu: every fused candidate against its torch reference, forward + backward
    gpu_model   (c) bench/gpu_model.py, Qwen3-1.7B shape, seq 8192: fused vs torch tokens/s, MFU, memory
    train       (d) deepspeed pretrain_dfm.py on 1 GPU: ZeRO-3, bf16, activation checkpointing, 1.7B
                shape, seq 8192, 20 steps and a save, then the same command resumes it for 2 more

Each stage has a time budget; the whole run has one (470 s by default, under 8 minutes). A stage
runs with min(its budget, what is left) as its timeout and is skipped, with the reason, when less
than its minimum is left. Everything goes to OUT/gpu_check.json (rewritten after every stage, so a
killed run still leaves the stages it finished) and OUT/gpu_check.log (every command's output);
OUT is --out, else $OUT, else runs/gpu_check. Checkpoints and caches go to a temporary work folder
(--work), deleted at the end, never under OUT.

    bash bench/gpu_check.sh                         # the whole check, on a GPU machine
    bash bench/gpu_check.sh --dry-run               # check the bundle and print the plan (no GPU needed)
    bash bench/gpu_check.sh --budget train=300 --stages env,train

Exit status: 0 when every stage that ran passed, 1 when one failed, timed out or was incomplete (stage
d without its resume), 2 when the bundle is unusable (the dry run's verdict too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import gpu_bundle  # noqa: E402
import gpu_check_train as train  # noqa: E402

TOTAL_BUDGET_S = 470


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: int
    min_s: int
    what: str


STAGES = (
    Stage("install", 20, 5, "pip install --no-index --no-deps --target TMP/site BUNDLE/wheels/*.whl"),
    Stage("env", 20, 5, "(a) nvidia-smi, versions, GPU and its MFU peak-table entry, kernel choices"),
    Stage("gpu_tests", 125, 30, "(b) python -m pytest tests/gpu (fused vs torch, forward + backward, bf16 tolerances)"),
    Stage("gpu_model", 75, 40, "(c) python bench/gpu_model.py --repeats 3 (Qwen3-1.7B shape, seq 8192, fused vs torch)"),
    Stage("train", 230, 90, f"(d) deepspeed pretrain_dfm.py, 1 GPU, ZeRO-3, bf16, checkpointing, 1.7B, seq 8192: "
                            f"{train.STEPS} steps + save, then resume for {train.RESUME_STEPS}"),
)


class Check:
    """Budgets, the log, the JSON, and running one command under a timeout."""

    def __init__(self, out: str, total_s: int, budgets: Dict[str, int]):
        self.out, self.total_s, self.budgets = out, total_s, budgets
        self.t0 = time.monotonic()
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "gpu_check.log"), "a", encoding="utf-8")
        self.result = {"started": _now(), "total_budget_s": total_s, "stages": {}}

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.t0)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.t0, 1)
        self.result["finished"] = _now()
        path = os.path.join(self.out, "gpu_check.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.result, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def run(self, cmd: List[str], timeout: float, env: Dict[str, str], cwd: str = REPO) -> Dict:
        """Run ``cmd`` in its own process group, its output to the console and the log; kill the group at
        ``timeout``. Returns {rc, wall_s, timed_out, output (the last 200 lines)}."""
        self.say("$ " + " ".join(cmd))
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", start_new_session=True)
        except OSError as e:
            self.say(f"  cannot start: {e}")
            return {"rc": None, "wall_s": 0.0, "timed_out": False, "output": [str(e)], "error": str(e)}
        lines: List[str] = []

        def pump():
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                self.say("  " + line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.say(f"  timed out after {timeout:.0f} s: stopping the process group")
            _stop_group(proc)
        reader.join(timeout=10)
        return {"rc": proc.returncode, "wall_s": round(time.monotonic() - start, 1), "timed_out": timed_out,
                "output": lines[-200:]}

    def stage(self, stage: Stage, body) -> Dict:
        """Run one stage under its budget (skipped with the reason when too little is left)."""
        budget = self.budgets.get(stage.name, stage.budget_s)
        left = self.left()
        self.say(f"== {stage.name}: {stage.what} (budget {budget} s, {left:.0f} s of {self.total_s} s left)")
        if left < stage.min_s:
            rec = {"status": "skipped", "reason": f"only {left:.0f} s of the {self.total_s} s total left; this stage needs "
                                                  f"at least {stage.min_s} s"}
        else:
            timeout = min(budget, left)
            start = time.monotonic()
            try:
                rec = body(timeout)
            except Exception as e:  # noqa: BLE001 - a broken stage is reported as failed, the others still run
                rec = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            rec.setdefault("wall_s", round(time.monotonic() - start, 1))
            rec["budget_s"] = timeout
        self.say(f"   {stage.name}: {rec['status']}" + (f" ({rec['reason']})" if rec.get("reason") else "")
                 + (f" in {rec['wall_s']} s" if "wall_s" in rec else ""))
        self.result["stages"][stage.name] = rec
        self.save()
        return rec


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def status_of(run: Dict) -> str:
    return "timed_out" if run["timed_out"] else ("ok" if run["rc"] == 0 else "failed")


def why(run: Dict, what: str) -> str:
    """'<what> timed out' or '<what> exited N: <its last output line>'."""
    if run["timed_out"]:
        return f"{what} timed out after {run['wall_s']} s"
    last = next((line.strip() for line in reversed(run["output"]) if line.strip()), "")
    return f"{what} exited {run['rc']}" + (f": {last[:300]}" if last else "")


# ---- the stages ------------------------------------------------------------------------------------


def stage_install(check: Check, bundle: str, site: str, env: Dict[str, str], timeout: float) -> Dict:
    wheels = sorted(os.path.join(bundle, "wheels", n) for n in os.listdir(os.path.join(bundle, "wheels")) if n.endswith(".whl"))
    pip_ok = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if pip_ok:
        run = check.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
                         "--disable-pip-version-check", "--target", site, *wheels], timeout, env)
        return {"status": status_of(run), "how": "pip --no-index --no-deps --target", "wheels": [os.path.basename(w) for w in wheels],
                "wall_s": run["wall_s"], "reason": None if status_of(run) == "ok" else why(run, "pip install")}
    check.say("  pip is not available to this Python: unpacking the wheels into the target instead (no console scripts)")
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(site)
    return {"status": "ok", "how": "unzipped (no pip on this machine)", "wheels": [os.path.basename(w) for w in wheels]}


def stage_env(check: Check, env: Dict[str, str], timeout: float) -> Dict:
    rec: Dict = {}
    if shutil.which("nvidia-smi"):
        run = check.run(["nvidia-smi"], min(15, timeout), env)
        rec["nvidia_smi_rc"] = run["rc"]
    else:
        rec["nvidia_smi_rc"] = None
        check.say("  nvidia-smi not found on PATH")
    run = check.run([sys.executable, os.path.join(REPO, "bench", "gpu_check_probe.py")], timeout, env)
    from gpu_check_probe import PROBE_PREFIX

    facts = next((json.loads(line[len(PROBE_PREFIX):]) for line in run["output"] if line.startswith(PROBE_PREFIX)), None)
    rec.update(status=status_of(run), facts=facts, wall_s=run["wall_s"])
    if facts is None:
        rec.update(status="failed", reason="the probe printed no facts (see the log)")
    elif not facts.get("cuda_available"):
        rec.update(status="failed", reason="torch.cuda.is_available() is False")
    elif isinstance(facts.get("kernels_fused"), str):
        rec.update(status="failed", reason="kernels: fused does not resolve on this machine (see facts.kernels_fused)")
    return rec


def stage_gpu_tests(check: Check, env: Dict[str, str], work: str, timeout: float) -> Dict:
    xml = os.path.join(check.out, "gpu_tests.xml")
    run = check.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "tests/gpu",
                     f"--junitxml={xml}"], timeout, env)
    rec = {"status": status_of(run), "wall_s": run["wall_s"], "junit_xml": os.path.basename(xml)}
    if os.path.isfile(xml):
        rec.update(junit_summary(xml))
        if rec["status"] == "ok" and rec["passed"] == 0:
            rec.update(status="failed", reason="no GPU test ran (all skipped: see skipped)")
    if rec["status"] != "ok" and "reason" not in rec:
        rec["reason"] = why(run, "pytest")
    return rec


def junit_summary(path: str) -> Dict:
    cases = ET.parse(path).getroot().iter("testcase")
    out = {"passed": 0, "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"].append({"test": name, "message": (bad.get("message") or "")[:500]})
        elif skip is not None:
            out["skipped"].append({"test": name, "reason": (skip.get("message") or "")[:300]})
        else:
            out["passed"] += 1
    return out


def stage_gpu_model(check: Check, env: Dict[str, str], timeout: float) -> Dict:
    results = os.path.join(check.out, "gpu_model.jsonl")
    run = check.run([sys.executable, os.path.join(REPO, "bench", "gpu_model.py"), "--repeats", "3"], timeout,
                    dict(env, MEGADFM_BENCH_RESULTS=results))
    rec = {"status": status_of(run), "wall_s": run["wall_s"]}
    record = None
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        record = json.loads(lines[-1]) if lines else None
    if record is not None:
        extra = record["extra"]
        rec.update(peak=extra.get("peak"), device_name=extra.get("device_name"), backends=extra.get("backends"),
                   ratios=record.get("ratios"))
        ratio = next((r["value"] for r in record.get("ratios", []) if r.get("denominator") == "torch"), None)
        rec["fused_over_torch_tokens_per_s"] = ratio
    elif rec["status"] == "ok":
        rec.update(status="failed", reason="gpu_model.py wrote no result line (was a backend skipped? see the log)")
    if rec["status"] != "ok" and "reason" not in rec:
        rec["reason"] = why(run, "gpu_model.py")
    return rec


def stage_train(check: Check, bundle: str, manifest: Dict, site: str, env: Dict[str, str], work: str, timeout: float) -> Dict:
    run_dir = os.path.join(work, "run")
    cfg_path = os.path.join(work, "gpu_check_train.yaml")
    smoke = env.get("DS_ACCELERATOR") == "cpu"
    tree = train.run_config(run_dir, os.path.join(bundle, manifest.get("corpus_prefix", gpu_bundle.CORPUS_PREFIX)),
                            os.path.join(bundle, manifest.get("tokenizer", gpu_bundle.TOKENIZER)),
                            os.path.join(REPO, "ds_configs", "cpu_zero3.json" if smoke else "zero3_bf16.json"), smoke)
    train.write_yaml(tree, cfg_path)
    shutil.copy(cfg_path, os.path.join(check.out, "gpu_check_train.yaml"))
    launcher = os.path.join(site, "bin", "deepspeed")
    cmd = ([launcher] if os.path.isfile(launcher) else [sys.executable, "-m", "deepspeed.launcher.runner"])
    cmd += ["--num_accelerators" if smoke else "--num_gpus", "1", os.path.join(REPO, "pretrain_dfm.py"), "--config", cfg_path]
    free = shutil.disk_usage(work).free
    need = train.checkpoint_bytes_needed(1e7 if smoke else train.PARAMS_1_7B)
    rec: Dict = {"config": "gpu_check_train.yaml", "disk_free_gb": round(free / 1e9, 1), "disk_needed_gb": round(need / 1e9, 1)}
    start = time.monotonic()
    first = check.run(cmd, timeout * 0.55, env)  # 20 steps + a save; the resume (load, 2 steps, save) gets the rest
    rec["first"] = {"rc": first["rc"], "wall_s": first["wall_s"], "timed_out": first["timed_out"],
                    "checkpoints": train.complete_checkpoints(run_dir)}
    rec["kernels"] = train.kernel_lines(first["output"])
    records = train.step_records(run_dir)
    rec["steps"] = train.summarize(records, 1, train.STEPS)
    rec["memory_phases"] = train.memory_phases(run_dir)  # the trainer's own per-phase peaks (docs/MEMORY.md)
    if status_of(first) != "ok":
        rec.update(status=status_of(first), reason=why(first, "the first run"))
        return _copy_telemetry(check, run_dir, rec)
    if not rec["first"]["checkpoints"]:
        rec.update(status="failed", reason="the first run saved no complete checkpoint")
        return _copy_telemetry(check, run_dir, rec)
    rec["checkpoint_gb"] = round(train.folder_bytes(os.path.join(run_dir, "checkpoints")) / 1e9, 1)
    if free < need:
        rec.update(status="incomplete", resume="skipped", reason=f"resume skipped: {free / 1e9:.0f} GB free, two checkpoints "
                                                                  f"need {need / 1e9:.0f} GB")
        return _copy_telemetry(check, run_dir, rec)
    left = timeout - (time.monotonic() - start)
    if left < 30:
        rec.update(status="incomplete", resume="skipped", reason=f"resume skipped: {left:.0f} s of the stage budget left")
        return _copy_telemetry(check, run_dir, rec)
    # exit_after_steps is a step number, not a count: the resumed invocation is told to go on to the end
    second = check.run(cmd + ["--set", f"training.exit_after_steps={train.STEPS + train.RESUME_STEPS}"], left, env)
    records = train.step_records(run_dir)
    after = train.summarize(records, train.STEPS + 1, train.STEPS + train.RESUME_STEPS)
    rec["resume"] = {"rc": second["rc"], "wall_s": second["wall_s"], "timed_out": second["timed_out"],
                     "steps": after["steps"], "checkpoints": train.complete_checkpoints(run_dir),
                     "resumed_from_log": any("resumed from" in line for line in second["output"])}
    expected = list(range(train.STEPS + 1, train.STEPS + train.RESUME_STEPS + 1))
    if status_of(second) != "ok":
        rec.update(status=status_of(second), reason=why(second, "the resumed run"))
    elif after["steps"] != expected:
        rec.update(status="failed", reason=f"the resumed run logged steps {after['steps']}, expected {expected}")
    elif not rec["resume"]["resumed_from_log"]:
        rec.update(status="failed", reason="the second run did not log 'resumed from' a checkpoint")
    else:
        rec["status"] = "ok"
    return _copy_telemetry(check, run_dir, rec)


def _copy_telemetry(check: Check, run_dir: str, rec: Dict) -> Dict:
    src = os.path.join(run_dir, "telemetry", "train_steps.jsonl")
    if os.path.isfile(src):
        shutil.copy(src, os.path.join(check.out, "train_steps.jsonl"))
    return rec


# ---- plan, dry run, main ---------------------------------------------------------------------------


def plan_lines(bundle: str, out: str, total: int, budgets: Dict[str, int], stages: List[str]) -> List[str]:
    lines = [f"gpu_check plan: bundle {bundle}, results in {out}/gpu_check.json + gpu_check.log, total budget {total} s"]
    for s in STAGES:
        state = "" if s.name in stages else "  [not selected]"
        lines.append(f"  {s.name:10s} {budgets.get(s.name, s.budget_s):4d} s (min {s.min_s:3d} s)  {s.what}{state}")
    used = sum(budgets.get(s.name, s.budget_s) for s in STAGES if s.name in stages)
    lines.append(f"  stage budgets sum to {used} s; the run stops at {total} s whatever they say")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else runs/gpu_check)")
    p.add_argument("--bundle", default=os.path.join(REPO, "artifacts", "gpu_wheels"),
                   help="the folder bench/gpu_wheels.sh built (default artifacts/gpu_wheels)")
    p.add_argument("--work", default=None, help="temporary folder for the install, caches and checkpoints (default: a new "
                                                "one under $TMPDIR, deleted at the end)")
    p.add_argument("--keep-work", action="store_true", help="do not delete the work folder")
    p.add_argument("--dry-run", action="store_true", help="check the bundle and print the plan; needs no GPU")
    p.add_argument("--total-budget", type=int, default=TOTAL_BUDGET_S, help=f"seconds for everything (default {TOTAL_BUDGET_S})")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS", help="one stage's budget (repeatable)")
    p.add_argument("--smoke-cpu", action="store_true",
                   help="off-GPU check of this script: stage d at a toy width on CPU (DS_ACCELERATOR=cpu); its figures mean nothing")
    p.add_argument("--stages", default=",".join(s.name for s in STAGES), help="comma-separated stages to run (install is "
                                                                             "always run when a later stage is)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [s.name for s in STAGES]
    budgets: Dict[str, int] = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in names or not value.isdigit():
            sys.exit(f"gpu_check: --budget {item!r}: expected STAGE=SECONDS with STAGE one of {', '.join(names)}")
        budgets[name] = int(value)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in names]
    if unknown:
        sys.exit(f"gpu_check: unknown stage(s) {unknown}; stages are {', '.join(names)}")
    if stages and stages != ["install"]:
        stages = ["install"] + [s for s in stages if s != "install"]
    out = os.path.abspath(args.out or os.environ.get("OUT") or os.path.join(REPO, "runs", "gpu_check"))
    bundle = os.path.abspath(args.bundle)
    problems, manifest = gpu_bundle.check_folder(bundle)
    for line in plan_lines(bundle, out, args.total_budget, budgets, stages):
        print(line)
    if problems:
        print(f"gpu_check: the bundle {bundle} cannot be used:", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        print("  (build it on a machine with network: bash bench/gpu_wheels.sh)", file=sys.stderr)
        return 2
    print(f"bundle ok: {len(manifest['files'])} files, {manifest['total_bytes'] / 1e6:.1f} MB, "
          f"{len(manifest['wheels'])} wheels for Python {manifest.get('python_version')}, corpus "
          f"{manifest.get('corpus_tokens')} tokens, created {manifest.get('created')}")
    if args.dry_run:
        print("dry run: nothing installed or run")
        return 0
    mismatch = gpu_bundle.interpreter_problem(manifest)
    if mismatch:
        print(f"gpu_check: {mismatch}", file=sys.stderr)
        return 2
    return run_stages(args, out, bundle, manifest, stages, budgets)


def run_stages(args, out: str, bundle: str, manifest: Dict, stages: List[str], budgets: Dict[str, int]) -> int:
    check = Check(out, args.total_budget, budgets)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="megadfm-gpu-check-")
    os.makedirs(work, exist_ok=True)
    site = os.path.join(work, "site")
    check.result.update(bundle={"path": bundle, "created": manifest.get("created"), "total_bytes": manifest["total_bytes"],
                                "wheels": sorted(manifest["wheels"].values())}, work=work, repo=REPO)
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([site, REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
               PATH=os.pathsep.join([os.path.join(site, "bin"), env.get("PATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONNOUSERSITE="1", DS_ACCELERATOR="cpu" if args.smoke_cpu else "cuda", PYTHONUNBUFFERED="1",
               TRITON_CACHE_DIR=os.path.join(work, "cache", "triton"),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(work, "cache", "inductor"),
               HF_HOME=os.path.join(work, "cache", "hf"))
    check.result["smoke_cpu"] = args.smoke_cpu
    check.say(f"gpu_check: repo {REPO}, bundle {bundle}, work {work}, out {out}, Python {sys.executable}"
              + ("; --smoke-cpu: stage d at a toy width on CPU, figures meaningless" if args.smoke_cpu else ""))
    bodies = {
        "install": lambda t: stage_install(check, bundle, site, env, t),
        "env": lambda t: stage_env(check, env, t),
        "gpu_tests": lambda t: stage_gpu_tests(check, env, work, t),
        "gpu_model": lambda t: stage_gpu_model(check, env, t),
        "train": lambda t: stage_train(check, bundle, manifest, site, env, work, t),
    }
    try:
        for stage in STAGES:
            if stage.name not in stages:
                continue
            if stage.name != "install" and check.result["stages"].get("install", {}).get("status") != "ok":
                check.result["stages"][stage.name] = {"status": "skipped", "reason": "the install stage did not succeed"}
                check.say(f"== {stage.name}: skipped (the install stage did not succeed)")
                check.save()
                continue
            check.stage(stage, bodies[stage.name])
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        check.result["summary"] = summary(check.result["stages"])
        check.save()
    check.say("== summary: " + json.dumps(check.result["summary"], default=str))
    bad = [n for n, r in check.result["stages"].items() if r["status"] in ("failed", "timed_out", "incomplete")]
    return 1 if bad else 0


def summary(stages: Dict[str, Dict]) -> Dict:
    """The figures the issue's targets are about, gathered from the stages (None where a stage gave none)."""
    model = stages.get("gpu_model", {})
    backends = model.get("backends") or {}
    trained = stages.get("train", {}).get("steps") or {}
    env = (stages.get("env", {}).get("facts") or {})
    return {
        "stage_status": {n: r["status"] for n, r in stages.items()},
        "device": env.get("device_name"), "peak_entry": (env.get("peak_entry") or {}).get("device"),
        "kernels_fused": env.get("kernels_fused"),
        "gpu_tests": {k: (len(v) if isinstance(v, list) else v) for k, v in stages.get("gpu_tests", {}).items()
                      if k in ("passed", "failed", "skipped")},
        "bench_fused_tokens_per_s": (backends.get("fused") or {}).get("tokens_per_s"),
        "bench_torch_tokens_per_s": (backends.get("torch") or {}).get("tokens_per_s"),
        "bench_fused_over_torch": model.get("fused_over_torch_tokens_per_s"),
        "bench_fused_mfu": (backends.get("fused") or {}).get("mfu"),
        "bench_peak_memory_gib": {b: (f.get("max_memory_allocated") or 0) / 2**30 for b, f in backends.items()} or None,
        "train_tokens_per_s": trained.get("tokens_per_s_median"), "train_mfu": trained.get("mfu_median"),
        "train_mem_max_gb": trained.get("mem_max_gb"), "train_kernels": stages.get("train", {}).get("kernels"),
        "train_resume": (stages.get("train", {}).get("resume") or {}).get("steps") if isinstance(
            stages.get("train", {}).get("resume"), dict) else stages.get("train", {}).get("resume"),
    }


if __name__ == "__main__":
    sys.exit(main())
