#!/usr/bin/env python
"""Training throughput (tokens/s) on CPU with 2 processes: megadfm vs a naive HF baseline.

For each model size and ZeRO stage this script

  1. runs megadfm through the real entry point
         deepspeed --num_accelerators 2 pretrain_dfm.py --config <tmp yaml> --set ...
     (ds_configs/cpu_zero{N}.json + training.zero_stage=N) and takes the median of the per-step
     "tokens_per_s" in RUN_DIR/telemetry/train_steps.jsonl after skipping the warm-up steps;
  2. runs a naive baseline through the same launcher
         deepspeed --num_accelerators 2 bench/bench_train.py --worker-baseline --config <same yaml>
     : transformers' Qwen3ForCausalLM of the same shape (same vocab 151,936, tied embeddings),
     wrapped in the same DeepSpeed config (megadfm.training.ds_config.build_ds_config on the same
     YAML, torch.optim.AdamW, zero_allow_untested_optimizer), fed the same packed batches
     (megadfm.data.loader.make_train_iterator), trained with a full-logits masked-token loss:
     a random 50% of the tokens are replaced by token 151669 and F.cross_entropy is taken on the
     masked positions of the full [B*L, V] lm_head logits. Tokens/s is counted the same way as
     megadfm's trainer (non-pad tokens of the global batch / wall time of the step, data loading
     included);
  3. prints a table: size, stage, megadfm tok/s, baseline tok/s, ratio megadfm/baseline.

With --repeats N every run is launched N times; the tokens/s of a (kind, size, stage) is the
median, with min/max, of the per-step tokens/s of the timed steps (after --warmup) of all its
launches (with N = 1: the median over steps, as before). The ratio is median/median. One JSON line
(bench/common.py) holds every row.

Sizes: tiny = examples/tiny_cpu.yaml (hidden 64, 2 layers); small = hidden 256, 4 layers,
intermediate 768, 4 heads, 2 kv heads, head_dim 64 (~43M params, ~39M of them the embedding).

Example (about 10 minutes on a quiet 2-core box):
    python bench/bench_train.py --sizes tiny,small --stages 0,3 --steps 8

The environment of every launched run is OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TORCHDYNAMO_DISABLE=1
(as in tests/training/engine_helpers.py). Timings on a shared/loaded machine are noisy: compare
megadfm and baseline rows from the same invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MASK_TOKEN_ID = 151669

from bench.common import add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402

SIZES: Dict[str, Dict] = {
    "tiny": {},  # examples/tiny_cpu.yaml as is
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 64},
}

RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "TORCHDYNAMO_DISABLE": "1"}


# ---------------------------------------------------------------------------------------------------
# orchestrator
# ---------------------------------------------------------------------------------------------------
def make_config(size: str, stage: int, run_dir: str, steps: int, seq_len: int, micro_batch: int) -> Dict:
    import yaml

    with open(os.path.join(REPO, "examples", "tiny_cpu.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["model"].update(SIZES[size])
    cfg["model"]["max_position_embeddings"] = max(int(cfg["model"].get("max_position_embeddings", 0)), seq_len)
    cfg["data"]["tokenizer"] = os.path.join(REPO, "artifacts", "tokenizer", "qwen3")
    cfg["data"]["blend"] = [{"prefix": os.path.join(REPO, "artifacts", "data", "stdlib_text_document"), "weight": 1.0}]
    cfg["data"]["seq_len"] = seq_len
    cfg["training"].update({
        "output_dir": run_dir, "train_steps": steps, "micro_batch_size": micro_batch, "grad_accum_steps": 1,
        "warmup_steps": max(1, min(steps // 2, 20)), "zero_stage": stage,
        "ds_config": os.path.join(REPO, "ds_configs", f"cpu_zero{stage}.json"),
        "log_interval": 1, "eval_interval": 0,
    })
    cfg["checkpoint"] = {"save_interval": 0, "keep_last": 1}  # the trainer still saves once at the end (not timed)
    cfg.setdefault("telemetry", {})["wandb"] = "disabled"
    return cfg


def launch(cmd: List[str], log_path: str, timeout: float) -> int:
    env = dict(os.environ, **RUN_ENV)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started (its own session)
            proc.wait(timeout=60)
            return 124


def read_tps(jsonl: str, warmup: int) -> Optional[Dict]:
    """Median tokens/s of the steps after ``warmup`` (all steps if there are no more), their values and
    count, first and last loss; None without step records."""
    if not os.path.isfile(jsonl):
        return None
    recs: Dict[int, Dict] = {}
    with open(jsonl) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                recs[int(r["step"])] = r
    steps = sorted(recs)
    timed = [recs[s] for s in steps if s > warmup] or [recs[s] for s in steps]
    if not timed:
        return None
    values = [r["tokens_per_s"] for r in timed]
    return {"tps": statistics.median(values), "values": values, "n": len(timed),
            "loss_first": recs[steps[0]]["loss"], "loss_last": recs[steps[-1]]["loss"]}


def bench_one(kind: str, size: str, stage: int, args, work: str) -> Optional[Dict]:
    """Launch one (kind, size, stage) --repeats times; the median tokens/s over the timed steps of
    all launches, those values, and the losses of the last launch; None if a launch left no step records."""
    runs = [bench_launch(kind, size, stage, args, work, i) for i in range(args.repeats)]
    if not all(runs):
        return None
    values = [v for r in runs for v in r["values"]]
    return {"tps": statistics.median(values), "values": values, "n": len(values), "launches": len(runs),
            "loss_first": runs[-1]["loss_first"], "loss_last": runs[-1]["loss_last"]}


def bench_launch(kind: str, size: str, stage: int, args, work: str, repeat: int) -> Optional[Dict]:
    """One launch of megadfm or the baseline; its read_tps (None when it wrote no step records)."""
    import yaml

    from megadfm.training.distributed import free_port

    tag = f"{kind}_{size}_z{stage}" + (f"_r{repeat}" if repeat else "")
    run_dir = os.path.join(work, tag)
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = os.path.join(work, f"{tag}.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(make_config(size, stage, run_dir, args.steps, args.seq_len, args.micro_batch), f)
    ds = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    head = [ds, "--num_accelerators", str(args.nproc), "--master_port", str(free_port())]
    if kind == "megadfm":
        cmd = head + [os.path.join(REPO, "pretrain_dfm.py"), "--config", cfg_path]
        jsonl = os.path.join(run_dir, "telemetry", "train_steps.jsonl")
    else:
        jsonl = os.path.join(run_dir, "baseline_steps.jsonl")
        cmd = head + [os.path.abspath(__file__), "--worker-baseline", "--config", cfg_path, "--out", jsonl]
    log = os.path.join(work, f"{tag}.log")
    t0 = time.time()
    rc = launch(cmd, log, args.timeout)
    res = read_tps(jsonl, args.warmup)
    wall = time.time() - t0
    status = "ok" if rc == 0 else f"exit {rc}"
    print(f"  {tag:<22} {status:<8} wall {wall:6.1f}s  "
          + (f"median {res['tps']:.1f} tok/s over {res['n']} steps, loss {res['loss_first']:.3f} -> {res['loss_last']:.3f}"
             if res else f"no step records (log: {log})"), flush=True)
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        print("    --- log tail ---\n" + "\n".join("    " + l for l in tail.splitlines()), flush=True)
    if rc == 0 and not args.keep:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return res


def orchestrate(args) -> int:
    """Every megadfm and baseline run; the table, the JSON line (and --json-out); 0 if every run succeeded."""
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    stages = [int(s) for s in args.stages.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            sys.exit(f"unknown size {s!r} (choose from {', '.join(SIZES)})")
    for z in stages:
        if z not in (0, 1, 2, 3):
            sys.exit(f"unknown ZeRO stage {z}")
    if args.baseline_stages == "same":
        bstages = None
    elif args.baseline_stages == "none":
        bstages = []
    else:
        bstages = [int(s) for s in args.baseline_stages.split(",") if s.strip()]
    work = args.work_dir or tempfile.mkdtemp(prefix="megadfm_bench_train_")
    os.makedirs(work, exist_ok=True)
    print(f"bench_train: sizes {sizes}, stages {stages}, baseline stages {'same' if bstages is None else bstages}, "
          f"{args.steps} steps (median over steps > {args.warmup}), seq_len {args.seq_len}, micro batch {args.micro_batch}, "
          f"{args.nproc} processes, {args.repeats} launch(es) each; work dir {work}", flush=True)
    header = print_header("train", f"baseline/{sizes[0]}/z{(bstages or stages)[0]}" if bstages != [] else "none",
                          "HF Qwen3ForCausalLM + full [B*L, V] logits masked CE, same DeepSpeed config",
                          int(RUN_ENV["OMP_NUM_THREADS"]), f"per rank, {args.nproc} ranks per run")
    mega: Dict = {}
    base: Dict = {}
    for size in sizes:
        for stage in stages:
            mega[(size, stage)] = bench_one("megadfm", size, stage, args, work)
            if bstages is None or stage in bstages:
                base[(size, stage)] = bench_one("baseline", size, stage, args, work)
        for stage in (bstages or []):
            if (size, stage) not in base:
                base[(size, stage)] = bench_one("baseline", size, stage, args, work)

    def fmt(v):
        return f"{v:.1f}" if v is not None else "-"

    def spread(r):
        return f"[{min(r['values']):.1f}, {max(r['values']):.1f}]" if r else "-"

    print()
    print(f"tokens/s, {args.nproc} CPU processes, seq_len {args.seq_len}, micro batch {args.micro_batch}/process, "
          f"median over steps {args.warmup + 1}..{args.steps} of {args.repeats} launch(es), [min, max] of those steps")
    print("baseline = HF Qwen3ForCausalLM + full [B*L, V] logits masked CE, same DeepSpeed config; "
          "'(zN)' marks a baseline taken at another stage than the row's")
    hdr = (f"{'size':<6} {'stage':>5} {'megadfm tok/s':>14} {'baseline tok/s':>16} {'ratio':>7} "
           f"{'megadfm [min, max]':>20} {'baseline [min, max]':>20}")
    print(hdr)
    print("-" * len(hdr))
    results = {f"{kind}/{s}/z{z}": {"tokens_per_s": summarize(r["values"])}
               for kind, runs in (("megadfm", mega), ("baseline", base)) for (s, z), r in runs.items() if r}
    ratios = []
    for size in sizes:
        for stage in stages:
            m = mega.get((size, stage))
            b, bnote, bstage = base.get((size, stage)), "", stage
            if b is None:  # fall back to the baseline at the highest measured stage for this size
                cands = sorted(z for (s, z), r in base.items() if s == size and r is not None)
                if cands:
                    b, bnote, bstage = base[(size, cands[-1])], f"(z{cands[-1]})", cands[-1]
            mt = m["tps"] if m else None
            bt = b["tps"] if b else None
            shown = "-"
            if mt and bt:
                ratios.append(ratio(f"megadfm/baseline {size} z{stage} (tokens/s)", results, "tokens_per_s",
                                    f"megadfm/{size}/z{stage}", f"baseline/{size}/z{bstage}"))
                shown = f"{ratios[-1].value:.2f}x"
            print(f"{size:<6} {stage:>5} {fmt(mt):>14} {(fmt(bt) + ' ' + bnote).strip():>16} {shown:>7} "
                  f"{spread(m):>20} {spread(b):>20}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args),
                       "megadfm": {f"{s}/z{z}": r for (s, z), r in mega.items()},
                       "baseline": {f"{s}/z{z}": r for (s, z), r in base.items()}}, f, indent=2)
    if not args.keep_work and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    failed = [f"{kind}/{s}/z{z}" for kind, runs in (("megadfm", mega), ("baseline", base)) for (s, z), r in runs.items()
              if r is None]
    if failed:
        print(f"# no JSON line written: no step records from {', '.join(failed)}")
    elif header.baseline not in results:
        print("# no JSON line written: no baseline was measured (--baseline-stages none)")
    else:
        write_result(header, args, results, ratios, extra={"work_dir": work if args.keep_work or args.work_dir else None})
    return 0 if all(mega.values()) and all(base.values()) else 1


# ---------------------------------------------------------------------------------------------------
# baseline worker (one rank, started by the deepspeed launcher)
# ---------------------------------------------------------------------------------------------------
def worker_baseline(args) -> int:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    sys.path.insert(0, REPO)
    from megadfm.config import load_config
    from megadfm.data.loader import make_train_iterator
    from megadfm.training.distributed import init_distributed, shutdown_distributed
    from megadfm.training.ds_config import build_ds_config

    import deepspeed
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers import initialization as hf_init
    from transformers.integrations.deepspeed import initialize_weights_zero3

    cfg = load_config(args.config, [])
    rank, world, _ = init_distributed()
    m, t = cfg.model, cfg.training
    ds_config = build_ds_config(t, world)
    hf_cfg = Qwen3Config(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                         num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
                         max_position_embeddings=m.max_position_embeddings, rope_theta=m.rope_theta,
                         rms_norm_eps=m.rms_norm_eps, tie_word_embeddings=m.tie_word_embeddings,
                         attn_implementation="sdpa", use_cache=False)
    assert MASK_TOKEN_ID < hf_cfg.vocab_size
    torch.manual_seed(t.seed)
    if t.zero_stage == 3:
        # What transformers' from_config does under ZeRO-3 (it needs accelerate for that path, which is not installed):
        # build partitioned with HF's init suppressed, then initialise module by module on gathered parameters. A bare
        # `with zero.Init(): Qwen3ForCausalLM(cfg)` runs HF's init on empty shards and keeps nn.Embedding's N(0, 1)
        # in the tied head: a first loss of ~230 instead of about ln(V) = 12.
        with hf_init.no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = Qwen3ForCausalLM(hf_cfg)
        initialize_weights_zero3(model)
        model.tie_weights()
    else:
        model = Qwen3ForCausalLM(hf_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    global_batch = ds_config["train_batch_size"]
    it = make_train_iterator(cfg.data, rank, world, t.micro_batch_size, 0, num_samples=t.train_steps * global_batch)
    gen = torch.Generator().manual_seed(t.seed * 1000 + rank)
    out = open(args.out, "a") if rank == 0 else None
    engine.train()
    for step in range(1, t.train_steps + 1):
        start = time.time()
        batch = next(it)
        ids, valid = batch["input_ids"], batch["loss_mask"]
        masked = (torch.rand(ids.shape, generator=gen) < 0.5) & valid
        inp = torch.where(masked, torch.full_like(ids, MASK_TOKEN_ID), ids)
        logits = engine(input_ids=inp).logits  # [B, L, V], full logits
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss = F.cross_entropy(flat[masked.reshape(-1)], ids.reshape(-1)[masked.reshape(-1)])
        engine.backward(loss)
        engine.step()
        stats = torch.tensor([float(valid.sum()), float(loss.detach())], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        elapsed = time.time() - start
        if out is not None:
            out.write(json.dumps({"step": step, "loss": float(stats[1]) / world, "tokens_per_s": float(stats[0]) / elapsed,
                                  "step_time_s": elapsed}) + "\n")
            out.flush()
    if out is not None:
        out.close()
    dist.barrier()
    shutdown_distributed()  # as pretrain_dfm.py does: gloo's threads must not outlive the interpreter's teardown
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,small", help="comma-separated model sizes: tiny, small (default: %(default)s)")
    p.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages for megadfm (default: %(default)s)")
    p.add_argument("--baseline-stages", default="same",
                   help="'same' (a baseline for every size/stage row), 'none', or a comma list, e.g. '3': rows "
                        "without their own baseline compare with the highest-stage baseline of the size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="training steps per run (default: %(default)s)")
    add_repeats_arg(p, 1, "launches of every run; the per-step tokens/s of all of them are pooled")
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the median (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per process per step (default: %(default)s)")
    p.add_argument("--nproc", type=int, default=2, help="processes (deepspeed --num_accelerators) (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before one run is killed (default: %(default)s)")
    p.add_argument("--work-dir", help="where configs, logs and run dirs go (default: a temp dir, removed at the end)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work dir (logs, step records)")
    p.add_argument("--keep", action="store_true", help="keep the megadfm checkpoints written at the end of each run")
    p.add_argument("--json-out", help="also write the results as JSON here")
    # worker mode (started through the deepspeed launcher by the orchestrator)
    p.add_argument("--worker-baseline", action="store_true", help="(internal) run one rank of the baseline")
    p.add_argument("--config", help="(internal, with --worker-baseline) the run YAML")
    p.add_argument("--out", help="(internal, with --worker-baseline) step records (jsonl) written by rank 0")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_baseline:
        if not args.config or not args.out:
            sys.exit("--worker-baseline needs --config and --out")
        return worker_baseline(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
