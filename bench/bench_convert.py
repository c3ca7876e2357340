"""HF <-> megadfm conversion of a Qwen3-1.7B-shaped checkpoint on CPU: peak memory and time, one run.

1. The bench writes a synthetic HF folder of the real Qwen3-1.7B shape (vocab 151,936, hidden 2048,
   28 layers, 16/8 heads of 128, SwiGLU 6144, tied head): random bf16 weights, ~3.4 GB, sharded
   (--source-shard-size, with model.safetensors.index.json), tensor by tensor.
2. HF -> megadfm: tools/convert_hf_to_megadfm.py (time conditioning --time-conditioning, default
   adaln: +705M zero-initialized parameters) in a child process.
3. megadfm -> HF: tools/convert_megadfm_to_hf.py --ckpt <the init folder of step 2>. A DeepSpeed
   checkpoint of 1.7B (fp32 master weights + Adam moments, ~30 GB) is impractical here; note that
   for a DeepSpeed checkpoint the weights are consolidated in memory by DeepSpeed's zero_to_fp32
   (about 4 bytes x parameters), while an init folder is streamed exactly like step 2.
4. Named baseline, same source: the usual in-memory script (``safetensors.torch.load_file`` of every
   shard, rename the keys, one ``save_file``, fsync), which writes what ``--time-conditioning none`` writes;
   the converter is also run with ``none`` for a like-for-like ratio (the pair alternated --repeats
   times, because a shared disk's write speed drifts by 2-3x within minutes; the median of each is
   reported, min/max in the JSON line, and the ratios are of the medians).

Each job runs in its own child process; peak memory is that child's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak RSS, interpreter and imports included), time is
the child's wall time. Printed: peak RSS, time, GB/s, and ratios against the baseline and against
the checkpoint size. Everything is written under --work (default: a temporary folder) and removed
at the end unless --keep. `make bench` runs it only with BENCH_CONVERT=1 (it needs ~13 GB of disk).

    python bench/bench_convert.py
    python bench/bench_convert.py --tiny                 # 2-layer, hidden-64 toy (full vocabulary): checks the script runs
    python bench/bench_convert.py --time-conditioning adaln_single --work /big/disk/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import Summary, add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(REPO, ".cache", "hf"))

QWEN3_1P7B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1000000, "rope_scaling": None, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
    "initializer_range": 0.02, "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
    "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16", "use_cache": True,
}
# --tiny: same vocabulary (the mask token 151669 must exist), a toy body (~40 MB of bf16, the embedding)
TINY = dict(QWEN3_1P7B, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_window_layers=2)
BASELINE = "baseline"

CHILD = r"""
import json, resource, runpy, sys, time
start = time.perf_counter()
job = sys.argv[1]
rc = 0
if job == "baseline":  # the usual in-memory script: load every shard, rename, save one file
    import os
    from safetensors.torch import load_file, save_file
    from megadfm.conversion.hf_folder import HFFolder
    state = {}
    for path in HFFolder(sys.argv[2]).files:
        state.update(load_file(path))
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    os.makedirs(sys.argv[3])
    save_file(state, os.path.join(sys.argv[3], "model.safetensors"), metadata={"format": "pt"})
    fd = os.open(os.path.join(sys.argv[3], "model.safetensors"), os.O_RDONLY)
    os.fsync(fd)  # a conversion is done when its output is on disk (the converter fsyncs too)
    os.close(fd)
elif job == "imports":
    import torch, transformers, megadfm.conversion.export, megadfm.conversion.hf_import
else:
    sys.argv = [job] + sys.argv[2:]
    try:
        runpy.run_path(job, run_name="__main__")
    except SystemExit as e:
        rc = e.code or 0
print("BENCH_RESULT " + json.dumps({"rc": rc, "seconds": time.perf_counter() - start,
                                    "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def parse_args():
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="Working folder (needs ~13 GB with adaln; default: a new temporary folder).")
    p.add_argument("--time-conditioning", choices=["adaln", "adaln_single", "none"], default="adaln",
                   help="Time conditioning added by the import (default adaln, as examples/qwen3_1p7b_h100x4.yaml).")
    p.add_argument("--source-shard-size", default="2GB", help="Shard size of the synthetic HF folder (default 2GB: 2 shards).")
    p.add_argument("--max-shard-size", default="2GB", help="--max-shard-size of both conversions (default 2GB).")
    p.add_argument("--tokenizer", default=os.path.join(REPO, "artifacts", "tokenizer", "qwen3"),
                   help="Tokenizer folder given to both tools (default: the repo's offline Qwen3 tokenizer).")
    add_repeats_arg(p, 2, "runs of the like-for-like pair (baseline, converter with none), alternated")
    p.add_argument("--tiny", action="store_true", help="A 2-layer hidden-64 toy of the shape (seconds; checks the script).")
    p.add_argument("--keep", action="store_true", help="Keep the working folder.")
    return p.parse_args()


def dir_bytes(folder, suffix=".safetensors"):
    """Bytes of the ``suffix`` files directly in ``folder``."""
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(suffix))


def write_source(folder: str, shard_size: str, shape: Dict) -> int:
    """The synthetic HF folder of config ``shape``, one tensor in memory at a time; returns the weight bytes."""
    import torch

    from megadfm.checkpoints.safetensors_io import ShardedSafetensorsWriter, TensorSpec, parse_size
    from megadfm.conversion.hf_config import model_config_from_hf
    from megadfm.conversion.name_map import backbone_names

    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(shape, f, indent=2)
    cfg = model_config_from_hf(shape, time_conditioning="none")
    specs = [TensorSpec(hf, torch.bfloat16, shape) for hf, (_, shape) in backbone_names(cfg).items()]
    writer = ShardedSafetensorsWriter(folder, specs, parse_size(shard_size))
    gen = torch.Generator().manual_seed(0)
    for spec in specs:
        if "norm" in spec.name:
            t = torch.ones(spec.shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(spec.shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)
        writer.write(spec.name, t)
        del t
    writer.close()
    return sum(s.nbytes for s in specs)


def summaries(results: List[Dict]) -> Dict[str, Summary]:
    """Median and min/max of the time and of the peak RSS over the repeats of one job."""
    return {"seconds": summarize([r["seconds"] for r in results]),
            "max_rss_bytes": summarize([r["max_rss_bytes"] for r in results])}


def run_child(args, label):
    """Run one job (CHILD) in a fresh interpreter; its BENCH_RESULT dict (rc, seconds, max_rss_bytes)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=REPO, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{label} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    if result["rc"] != 0:
        raise SystemExit(f"{label} returned {result['rc']}:\n{proc.stderr[-3000:]}")
    return result


def check_export(source: str, export: str, last_layer: int, mask_token_id: int = 151669) -> str:
    """Spot-check: the export's backbone tensors equal the source's (the embedding apart from its mask row)."""
    import torch

    from megadfm.conversion.hf_folder import HFFolder

    src, out = HFFolder(source), HFFolder(export)
    for name in (f"model.layers.{last_layer}.mlp.down_proj.weight", "model.layers.0.self_attn.q_norm.weight",
                 "model.embed_tokens.weight"):
        a, b = src.read_tensor(name), out.read_tensor(name)
        if name == "model.embed_tokens.weight":
            a, b = torch.cat([a[:mask_token_id], a[mask_token_id + 1:]]), torch.cat([b[:mask_token_id], b[mask_token_id + 1:]])
        if not torch.equal(a, b):
            raise SystemExit(f"export differs from the source in {name}")
    return "spot-checked tensors identical (embedding apart from its mask row)"


def main():
    """Write the source, run every job in a child process, print the table and write the JSON line."""
    args = parse_args()
    shape = TINY if args.tiny else QWEN3_1P7B
    work = args.work or tempfile.mkdtemp(prefix="megadfm_bench_convert_")
    os.makedirs(work, exist_ok=True)
    src, init, export = (os.path.join(work, n) for n in ("hf_qwen3_1p7b", "init", "export"))
    tok = ["--tokenizer", args.tokenizer] if os.path.isdir(args.tokenizer) else []
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))  # what run_child gives every job
    header = print_header("convert", BASELINE, "safetensors load_file of every shard, rename, one save_file, fsync", threads,
                          "OMP_NUM_THREADS of each child job")
    try:
        t0 = time.perf_counter()
        src_bytes = write_source(src, args.source_shard_size, shape)
        n_src_files = len([f for f in os.listdir(src) if f.endswith(".safetensors")])
        print(f"source: synthetic Qwen3-1.7B{' (--tiny toy)' if args.tiny else ''}, bf16, {src_bytes / 1e9:.2f} GB in "
              f"{n_src_files} shards (written in {time.perf_counter() - t0:.1f} s) at {src}")
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; this process RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB (not measured)")
        imports = run_child(["imports"], "imports")
        naive = os.path.join(work, "naive")
        tool = os.path.join(REPO, "tools")
        baselines, same_works = [], []
        for _ in range(args.repeats):  # alternated: the shared disk's speed drifts
            baselines.append(run_child(["baseline", src, naive], "baseline"))
            shutil.rmtree(naive)
            same_works.append(run_child([os.path.join(tool, "convert_hf_to_megadfm.py"), "--hf", src, "--out", init,
                                         "--time-conditioning", "none", "--max-shard-size", args.max_shard_size,
                                         "--no-progress", *tok], "HF -> megadfm (none)"))
            shutil.rmtree(init)
        results = {BASELINE: summaries(baselines), "HF -> megadfm (none)": summaries(same_works)}
        to_megadfm = run_child([os.path.join(tool, "convert_hf_to_megadfm.py"), "--hf", src, "--out", init,
                                "--time-conditioning", args.time_conditioning, "--max-shard-size", args.max_shard_size,
                                "--no-progress", *tok], "HF -> megadfm")
        init_bytes = dir_bytes(init)
        to_hf = run_child([os.path.join(tool, "convert_megadfm_to_hf.py"), "--ckpt", init, "--out", export,
                           "--max-shard-size", args.max_shard_size, "--no-progress", *tok], "megadfm -> HF")
        export_bytes = dir_bytes(export)
        check = check_export(src, export, shape["num_hidden_layers"] - 1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    gb = 1e9
    print(f"\n{'job':<48}{'peak RSS':>12}{'time':>10}{'GB/s':>8}{'RSS/ckpt':>10}{'RSS/baseline':>14}{'time/baseline':>15}")
    results.update({"imports only": summaries([imports]), f"HF -> megadfm ({args.time_conditioning})": summaries([to_megadfm]),
                    "megadfm -> HF (init folder)": summaries([to_hf])})
    rows = [("imports only", "imports only (python+torch+transformers+megadfm)", None),
            (BASELINE, "baseline: load_file, rename, save_file, fsync", 2 * src_bytes),
            ("HF -> megadfm (none)", "HF -> megadfm (none: same output as baseline)", 2 * src_bytes),
            (f"HF -> megadfm ({args.time_conditioning})",
             f"HF -> megadfm ({args.time_conditioning}, writes {init_bytes / gb:.2f} GB)", src_bytes + init_bytes),
            ("megadfm -> HF (init folder)", f"megadfm -> HF (init folder, writes {export_bytes / gb:.2f} GB)",
             init_bytes + export_bytes)]
    ratios = []
    for key, label, moved in rows:
        seconds, rss = results[key]["seconds"].median, results[key]["max_rss_bytes"].median
        rate = f"{moved / gb / seconds:.2f}" if moved else "-"
        ratio_ckpt = f"{rss / src_bytes:.3f}"
        rss_ratio = ratio(f"peak RSS {key} / baseline", results, "max_rss_bytes", key, BASELINE)
        time_ratio = ratio(f"time {key} / baseline", results, "seconds", key, BASELINE)
        if key != BASELINE:
            ratios += [rss_ratio, time_ratio]
        print(f"{label:<48}{rss / gb:>10.2f}GB{seconds:>9.1f}s{rate:>8}{ratio_ckpt:>10}{rss_ratio.value:>14.3f}"
              f"{time_ratio.value:>15.2f}")
    print(f"\nGB/s = (bytes read + bytes written) / wall time. RSS/ckpt = peak RSS / source checkpoint bytes "
          f"({src_bytes / gb:.2f} GB); largest tensor: embedding "
          f"{shape['vocab_size']} x {shape['hidden_size']} bf16 = {shape['vocab_size'] * shape['hidden_size'] * 2 / gb:.2f} GB.")
    print(f"baseline and 'none' rows: median of {args.repeats} alternated runs (time {results[BASELINE]['seconds'].fmt('.1f')} s "
          f"and {results['HF -> megadfm (none)']['seconds'].fmt('.1f')} s, median [min, max]); other rows: one run.")
    print(f"correctness: {check}")
    print(f"working folder {'kept at ' + work if args.keep else 'removed'}")
    write_result(header, args, results, ratios, extra={"source_bytes": src_bytes, "init_bytes": init_bytes,
                                                       "export_bytes": export_bytes, "check": check, "work": work})


if __name__ == "__main__":
    main()
