#!/usr/bin/env bash
# `make bench`: every CPU benchmark, each printing its header (baseline, threads, load average at start),
# the median and min/max of its repeats and its ratio(s) against the baseline it names, measured in the
# same run. Absolute numbers depend on the machine's load; compare ratios. GPU: bench/gpu_model.py, run with
# everything else by bench/gpu_check.sh (docs/GPU_CHECK.md).
#
# Results: every bench appends exactly one JSON line (bench/common.py write_result; fields in its
# docstring) to $MEGADFM_BENCH_RESULTS, which this script points at a temporary file under
# bench/results/. When every bench has succeeded, bench/collect_results.py writes those lines, in run
# order, as ONE JSON LIST to bench/results/LATEST.json (temporary file + rename; git-ignored). A failed
# bench stops the run and leaves the previous LATEST.json as it was.
#
# The conversion bench needs ~13 GB of disk and is opt-in: BENCH_CONVERT=1 make bench.
# Budget: the whole run stays under 25 minutes on a 2-core machine at these sizes; the elapsed time
# of each bench and the total are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TORCHDYNAMO_DISABLE=1 DS_ACCELERATOR=cpu
mkdir -p bench/results
MEGADFM_BENCH_RESULTS=$(mktemp bench/results/.run-XXXXXX.jsonl)
export MEGADFM_BENCH_RESULTS
trap 'rm -f "$MEGADFM_BENCH_RESULTS"' EXIT
RUN=0

bench() {  # bench TITLE SCRIPT ARGS...: run one bench, print its elapsed time, count it
    local title=$1 t0=$SECONDS
    shift
    echo "== $title"
    "$PY" "$@"
    RUN=$((RUN + 1))
    echo "   ($((SECONDS - t0)) s; $((SECONDS / 60)) min $((SECONDS % 60)) s so far)"
}

bench "data: packed indexed loader vs HF datasets streaming + tokenizing"    bench/bench_data.py
bench "loss: grads-in-forward and chunked vs naive linear cross-entropy"     bench/bench_loss_memory.py --tokens 2048
bench "model: forward+backward tokens/s vs transformers Qwen3"               bench/bench_model.py
bench "sampler: DFM samplers vs autoregressive generate"                      bench/bench_sampler.py --small
bench "training: ZeRO 0-3 on 2 processes vs naive HF Qwen3 + same DeepSpeed"  bench/bench_train.py --steps 8
if [ "${BENCH_CONVERT:-0}" = 1 ]; then
    bench "conversion: Qwen3-1.7B shape both directions (needs ~13 GB of disk)" bench/bench_convert.py
else
    echo "== conversion: SKIPPED (needs ~13 GB of disk); run it with: BENCH_CONVERT=1 make bench"
fi
"$PY" bench/collect_results.py "$MEGADFM_BENCH_RESULTS" bench/results/LATEST.json --expect "$RUN"
echo "== $RUN benches in $((SECONDS / 60)) min $((SECONDS % 60)) s (budget: 25 min)"
