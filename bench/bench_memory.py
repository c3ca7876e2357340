#!/usr/bin/env python
"""Memory per rank of a real training run, phase by phase, against DeepSpeed's own ZeRO estimate.

Trains ``--steps`` steps of one model shape (``--preset tiny | 0.6b | 1.7b``) on ``--ranks`` ranks
through the real entry point

    deepspeed --num_accelerators M pretrain_dfm.py --config RUN_DIR/bench_config.yaml     (CPU)
    deepspeed --num_gpus M         pretrain_dfm.py --config RUN_DIR/bench_config.yaml     (CUDA)

and reads what every rank's trainer recorded (megadfm/training/memory.py): the peak within each phase
(model built, init_from loaded, engine initialised, first forward, first backward, first optimizer
step, first save; the resident set's high-water mark on CPU, torch's max allocated and reserved on
CUDA). It prints, per phase, the peak of the worst rank and its ratio to the baseline:

    deepspeed_estimate   DeepSpeed's estimate_zero3_model_states_mem_needs (or the ZeRO-1/2 one) for
                         this parameter count, largest layer and rank count: the model states one
                         rank needs ("gpu" memory in its terms; on CPU ranks that memory is host memory).

Next to it, the analytic count per rank: parameters, gradients and Adam moments (their partitions),
DeepSpeed's fp32 master copy, the largest layer gathered, checkpointed activations, the loss's
[chunk, vocab] logit block, and the process's own runtime (Python, torch and DeepSpeed imported,
nothing built: the ranks' own "imports" phase).

A watchdog samples every rank's resident set (``--sample-interval``) and stops the run when one passes
``--rss-limit-gb`` or the machine's available memory falls under ``--min-available-gb``, instead of
letting the kernel's OOM killer pick processes; the report then says how far each rank got.

Examples:
    python bench/bench_memory.py --preset tiny                     # seconds; what CI runs
    python bench/bench_memory.py --preset 0.6b --ranks 2           # a few minutes on 2 CPU cores, < 24 GiB
    python bench/bench_memory.py --preset 0.6b --ds-config ds_configs/cpu_zero3_offload.json

One JSON line (bench/common.py) holds every phase of every rank, the estimates and the watchdog's samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import print_header, ratio, summarize, write_result  # noqa: E402

GIB = 2**30
SHAPES: Dict[str, Dict] = {
    # examples/tiny_cpu.yaml's shape
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
    # Qwen3-0.6B: 596 M parameters with tied embeddings (+ AdaLN's)
    "0.6b": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128},
    # Qwen3-1.7B: examples/qwen3_1p7b_h100x4.yaml's shape
    "1.7b": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128},
}
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "WANDB_MODE": "disabled", "TORCHDYNAMO_DISABLE": "1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(SHAPES), default="tiny", help="model shape (default: tiny)")
    p.add_argument("--ranks", type=int, default=2, help="data-parallel ranks (default: 2)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to train (default: 3); a reused --run-dir resumes")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=3, help="ZeRO stage (default: 3)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--ds-config", default=None,
                   help="DeepSpeed template (default: ds_configs/cpu_zero{stage}.json on CPU, zero3_bf16.json on CUDA)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per rank and micro-batch (default: 1)")
    p.add_argument("--no-activation-checkpointing", action="store_true", help="keep every block's activations")
    p.add_argument("--time-conditioning", default="adaln_single", help="model.time_conditioning (default: adaln_single)")
    p.add_argument("--init-from", default=None, help="training.init_from: a megadfm init/model folder or checkpoint")
    p.add_argument("--data-prefix", default=os.path.join(REPO, "artifacts/data/stdlib_text_document"),
                   help="a .bin/.idx prefix (default: the demo's stdlib corpus, built by make demo)")
    p.add_argument("--tokenizer", default=os.path.join(REPO, "artifacts/tokenizer/qwen3"), help="tokenizer folder")
    p.add_argument("--run-dir", default=None, help="run folder (default: a temporary one, removed afterwards); "
                                                   "an existing run is resumed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra pretrain_dfm.py --set override (repeatable)")
    p.add_argument("--rss-limit-gb", type=float, default=None, help="stop the run when a rank's resident set passes this")
    p.add_argument("--min-available-gb", type=float, default=1.0,
                   help="stop the run when the machine's available memory falls below this (default: 1.0)")
    p.add_argument("--sample-interval", type=float, default=0.25, help="watchdog sampling period in s (default: 0.25)")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds (default: 3600)")
    args = p.parse_args(argv)
    for name in ("ranks", "steps", "seq_len", "micro_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# ---- the run ---------------------------------------------------------------------------------------

def run_config(args: argparse.Namespace, run_dir: str, cuda: bool) -> Dict:
    precision = args.precision or ("bf16" if cuda else "fp32")
    ds_config = args.ds_config or os.path.join(REPO, "ds_configs", "zero3_bf16.json" if cuda else f"cpu_zero{args.zero_stage}.json")
    model = dict(SHAPES[args.preset], tie_word_embeddings=True, time_conditioning=args.time_conditioning,
                 kernels="auto" if cuda else "torch", activation_checkpointing=not args.no_activation_checkpointing,
                 max_position_embeddings=max(512, args.seq_len))
    return {
        "model": model,
        "data": {"tokenizer": args.tokenizer, "blend": [{"prefix": args.data_prefix, "weight": 1.0}], "seq_len": args.seq_len},
        "training": {"output_dir": run_dir, "train_steps": args.steps, "micro_batch_size": args.micro_batch,
                     "grad_accum_steps": 1, "lr": 1e-4, "warmup_steps": 1, "zero_stage": args.zero_stage,
                     "ds_config": ds_config, "precision": precision, "log_interval": 1, "eval_interval": 0,
                     "init_from": args.init_from},
        "checkpoint": {"save_interval": 0, "keep_last": 1},  # one save: the final one
        "telemetry": {"wandb": "disabled"},
    }


@dataclass
class Watch:
    """What the watchdog saw: the sampled resident-set peak per pid, and why it stopped the run (or None)."""

    peak_rss: Dict[int, int]
    samples: List[Dict]
    stopped: Optional[str]
    returncode: Optional[int]
    wall_s: float


def watch(proc: subprocess.Popen, args: argparse.Namespace) -> Watch:
    """Wait for the launcher; sample its descendants' resident sets; stop the whole tree past a limit."""
    import psutil

    peak: Dict[int, int] = {}
    samples: List[Dict] = []
    stopped = None
    t0 = time.monotonic()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        rss = {}
        for q in procs:
            try:
                rss[q.pid] = q.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        for pid, value in rss.items():
            peak[pid] = max(peak.get(pid, 0), value)
        available = psutil.virtual_memory().available
        elapsed = time.monotonic() - t0
        if not samples or elapsed - samples[-1]["t"] >= 1.0:  # keep one sample a second in the JSON
            samples.append({"t": round(elapsed, 2), "rss": {str(k): v for k, v in rss.items()}, "available": available})
        worst = max(rss.values(), default=0)
        if args.rss_limit_gb is not None and worst > args.rss_limit_gb * GIB:
            stopped = f"a process reached {worst / GIB:.2f} GiB resident, over --rss-limit-gb {args.rss_limit_gb}"
        elif available < args.min_available_gb * GIB:
            stopped = f"the machine's available memory fell to {available / GIB:.2f} GiB, under --min-available-gb {args.min_available_gb}"
        elif elapsed > args.timeout:
            stopped = f"the run took longer than --timeout {args.timeout:.0f} s"
        if stopped:
            for q in reversed(procs):
                try:
                    q.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            break
        time.sleep(args.sample_interval)
    return Watch(peak, samples, stopped, proc.returncode, time.monotonic() - t0)


def launch(args: argparse.Namespace, config_path: str, cuda: bool, log_path: str) -> Watch:
    from megadfm.training.distributed import free_port

    count_flag = "--num_gpus" if cuda else "--num_accelerators"
    cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), count_flag, str(args.ranks),
           "--master_port", str(free_port()), os.path.join(REPO, "pretrain_dfm.py"), "--config", config_path]
    for o in args.overrides:
        cmd += ["--set", o]
    env = dict(os.environ, **RUN_ENV)
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
    print("# run: " + " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return watch(proc, args)


def rank_records(run_dir: str, ranks: int) -> Dict[int, List[Dict]]:
    """Each rank's phase records of its newest invocation (a resumed run appends to the same file)."""
    from megadfm.training.memory import memory_log_path, read_memory_log

    out = {}
    for r in range(ranks):
        path = memory_log_path(run_dir, r)
        recs = read_memory_log(path) if os.path.exists(path) else []
        if recs:
            newest = recs[-1]["pid"]
            recs = [x for x in recs if x["pid"] == newest]
        out[r] = recs
    return out


# ---- the estimates ---------------------------------------------------------------------------------

def model_counts(cfg_dict: Dict) -> Dict[str, int]:
    """Parameter count and the largest single parameter (the tied embedding) of the shape, on the meta device."""
    import torch

    from megadfm.config_base import build
    from megadfm.model.config import ModelConfig
    from megadfm.model.qwen3_dfm import Qwen3DFM

    mcfg = build(ModelConfig, dict(cfg_dict["model"], kernels="torch"), prefix="model")
    with torch.device("meta"):
        model = Qwen3DFM(mcfg, seed=0)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return {"params": sum(sizes.values()), "largest_param": max(sizes.values()),
            "largest_layer": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
            "hidden": mcfg.hidden_size, "layers": mcfg.num_hidden_layers, "vocab": mcfg.vocab_size,
            "loss_chunk_rows": model.loss_chunk_rows()}


def deepspeed_estimate(counts: Dict[str, int], ranks: int, stage: int, offload: bool) -> int:
    """DeepSpeed's model-states estimate per rank: its "gpu" figure, plus on CPU ranks (where offloaded
    states live in the same host memory) each rank's share of its "cpu" figure when offloading."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(counts["params"], counts["largest_layer"], num_gpus_per_node=ranks,
                                                            cpu_offload=offload, cpu_offload_params=False, zero_init=True)
    elif stage in (1, 2):
        cpu, gpu = estimate_zero2_model_states_mem_needs(counts["params"], num_gpus_per_node=ranks, cpu_offload=offload)
    else:  # ZeRO-0: everything replicated (DeepSpeed has no estimator): 2 + 18 bytes as its ZeRO-1/2 formula counts
        cpu, gpu = 0, 20 * counts["params"]
    return int(gpu + (cpu / ranks if offload else 0))


def analytic(counts: Dict[str, int], ranks: int, stage: int, precision: str, seq_len: int, micro: int,
             checkpointing: bool, runtime: int, offload: bool) -> Dict[str, int]:
    """Bytes per rank by what holds them (fp32 master weights, Adam's two moments; DeepSpeed's conventions)."""
    p = counts["params"]
    shard = ranks if stage == 3 else 1
    param_bytes = 2 if precision == "bf16" else 4
    tokens = seq_len * micro
    h = counts["hidden"]
    act_per_layer = tokens * h * 4
    rows = min(counts["loss_chunk_rows"], tokens)
    return {
        "runtime (python, torch, deepspeed)": runtime,
        "parameters": param_bytes * p // shard,
        # a separate fp32 copy exists for bf16 parameters, and with an offloaded optimizer (its own CPU copy); fp32
        # parameters on the optimizer's device are the master weights themselves (megadfm/training/zero_memory.py)
        "fp32 master copy": (4 * p // (ranks if stage >= 1 else 1)) if precision == "bf16" or offload else 0,
        "gradients": 4 * p // (ranks if stage >= 2 else 1),
        "adam moments": 8 * p // (ranks if stage >= 1 else 1),
        "largest layer gathered": (param_bytes * counts["largest_layer"]) if stage == 3 else 0,
        "its full gradient before reduce-scatter": (4 * counts["largest_layer"]) if stage >= 2 else 0,
        "activations": act_per_layer * counts["layers"] * (1 if checkpointing else 12),
        "logit block + its gradient": 2 * rows * counts["vocab"] * 4,
    }


# ---- report ---------------------------------------------------------------------------------------

PHASE_ORDER = ("imports", "model built", "init_from loaded", "engine initialised", "checkpoint resumed", "until the first step",
               "first forward", "first backward", "first optimizer step", "later steps", "first save")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not os.path.exists(args.data_prefix + ".idx"):
        print(f"bench_memory.py: no corpus at --data-prefix {args.data_prefix} (.bin/.idx): run `make demo` "
              "(it tokenizes the stdlib there) or pass another prefix", file=sys.stderr)
        return 2
    own_dir = args.run_dir is None
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench_memory_")
    os.makedirs(run_dir, exist_ok=True)
    try:
        return _bench(args, run_dir, cuda)
    finally:
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def _bench(args: argparse.Namespace, run_dir: str, cuda: bool) -> int:
    import yaml

    from megadfm.training.ds_config import load_ds_template

    cfg = run_config(args, run_dir, cuda)
    config_path = os.path.join(run_dir, "bench_config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    counts = model_counts(cfg)
    offload = "offload_optimizer" in load_ds_template(cfg["training"]["ds_config"]).get("zero_optimization", {})
    estimate = deepspeed_estimate(counts, args.ranks, args.zero_stage, offload)

    header = print_header("memory", "deepspeed_estimate",
                          "DeepSpeed's estimate of the model states per rank (estimate_zero*_model_states_mem_needs)",
                          threads=1, threads_note="OMP_NUM_THREADS=1 per rank")
    print(f"# shape {args.preset}: {counts['params'] / 1e6:.1f} M parameters, largest layer {counts['largest_layer'] / 1e6:.1f} M; "
          f"{args.ranks} ranks, ZeRO-{args.zero_stage}{' + optimizer offload' if offload else ''}, "
          f"{cfg['training']['precision']}, seq {args.seq_len} x micro-batch {args.micro_batch}, "
          f"activation checkpointing {'on' if cfg['model']['activation_checkpointing'] else 'off'}", flush=True)
    log_path = os.path.join(run_dir, "bench_run.log")
    w = launch(args, config_path, cuda, log_path)
    records = rank_records(run_dir, args.ranks)
    ok = w.stopped is None and w.returncode == 0
    # the runtime is what the ranks held once imported, before building anything ("imports" phase)
    runtime = max((r["end_bytes"] for recs in records.values() for r in recs if r["phase"] == "imports"), default=0)
    parts = analytic(counts, args.ranks, args.zero_stage, cfg["training"]["precision"], args.seq_len, args.micro_batch,
                     cfg["model"]["activation_checkpointing"], runtime, offload)

    metric = "gib_per_rank"
    results = {"deepspeed_estimate": {metric: summarize([estimate / GIB])}}
    phases = [ph for ph in PHASE_ORDER if any(r["phase"] == ph for recs in records.values() for r in recs)]
    table = []
    for ph in phases:
        per_rank = [next((r["peak_bytes"] for r in records[k] if r["phase"] == ph), None) for k in range(args.ranks)]
        seen = [v for v in per_rank if v is not None]
        results[ph] = {metric: summarize([v / GIB for v in seen])}
        table.append((ph, per_rank, max(seen)))
    ratios = [ratio(f"{ph} / estimate", {ph: {metric: summarize([worst / GIB])}, "deepspeed_estimate": results["deepspeed_estimate"]},
                    metric, ph, "deepspeed_estimate") for ph, _, worst in table]

    print(f"\n{'phase':<24} " + " ".join(f"{'rank ' + str(k):>9}" for k in range(args.ranks)) + f" {'worst':>9} {'/ estimate':>10}")
    for (ph, per_rank, worst), r in zip(table, ratios):
        cells = " ".join(f"{v / GIB:9.2f}" if v is not None else f"{'-':>9}" for v in per_rank)
        print(f"{ph:<24} {cells} {worst / GIB:9.2f} {r.value:10.2f}")
    print(f"{'deepspeed estimate':<24} " + " " * (10 * args.ranks) + f"{estimate / GIB:9.2f} {1.0:10.2f}")
    print("\nanalytic count per rank (GiB):")
    for name, b in parts.items():
        print(f"  {name:<42} {b / GIB:7.2f}")
    print(f"  {'sum':<42} {sum(parts.values()) / GIB:7.2f}")
    sampled = max(w.peak_rss.values(), default=0)
    print(f"\nwatchdog: largest resident set sampled {sampled / GIB:.2f} GiB; wall {w.wall_s:.0f} s; "
          + ("run completed" if ok else f"run FAILED ({w.stopped or f'exit {w.returncode}'}); log: {log_path}"), flush=True)
    if not ok:
        with open(log_path) as f:
            print("".join(f.readlines()[-25:]), file=sys.stderr)
    write_result(header, args, results, ratios, extra={
        "ok": ok, "stopped": w.stopped, "returncode": w.returncode, "preset": args.preset, "counts": counts,
        "offload": offload, "precision": cfg["training"]["precision"], "estimate_bytes": estimate,
        "analytic_bytes": parts, "phases": {str(k): v for k, v in records.items()}, "watchdog_peak_rss": sampled,
        "watchdog_samples": w.samples, "device": "cuda" if cuda else "cpu"})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
