"""Stage d of bench/gpu_check.sh: the run config, and what the trainer's own telemetry says about it.

The run: Qwen3-1.7B shape (random init), bidirectional DFM, seq 8192, micro batch 1, ZeRO-3, bf16,
activation checkpointing, ``kernels: fused`` (an op that cannot take its fused path is an error,
never a fallback), on the bundle's corpus and tokenizer. The first invocation stops after step
``STEPS`` (training.exit_after_steps) and saves; the second, the same command, resumes from that
checkpoint and runs ``RESUME_STEPS`` more, then saves again (keep_last 1).

Tokens/s, MFU and peak memory are read from RUN/telemetry/train_steps.jsonl (the throughput
callback's numbers), over the steps after the first ``WARMUP`` (compilation, allocator warm-up).
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Optional

STEPS, RESUME_STEPS, WARMUP = 20, 2, 3
QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                  rms_norm_eps=1.0e-6, tie_word_embeddings=True)
CHECKPOINT_BYTES_PER_PARAM = 14  # bf16 weights 2 + fp32 master, Adam m, v 12 (ZeRO-3 optimizer-state files)
PARAMS_1_7B = 1.75e9  # 1.72 B matmul + adaln_single's ~25 M


# --smoke-cpu: the same two invocations at a toy width on CPU (checks the script, the bundle's DeepSpeed
# and the launcher off-GPU; its numbers mean nothing)
SMOKE_SHAPE = dict(vocab_size=151936, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def run_config(run_dir: str, corpus_prefix: str, tokenizer_dir: str, ds_config: str, smoke_cpu: bool = False) -> Dict:
    """The YAML tree of stage d's run (``smoke_cpu``: toy shape, seq 128, torch kernels, fp32, CPU)."""
    model = dict(SMOKE_SHAPE if smoke_cpu else QWEN3_1_7B)
    kernels, seq_len, precision = ("torch", 128, "fp32") if smoke_cpu else ("fused", 8192, "bf16")
    model.update(attention_mode="bidirectional", time_conditioning="adaln_single", kernels=kernels,
                 activation_checkpointing=True)
    return {
        "model": model,
        "dfm": {"scheduler": "linear", "loss_weighting": "kl", "loss_normalizer": "tokens", "time_sampling": "stratified"},
        "data": {"tokenizer": tokenizer_dir, "blend": [{"prefix": corpus_prefix, "weight": 1.0}], "seq_len": seq_len},
        "training": {"output_dir": run_dir, "train_steps": STEPS + RESUME_STEPS, "exit_after_steps": STEPS,
                     "micro_batch_size": 1, "grad_accum_steps": 1, "lr": 3.0e-4, "min_lr": 3.0e-5, "warmup_steps": 5,
                     "weight_decay": 0.1, "grad_clip": 1.0, "zero_stage": 3, "zero_init": True, "ds_config": ds_config,
                     "precision": precision, "log_interval": 1, "eval_interval": 0},
        "checkpoint": {"save_interval": 0, "keep_last": 1, "verify": "size"},
        "telemetry": {"wandb": "disabled"},
    }


def write_yaml(tree: Dict, path: str) -> None:
    import yaml  # the GPU machine has PyYAML (transformers needs it); imported here so --dry-run needs nothing

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(tree, f, sort_keys=False)


def checkpoint_bytes_needed(params: float = PARAMS_1_7B) -> int:
    """Disk the save + resume needs: two checkpoints exist at once (the old one is pruned after the new one is published)."""
    return int(2 * CHECKPOINT_BYTES_PER_PARAM * params)


def step_records(run_dir: str) -> List[Dict]:
    path = os.path.join(run_dir, "telemetry", "train_steps.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def memory_phases(run_dir: str) -> List[Dict]:
    """Rank 0's memory record per phase (megadfm/training/memory.py): torch's peak allocated and reserved, in GiB."""
    from megadfm.training.memory import memory_log_path, read_memory_log

    path = memory_log_path(run_dir, 0)
    if not os.path.isfile(path):
        return []
    return [{"phase": r["phase"], "peak_gib": r["peak_bytes"] / 2**30,
             "reserved_peak_gib": r["reserved_peak_bytes"] / 2**30 if r.get("reserved_peak_bytes") is not None else None}
            for r in read_memory_log(path)]


def summarize(records: List[Dict], first_step: int, last_step: int) -> Dict:
    """Median tokens/s and MFU, max memory and the losses of steps first_step..last_step (after warm-up)."""
    chosen = [r for r in records if first_step <= r["step"] <= last_step]
    timed = [r for r in chosen if r["step"] > first_step - 1 + WARMUP]

    def median(key):
        values = [r[key] for r in timed if r.get(key) is not None]
        return statistics.median(values) if values else None

    memory = [r["mem_max_gb"] for r in chosen if r.get("mem_max_gb") is not None]
    return {"steps": [r["step"] for r in chosen], "timed_steps": [r["step"] for r in timed],
            "tokens_per_s_median": median("tokens_per_s"), "mfu_median": median("mfu"),
            "mem_max_gb": max(memory) if memory else None,
            "loss_first": chosen[0]["loss"] if chosen else None, "loss_last": chosen[-1]["loss"] if chosen else None,
            "all_finite": all(r["loss"] is not None and r["loss"] == r["loss"] and abs(r["loss"]) != float("inf")
                              for r in chosen)}


def kernel_lines(output: List[str]) -> Dict[str, str]:
    """What the trainer's log says each op runs on: {op: "implementation (reason)"} from its ``kernels: op -> ...`` lines."""
    found = {}
    for line in output:
        _, sep, rest = line.partition("kernels: ")
        if sep and " -> " in rest:
            op, _, how = rest.partition(" -> ")
            found.setdefault(op.strip(), how.strip())
    return found


def complete_checkpoints(run_dir: str) -> List[str]:
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if n.startswith("step_") and os.path.isfile(os.path.join(root, n, "megadfm_meta.json")))


def folder_bytes(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in filenames)
    return total


def main(argv=None) -> None:
    """Print stage d's run config (YAML) for a bundle, as gpu_check.py writes it."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="artifacts/gpu_wheels", help="the bundle folder (bench/gpu_wheels.sh)")
    p.add_argument("--run-dir", default="runs/gpu_check_train", help="training.output_dir of the run")
    p.add_argument("--smoke-cpu", action="store_true", help="the toy-width CPU variant (gpu_check.py --smoke-cpu)")
    args = p.parse_args(argv)
    import yaml

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ds = os.path.join(repo, "ds_configs", "cpu_zero3.json" if args.smoke_cpu else "zero3_bf16.json")
    tree = run_config(args.run_dir, os.path.join(args.bundle, "data", "stdlib_text_document"),
                      os.path.join(args.bundle, "tokenizer"), ds, args.smoke_cpu)
    yaml.safe_dump(tree, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
