#!/usr/bin/env bash
# `make bench`: every CPU benchmark, each printing its ratio against the baseline it names, measured in
# the same run. Absolute numbers depend on the machine's load; compare ratios. GPU: bench/gpu_model.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TORCHDYNAMO_DISABLE=1 DS_ACCELERATOR=cpu
echo "== data: packed indexed loader vs HF datasets streaming + tokenizing";   $PY bench/bench_data.py
echo "== loss: chunked vs naive linear cross-entropy (memory, time)";         $PY bench/bench_loss_memory.py --tokens 2048
echo "== model: forward+backward tokens/s vs transformers Qwen3";             $PY bench/bench_model.py
echo "== sampler: DFM samplers vs autoregressive generate";                    $PY bench/bench_sampler.py --small
echo "== training: ZeRO 0-3 on 2 processes vs naive HF Qwen3 + same DeepSpeed"; $PY bench/bench_train.py --steps 8
echo "== conversion: Qwen3-1.7B shape both directions (needs ~13 GB of disk)";  $PY bench/bench_convert.py
