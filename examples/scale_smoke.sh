#!/usr/bin/env bash
# `make scale-smoke`: a real-shape rehearsal on this machine. A Qwen3-0.6B-shape DFM (hidden 1024, 28 layers,
# 16/8 heads x 128, tied embeddings, adaln_single; random init) on 2 CPU ranks with ZeRO-3, fp32, activation
# checkpointing, seq 256, micro-batch 1:
#   1. 3 steps and a save, every rank's memory recorded per phase (bench/bench_memory.py);
#   2. a resume from that checkpoint for a 4th step and a save;
#   3. the same 3 steps with the optimizer offloaded to the CPU (ds_configs/cpu_zero3_offload.json);
#   4. an HF export of the resumed run's last checkpoint.
# Each memory table is printed next to DeepSpeed's own ZeRO estimate. A watchdog stops a run at
# RSS_LIMIT_GB per rank (default 11) rather than let the kernel's OOM killer choose. Measured: 13 min 15 s on
# 2 cores, peak 6.68 GiB per rank (8.92 GiB with the offload), about 17 GB of disk at most (two 7.2 GB
# checkpoints and the 2.3 GB export; the offload run's checkpoint is deleted). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/scale_smoke_0p6b}
RSS_LIMIT_GB=${RSS_LIMIT_GB:-11}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false TORCHDYNAMO_DISABLE=1

echo "== [0/4] corpus (skipped when up to date); a fresh run folder $RUN"
bash examples/stdlib_corpus.sh
rm -rf "$RUN" "$RUN.offload"
mkdir -p "$(dirname "$RUN")"

echo "== [1/4] 3 steps + save, ZeRO-3 fp32 on 2 ranks"
$PY bench/bench_memory.py --preset 0.6b --ranks 2 --steps 3 --run-dir "$RUN" --rss-limit-gb "$RSS_LIMIT_GB"

echo "== [2/4] resume from step 3: one more step + save"
$PY bench/bench_memory.py --preset 0.6b --ranks 2 --steps 4 --run-dir "$RUN" --rss-limit-gb "$RSS_LIMIT_GB"
grep -q "resumed from" "$RUN/bench_run.log" || { echo "scale-smoke: the second run did not resume ($RUN/bench_run.log)" >&2; exit 1; }

echo "== [3/4] 3 steps + save with the optimizer offloaded to the CPU"
$PY bench/bench_memory.py --preset 0.6b --ranks 2 --steps 3 --run-dir "$RUN.offload" --rss-limit-gb "$RSS_LIMIT_GB" \
    --ds-config ds_configs/cpu_zero3_offload.json
rm -rf "$RUN.offload/checkpoints"  # 7 GB that nothing reads

echo "== [4/4] HF export of step 4 -> $RUN/hf"
$PY tools/convert_megadfm_to_hf.py --ckpt "$RUN" --out "$RUN/hf" --force
du -sh "$RUN/hf"
echo "== done: memory logs $RUN/telemetry/memory_rank*.jsonl, export $RUN/hf"
